"""Checkpointer: bitwise round trips, keep-N, fingerprints, torn and corrupt steps."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.errors import CheckpointError
from jaxinterp.io.checkpoint import Checkpointer

# orbax can leave a failed read's callback behind ("Event loop is closed"); harmless.
ORBAX_READ_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_state(seed: int = 0) -> dict:
    params = {"w": jax.random.normal(jax.random.key(seed), (3, 5)), "b": jnp.arange(5.0)}
    opt = optax.adam(1e-3)
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        opt_state = opt.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        _, opt_state = opt.update(grads, opt_state, params)  # non-trivial mu, nu, count
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(7, jnp.int32),
        "key": jax.random.key(seed + 1),
    }


def assert_bitwise_equal(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_save_restore_is_bitwise(tmp_path: Path) -> None:
    state = make_state()
    with Checkpointer(tmp_path, fingerprint={"a": 1}) as ckpt:
        ckpt.save(7, state)
    template = jax.tree.map(jnp.zeros_like, make_state(seed=3))
    with Checkpointer(tmp_path, fingerprint={"a": 1}) as ckpt:
        step, restored = ckpt.restore(template)
    assert step == 7
    assert_bitwise_equal(restored, state)


def test_keep_n(tmp_path: Path) -> None:
    state = make_state()
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in (1, 2, 3, 4):
            ckpt.save(step, state)
        assert ckpt.steps() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]


def test_fingerprint_mismatch_names_keys(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, fingerprint={"lr": 1e-3, "model": {"d_model": 8}}) as ckpt:
        ckpt.save(1, make_state())
    with pytest.raises(CheckpointError, match=r"lr \(checkpoint 0.001, now 0.01\); model\.d_model"):
        Checkpointer(tmp_path, fingerprint={"lr": 1e-2, "model": {"d_model": 16}})
    with pytest.raises(CheckpointError, match=r"extra \(checkpoint absent, now 0\)"):
        Checkpointer(tmp_path, fingerprint={"lr": 1e-3, "model": {"d_model": 8}, "extra": 0})


def test_structure_mismatch_lists_names(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state())
        template = make_state()
        template["params"] = {"w": jnp.zeros((3, 6)), "c": jnp.zeros(5)}
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(template)
    message = str(info.value)
    assert "params.b" in message and "params.c" in message and "params.w" in message


def test_unfinished_tmp_save_is_ignored_and_cleaned(tmp_path: Path) -> None:
    """What a SIGKILL in the middle of a save leaves behind is never 'latest'."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state())
    torn = tmp_path / "9.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "1", torn)
    for f in torn.rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:3])
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        step, _ = ckpt.restore(make_state())
        assert step == 1
        ckpt.save(2, make_state())  # orbax's background cleanup is awaited by the next save
    assert not torn.exists()


def _damage(step_dir: Path, how: str) -> None:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.stat().st_size > 16]
    assert files
    for f in files:
        data = bytearray(f.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        else:  # flip bytes in the middle: zstd frames can decode this without complaint
            for i in range(len(data) // 2, min(len(data), len(data) // 2 + 4)):
                data[i] ^= 0xFF
        f.write_bytes(bytes(data))


@ORBAX_READ_NOISE
@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_corrupt_latest_falls_back_with_warning(tmp_path: Path, how: str) -> None:
    old, new = make_state(0), make_state(1)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, old)
        ckpt.save(2, new)
    _damage(tmp_path / "2", how)
    with Checkpointer(tmp_path) as ckpt, pytest.warns(UserWarning, match="step 2"):
        step, restored = ckpt.restore(make_state())
    assert step == 1
    assert_bitwise_equal(restored, old)
    assert (tmp_path / "corrupt-2").is_dir()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1


@ORBAX_READ_NOISE
def test_only_checkpoint_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, make_state())
    _damage(tmp_path / "3", "truncate")
    (tmp_path / "3" / "meta" / "metadata").write_text('{"format": "jaxinterp.tr')
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError, match="step 3: metadata"):
        ckpt.restore(make_state())


@ORBAX_READ_NOISE
def test_checksums_catch_bytes_that_still_decode(tmp_path: Path) -> None:
    """Flip bytes in each data chunk in turn: never silently restore wrong values."""
    old, new = make_state(0), make_state(1)
    with Checkpointer(tmp_path, keep=10) as ckpt:
        ckpt.save(1, old)
        ckpt.save(2, new)
    chunks = [f for f in (tmp_path / "2" / "state").rglob("d/*") if f.is_file()]
    assert chunks
    for chunk in chunks:
        original = chunk.read_bytes()
        data = bytearray(original)
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 4)):
            data[i] ^= 0xFF
        chunk.write_bytes(bytes(data))
        with Checkpointer(tmp_path, keep=10) as ckpt, warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            step, restored = ckpt.restore(make_state())
        if step == 2:  # the damaged chunk must not have mattered
            assert_bitwise_equal(restored, new)
        else:
            assert step == 1 and (tmp_path / "corrupt-2").is_dir()
            (tmp_path / "corrupt-2").rename(tmp_path / "2")
        chunk.write_bytes(original)


def test_checksum_mismatch_is_detected(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(0))
        ckpt.save(2, make_state(1))
    meta_file = tmp_path / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["leaves"][0]["crc32"] ^= 1
    meta_file.write_text(json.dumps(meta))
    with Checkpointer(tmp_path) as ckpt, pytest.warns(UserWarning, match="checksum mismatch"):
        assert ckpt.restore(make_state())[0] == 1
