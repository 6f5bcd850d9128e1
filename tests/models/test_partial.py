"""The partial forward: continuing a base run from any layer and position gives the full
forward's residual stream, on local/global (Gemma 2) and sliding-window (Mistral) layers."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ShapeError
from jaxinterp.models.partial import base_run, run_layers

sys.path.insert(0, str(Path(__file__).parent.parent / "interp"))
from _interp_helpers import tiny  # noqa: E402


@pytest.mark.parametrize("family,layer,s", [("gemma2", 1, 4), ("mistral", 2, 7)])
def test_continuing_a_base_run_reproduces_the_forward(family, layer, s):
    model = tiny(family)
    tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, model.cfg.d_vocab)
    am = jnp.ones(tokens.shape, jnp.int32).at[1, :2].set(0)  # row 1 left-padded
    base, _ = base_run(model, tokens, am)
    np.testing.assert_allclose(base.final, model(tokens, am, return_type="resid"), atol=1e-5)
    valid = np.asarray(am, bool)
    n = tokens.shape[1] - s
    cached = jnp.arange(9)[None, None, :] < s  # keys: cached positions before s, then own causal
    mask = jnp.concatenate([jnp.broadcast_to(cached, (2, n, 9)) & valid[:, None, :],
                            jnp.tril(jnp.ones((n, n), bool))[None] & valid[:, None, s:]], -1)
    x, pos = base.resid_pre[layer][:, s:], base.positions[:, s:]
    want = np.asarray(base.final[:, s:])
    got = jax.jit(lambda m, b, x: run_layers(m, x, pos, mask, start=layer, cache=b.kv)[0])(model, base, x)
    np.testing.assert_allclose(got[0], want[0], atol=2e-5)
    np.testing.assert_allclose(got[1][valid[1, s:]], want[1][valid[1, s:]], atol=2e-5)
    # The last layer queried at two tokens only; the start layer traced (one program for all).
    read = jnp.asarray([[n - 1, 0], [n - 1, n - 2]])
    traced = jax.jit(lambda m, b, x, j: run_layers(m, x, pos, mask, start=j, cache=b.kv, read=read)[0])
    at = traced(model, base, x, jnp.int32(layer))
    np.testing.assert_allclose(at[:, 0], want[:, -1], atol=2e-5)
    np.testing.assert_allclose(at[0, 1], want[0, 0], atol=2e-5)
    with pytest.raises(ShapeError, match="outside"):
        run_layers(model, base.final, base.positions, jnp.ones((2, 9, 9), bool), start=2, stop=4)


def test_logits_at_every_position_matches_the_unembedding_and_norms_once():
    """``logits_at(read=None)`` (the unembedding by position groups) equals ``unembed``; the
    final norm runs once over every position, so its hooks fire once with the whole stream,
    and a gradient through one position's logits equals the direct one."""
    from jaxinterp.hooks import run_with_cache
    from jaxinterp.models.partial import logits_at, unembed

    model = tiny("gpt2")
    x = jax.random.normal(jax.random.key(4), (2, 70, model.cfg.d_model))  # > 64 positions: grouped
    np.testing.assert_allclose(logits_at(model, x, None, 70), unembed(model, x), rtol=1e-5, atol=1e-5)
    _, cache = run_with_cache(lambda x: logits_at(model, x, None, 70), x, names=["ln_final.hook_normalized"])
    assert cache["ln_final.hook_normalized"].shape == x.shape
    g = jax.grad(lambda x: logits_at(model, x, None, 70)[:, -1, 3].sum())(x)
    want = jax.grad(lambda x: unembed(model, x)[:, -1, 3].sum())(x)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    assert not np.asarray(g[:, :-1]).any()
