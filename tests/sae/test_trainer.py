"""The SAE trainer on the generic loop: data sources, schedules, resampling, the NaN guard,
bad inputs; and in subprocesses: exact resume after SIGKILL, 8 simulated devices equal to
one, and a 2-process jax.distributed run equal to both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from o0_flags import COMPILE_FAST_FLAGS, O0_FLAGS

from jaxinterp.errors import ConfigError, DataError, HookNameError, NonFiniteLossError, ShapeError
from jaxinterp.io.checkpoint import Checkpointer
from jaxinterp.sae import SAEConfig, init_sae
from jaxinterp.sae.trainer import TrainSAEConfig, train_sae

SCRIPT = Path(__file__).with_name("_sae_script.py")
REPO = Path(__file__).resolve().parents[2]
X = np.random.default_rng(0).normal(size=(4096, 8)).astype(np.float32)


def quick(tmp_path: Path, name: str, **kw) -> TrainSAEConfig:
    return TrainSAEConfig(**{"steps": 6, "batch_size": 64, "progress": False, "log_every": 2,
                             "runs_dir": str(tmp_path), "name": name, **kw})


def test_sources_schedules_and_scaling(tmp_path: Path) -> None:
    cfg = SAEConfig(8, 32, "standard", normalize_activations="expected_average_only_in")
    scaled = 5.0 * X
    from_array = train_sae(cfg, scaled, quick(tmp_path, "a", sparsity_warmup_steps=4))
    # the input scale sqrt(d) / mean norm is folded back: the SAE works on raw activations
    s_in = from_array.input_scales["sae"][0]
    assert s_in == pytest.approx(np.sqrt(8) / np.linalg.norm(scaled[:512], axis=1).mean(), rel=0.05)
    raw = from_array.sae(jnp.asarray(scaled[:256]))
    assert float(((raw - scaled[:256]) ** 2).sum() / (scaled[:256] ** 2).sum()) < 1.5
    assert [m["step"] for m in from_array.metrics] == [2, 4, 6]
    assert {"loss", "mse", "l0", "fve", "dead_frac", "dense_frac"} <= from_array.metrics[-1].keys()
    # an iterator of batches and a callable give the same batches, so the same SAE
    batches = [scaled[i * 64:(i + 1) * 64] for i in range(6)]
    a = train_sae(cfg, iter(batches), quick(tmp_path, "b"))
    b = train_sae(cfg, lambda step: batches[step], quick(tmp_path, "c"))
    np.testing.assert_array_equal(np.asarray(a.sae.W_enc), np.asarray(b.sae.W_enc))
    with pytest.raises(DataError, match="ran out after 6 batches"):
        train_sae(cfg, iter(batches), quick(tmp_path, "d", steps=7))


def test_dead_latents_are_resampled_with_fresh_moments(tmp_path: Path) -> None:
    cfg = SAEConfig(8, 32, "standard", l1_decoder_norm=False, l1_coefficient=1.0)
    sae = init_sae(cfg, jax.random.key(0))
    sae = sae.__class__(**{**vars(sae), "b_enc": sae.b_enc.at[:16].set(-100.0)})  # 16 never fire
    result = train_sae(sae, X, quick(tmp_path, "r", steps=4, resample_steps=(3,),
                                     dead_after_tokens=64, init_b_dec="zeros"))
    enc = np.asarray(result.sae.b_enc)
    assert (enc[:16] > -50).all() and (enc[16:] > -50).all()  # revived: bias reset to 0 then trained
    assert result.metrics[-1]["dead_frac"] < 0.5
    norms = np.linalg.norm(np.asarray(result.sae.W_dec), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)  # unit-norm decoder constraint held
    assert int(result.state["sae"]["step"]) == 4


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match=r"d_in=16 but site 'x' has width 8"):
        train_sae(SAEConfig(16, 32), X, quick(tmp_path, "w"))
    bad = X.copy()
    bad[100, 3] = np.nan
    with pytest.raises(DataError, match="1 non-finite activations in 'x'"):
        train_sae(SAEConfig(8, 32), bad, quick(tmp_path, "nan"))
    with pytest.raises(ConfigError, match="needs 2 devices; 1 are visible"):
        train_sae(SAEConfig(8, 32), X, quick(tmp_path, "m", mesh="data=2"))
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_pst"):
        train_sae(SAEConfig(8, 32, hook_name="blocks.0.hook_resid_pst"),
                  {"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X}, quick(tmp_path, "s"))
    with pytest.raises(ConfigError, match="k=64 is larger than d_sae=32"):
        SAEConfig(8, 32, "topk", k=64)


def test_nan_in_a_step_never_reaches_the_checkpoint(tmp_path: Path) -> None:
    def batches(step: int) -> np.ndarray:  # a callable source is not pre-checked
        out = X[step * 64:(step + 1) * 64].copy()
        if step == 7:
            out[0, 0] = np.inf
        return out

    cfg = SAEConfig(8, 32, "topk", k=4)
    with pytest.raises(NonFiniteLossError, match="step 7"):
        train_sae(cfg, batches, quick(tmp_path, "nan", steps=12, checkpoint_every=5))
    with Checkpointer(tmp_path / "nan" / "checkpoints") as ckpt:
        assert ckpt.steps() == [5]
    clean = train_sae(cfg, batches, quick(tmp_path, "clean", steps=5))
    resumed = train_sae(cfg, batches, quick(tmp_path, "nan", steps=5, checkpoint_every=5))
    assert resumed.resumed_from == 5
    np.testing.assert_array_equal(np.asarray(resumed.sae.W_dec), np.asarray(clean.sae.W_dec))


# Subprocesses ---------------------------------------------------------------------------
CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Subprocesses share compiled programs (a rerun or the second process hits the cache)."""
    CACHE["dir"] = tmp_path_factory.mktemp("jax_cache")


