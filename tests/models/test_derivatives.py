"""The closed-form derivatives (models/derivatives.py) against autodiff of the plain formulas:
same values, same first and second derivatives, forward mode and vmap intact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.models import derivatives as D
from jaxinterp.models.partial import embed, positions_and_mask
from jaxinterp.models.transformer import run_blocks

PLAIN = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "silu": jax.nn.silu,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_values_and_derivatives_match_autodiff(name):
    ours, plain = getattr(D, name), PLAIN[name]
    x = jax.random.normal(jax.random.key(0), (3, 7, 9)) * 3.0
    if name == "softmax":  # masked scores, as attention has them
        x = jnp.where(jnp.tril(jnp.ones((7, 9), bool)), x, jnp.finfo(jnp.float32).min)
    u = jax.random.normal(jax.random.key(1), x.shape)
    np.testing.assert_array_equal(jax.jit(ours)(x), jax.jit(plain)(x))  # the forward is unchanged

    def loss(f):
        return lambda x: (jnp.sin(f(x)) * u).sum()

    t = jax.random.normal(jax.random.key(2), x.shape)

    def derivatives(f):  # jitted below: one program per function, not many small ones op by op
        return (jax.grad(loss(f))(x), jax.jvp(f, (x,), (t,))[1],
                jax.jvp(jax.grad(loss(f)), (x,), (t,))[1],  # second order: Hessian-vector products
                jax.vmap(jax.grad(lambda r: loss(f)(r[None]).sum()))(x))

    results = [jax.jit(lambda f=f: derivatives(f))() for f in (ours, plain)]
    for got, want, rtol in zip(*results, (2e-5, 2e-5, 1e-4, 2e-5), strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5)


def test_a_hook_editing_the_norm_scale_still_rescales_the_normalized_stream():
    cfg = ji.gpt2_config(d_model=32, n_layers=1, n_heads=4, d_vocab=50, n_ctx=16)
    model = ji.init_transformer(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)
    _, plain = ji.run_with_cache(model, tokens, names=["blocks.0.ln1.hook_normalized"])
    double = [ji.edit("blocks.0.ln1.hook_scale", lambda s, _: 2.0 * s)]
    _, edited = ji.run_with_cache(lambda t: ji.run_with_hooks(model, t, interventions=double), tokens,
                                  names=["blocks.0.ln1.hook_normalized"])
    np.testing.assert_allclose(edited["blocks.0.ln1.hook_normalized"],
                               0.5 * plain["blocks.0.ln1.hook_normalized"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act_fn", ["gelu_new", "silu"])
def test_model_forward_and_reverse_mode_agree(act_fn):
    """<J v, u> = <v, J^T u> through the whole model: jvp (forward mode) and vjp (reverse
    mode) of the residual stream with respect to the embeddings are transposes."""
    cfg = ji.gpt2_config(d_model=32, n_layers=2, n_heads=4, d_vocab=50, n_ctx=16, act_fn=act_fn)
    model = ji.init_transformer(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)
    positions, mask = positions_and_mask(tokens)
    x0 = embed(model, tokens, positions)

    def f(x):
        return run_blocks(model, x, positions, mask)

    v, u = (jax.random.normal(jax.random.key(k), x0.shape) for k in (2, 3))
    jv = jax.jvp(f, (x0,), (v,))[1]
    vju = jax.vjp(f, x0)[1](u)[0]
    np.testing.assert_allclose(float((jv * u).sum()), float((v * vju).sum()), rtol=1e-4)
