import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ShapeError
from jaxinterp.features import init_topk, update_topk


def test_streaming_topk_equals_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(100, 7)).astype(np.float32)
    state = init_topk(7, 5)
    update = jax.jit(update_topk)
    for start in range(0, 100, 16):  # uneven last chunk, padded with id -1
        chunk = np.full((16, 7), 99.0, np.float32)  # padding scores must never enter
        ids = np.full(16, -1, np.int32)
        n = min(16, 100 - start)
        chunk[:n], ids[:n] = scores[start:start + n], np.arange(start, start + n)
        state = update(state, jnp.asarray(chunk), jnp.asarray(ids))
    want = np.argsort(-scores, axis=0, kind="stable")[:5].T  # [units, k]
    np.testing.assert_array_equal(np.asarray(state.ids), want)
    np.testing.assert_allclose(np.asarray(state.values), np.take_along_axis(scores.T, want, 1))


def test_topk_bad_shapes():
    with pytest.raises(ShapeError, match="units=3"):
        update_topk(init_topk(3, 2), jnp.zeros((4, 5)), jnp.arange(4))
    with pytest.raises(ShapeError):
        init_topk(0, 2)
