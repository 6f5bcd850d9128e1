"""Weights files: safetensors / npz round trips, Equinox templates, clear mismatch errors."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import CheckpointError
from jaxinterp.io.weights import load_weights, save_weights


def nested_params() -> dict:
    return {
        "embed": {"W_E": np.arange(12, dtype=np.float32).reshape(4, 3)},
        "blocks": [
            {"attn": {"W_Q": np.full((2, 3, 1), 0.5, np.float32)}},
            {"attn": {"W_Q": np.asarray(jnp.ones((2, 3, 1), jnp.bfloat16))}},
        ],
        "count": np.asarray(3, np.int32),
        "unembed": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not C-contiguous
    }


def assert_same(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_with_template_and_without(tmp_path: Path, suffix: str) -> None:
    params = nested_params()
    path = save_weights(tmp_path / f"w{suffix}", params)
    assert_same(load_weights(path, template=params), params)
    flat = load_weights(path)  # no template: nested dicts named by the dotted keys
    assert flat["blocks"]["1"]["attn"]["W_Q"].dtype == jnp.bfloat16
    assert np.array_equal(flat["embed"]["W_E"], params["embed"]["W_E"])
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_equinox_module_round_trip(tmp_path: Path) -> None:
    model = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.gelu, key=jax.random.key(0))
    path = save_weights(tmp_path / "mlp.safetensors", model)
    template = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.gelu, key=jax.random.key(1))
    loaded = load_weights(path, template)
    assert isinstance(loaded, eqx.nn.MLP) and loaded.activation is jax.nn.gelu
    assert_same(eqx.filter(loaded, eqx.is_array), eqx.filter(model, eqx.is_array))
    names = set(load_weights(path)["layers"]["0"])
    assert names == {"weight", "bias"}


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path: Path, suffix: str) -> None:
    path = save_weights(
        tmp_path / f"w{suffix}", {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    )
    template = {"a": np.zeros(4, np.float32), "c": np.zeros(2, np.float32)}
    with pytest.raises(CheckpointError) as info:
        load_weights(path, template)
    message = str(info.value)
    assert "missing (1): c" in message
    assert "unexpected (1): b" in message
    assert "a: file float32[3], expected float32[4]" in message


def test_int_to_float_is_a_mismatch_but_float_widths_cast(tmp_path: Path) -> None:
    path = save_weights(
        tmp_path / "w.npz", {"a": np.ones(2, np.float32), "n": np.ones(2, np.int32)}
    )
    loaded = load_weights(path, {"a": jnp.zeros(2, jnp.bfloat16), "n": np.zeros(2, np.int32)})
    assert loaded["a"].dtype == jnp.bfloat16
    with pytest.raises(CheckpointError, match="n: file int32"):
        load_weights(path, {"a": np.zeros(2, np.float32), "n": np.zeros(2, np.float32)})


def test_pickle_and_garbage_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "p.npz"
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        load_weights(pickled)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(garbage)
    with pytest.raises(CheckpointError, match="format"):
        save_weights(tmp_path / "w.pt", {"a": np.zeros(1)})
    with pytest.raises(CheckpointError, match="No weights file"):
        load_weights(tmp_path / "missing.npz")
