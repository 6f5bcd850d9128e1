"""Exact resume: kill -9 a training process, run it again, get bitwise the same result;
and the same on a simulated 4-device mesh, with the parameters' sharding kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jaxinterp.io.weights import load_weights

SCRIPT = Path(__file__).with_name("_train_tiny.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def launch(runs_dir: Path, name: str, cache: Path, sleep: float) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the rerun reuses the first compile
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cmd = [
        sys.executable,
        str(SCRIPT),
        str(runs_dir),
        name,
        "--steps",
        str(STEPS),
        "--sleep",
        str(sleep),
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def committed_steps(checkpoint_dir: Path) -> list[int]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit())


def saving(checkpoint_dir: Path) -> bool:
    return any(".orbax-checkpoint-tmp" in p.name for p in checkpoint_dir.iterdir())


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path: Path) -> None:
    cache = tmp_path / "jax_cache"
    reference = launch(tmp_path / "a", "run", cache, sleep=0.0)
    victim = launch(tmp_path / "b", "run", cache, sleep=0.05)
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    deadline = time.monotonic() + 90
    while True:  # after the first checkpoint, kill in the middle of a later save if we can
        steps = committed_steps(checkpoints)
        if steps and (saving(checkpoints) or steps[-1] >= STEPS // 2):
            break
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed_at = committed_steps(checkpoints)
    assert killed_at and killed_at[-1] < STEPS
    assert not (tmp_path / "b" / "run" / "final.npz").exists()

    finish(reference)
    finish(launch(tmp_path / "b", "run", cache, sleep=0.0))  # the same command again

    resumed_from = json.loads((tmp_path / "b" / "run" / "result.json").read_text())["resumed_from"]
    assert resumed_from is not None and resumed_from >= killed_at[-1]
    a = load_weights(tmp_path / "a" / "run" / "final.npz")
    b = load_weights(tmp_path / "b" / "run" / "final.npz")
    assert a.keys() == b.keys()
    for name in a:
        assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes(), name

    metrics_a = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    assert (
        [r["step"] for r in metrics_b]
        == [r["step"] for r in metrics_a]
        == list(range(5, STEPS + 1, 5))
    )
    assert [r["loss"] for r in metrics_b] == [r["loss"] for r in metrics_a]


def test_resume_on_a_device_mesh_is_exact_and_keeps_sharding(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, str(SCRIPT), str(tmp_path), "--mesh"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"devices": 4, "resumed_from": 8, "equal": True, "kept_sharding": True}
