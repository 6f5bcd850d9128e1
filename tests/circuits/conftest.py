"""Hand-built heads with known behaviour, and a tiny model trained on IOI for EAP."""

import equinox as eqx
import jax
import optax
import pytest
from _circuits_helpers import hand_built_model

import jaxinterp as ji
from jaxinterp.data.ioi import ioi_batch
from jaxinterp.recipes.ioi import ioi_config, ioi_loss


@pytest.fixture(scope="session")
def hand_model():
    return hand_built_model()


@pytest.fixture(scope="session")
def ioi_small():
    """A 2-layer d_model 32 model trained on IOI for 250 steps (a few seconds), and prompts."""
    model = ji.init_transformer(ioi_config(n_layers=2, d_model=32, n_heads=4), jax.random.key(0))
    data = ioi_batch(64 * 20, seed=1)
    opt = optax.adam(5e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, tokens, io):
        grads = jax.grad(lambda p: ioi_loss(eqx.combine(p, static), tokens, io)[0])(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    for i in range(250):
        j = (i % 20) * 64
        params, state = step(params, state, data.clean[j:j + 64], data.io[j:j + 64])
    return eqx.combine(params, static), ioi_batch(12, seed=7)
