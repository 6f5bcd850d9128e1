"""Tiny models and prompts for the interp tests, and one small model trained on IOI."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxinterp.interp.ioi import ioi_batch, ioi_config, ioi_loss
from jaxinterp.models import init_transformer


@pytest.fixture(scope="session")
def prompts():
    """Clean and corrupted prompts [3, 7] differing in two positions, and answer tokens."""
    clean = jax.random.randint(jax.random.key(1), (3, 7), 0, 40)
    corrupted = clean.at[:, 2].set((clean[:, 2] + 5) % 40).at[:, 5].set((clean[:, 5] + 11) % 40)
    return clean, corrupted, jnp.array([1, 2, 3]), jnp.array([4, 5, 6])


@pytest.fixture(scope="session")
def ioi_model():
    """A 2-layer model trained on IOI to 100% accuracy in a few seconds (a local optax loop)."""
    model = init_transformer(ioi_config(d_model=32, n_heads=4), jax.random.key(0))
    data = ioi_batch(64 * 40, seed=1)
    opt = optax.adam(4e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, tokens, io):
        grads = jax.grad(lambda p: ioi_loss(eqx.combine(p, static), tokens, io)[0])(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    for i in range(350):
        j = (i % 40) * 64
        params, state = step(params, state, data.clean[j:j + 64], data.io[j:j + 64])
    return eqx.combine(params, static)