def env(devices: int | None = None) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out["JAX_PLATFORMS"] = "cpu"
    if "dir" in CACHE:
        out["JAX_COMPILATION_CACHE_DIR"] = str(CACHE["dir"])
        out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # The suite's fast-compiling flags (tests/o0_flags.py): these runs are small, so compiling
    # dominates; every comparison is between runs compiled alike, or at float32 tolerance.
    out["XLA_FLAGS"] = " ".join([*O0_FLAGS, *COMPILE_FAST_FLAGS])
    if devices:
        out["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return out


def launch(*args: str, devices: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


def committed(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    victim = launch(str(tmp_path / "b"), "run", "--steps", "20", "--sleep", "0.1")
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    deadline = time.monotonic() + 200
    while not committed(checkpoints):  # the step-5 checkpoint: 15 steps (>= 1.5 s) left
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    killed_at = committed(checkpoints)[-1]
    assert killed_at < 20 and not (tmp_path / "b" / "run" / "final.npz").exists()
    # the rerun resumes; then the same process trains the uninterrupted reference into a/
    finish(launch(str(tmp_path / "b"), "run", "--steps", "20", "--reference", str(tmp_path / "a")))
    info = json.loads((tmp_path / "b" / "run" / "result.json").read_text())
    assert info["resumed_from"] is not None and info["resumed_from"] >= killed_at
    a, b = np.load(tmp_path / "a" / "run" / "final.npz"), np.load(tmp_path / "b" / "run" / "final.npz")
    for name in a.files:
        assert a[name].tobytes() == b[name].tobytes(), name
    ma = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("mesh")
    out = finish(launch(str(runs), "compare", "--mesh", "data=4,model=2", devices=8))
    return {"runs": runs, **json.loads(out.strip().splitlines()[-1])}


def test_eight_devices_equal_one(eight_devices: dict) -> None:
    r = eight_devices
    assert r["devices"] == 8 and r["W_enc_spec"] == "P(None, 'model')"
    assert r["max_diff"] <= 1e-5 * max(r["scale"], 1.0), r
    assert "model axis (8) does not divide d_sae=60" in r["bad_mesh_error"]


def test_two_processes_through_jax_distributed(eight_devices: dict, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    procs = [launch(str(tmp_path), "dist", "--steps", "12", "--process", str(i), "--port", port,
                    "--mesh", "data=2,model=2", "--checkpoint-every", "10") for i in range(2)]
    for p in procs:
        finish(p)
    info = json.loads((tmp_path / "dist" / "result.json").read_text())
    assert info == {"resumed_from": None, "processes": 2, "devices": 4}
    # both processes wrote their shards of the step-10 and final step-12 checkpoints
    assert committed(tmp_path / "dist" / "checkpoints") == [10, 12]
    dist, plain = np.load(tmp_path / "dist" / "final.npz"), np.load(eight_devices["runs"] / "plain.npz")
    for name in plain.files:
        np.testing.assert_allclose(dist[name], plain[name], atol=1e-5, err_msg=name)
