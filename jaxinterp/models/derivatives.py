"""Closed-form derivatives for the transformer's nonlinearities, so backward passes stay cheap.

Reverse-mode autodiff keeps every intermediate its chain rule reads. For the tanh GELU
``y = x/2 (1 + tanh(u))``, ``u = c (x + a x^3)``, that is five arrays of the MLP's width
per layer (``x``, ``x^2``, ``tanh u``, ``1 - tanh^2 u``, ...), each written in the forward
pass, read back in the backward pass, and stacked over the layers by ``lax.scan``. For the
attention softmax over masked scores it is three ``[b, h, q, k]`` arrays (the scores, their
exponentials, the normalised pattern) and two row statistics. Written in closed form the
derivative needs one array each:

    gelu_new'(x) = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2),   t = tanh(c (x + a x^3))
    gelu'(x)     = Phi(x) + x phi(x)
    silu'(x)     = s (1 + x (1 - s)),                           s = sigmoid(x)
    d softmax(s) = P * (ds - sum_k(P * ds)),                     P = softmax(s)

Each function here is a :func:`jax.custom_jvp` whose tangent is linear in the input
tangent, so JAX linearises and transposes it: reverse mode saves only ``f'(x)`` (or
``P``), and forward mode (``jax.jvp``, ``jax.linearize``), ``vmap`` and higher-order
derivatives keep working (the rules are ordinary ``jax.numpy`` code). The primal values
are the same operations as before (``jax.nn.gelu``, ``jax.nn.softmax``), so forward passes
are bit-for-bit unchanged; gradients agree with autodiff's to rounding.

They sit between hook points (``mlp.hook_pre`` -> ``mlp.hook_post``, ``attn.hook_attn_scores``
-> ``attn.hook_pattern``), never across one, so a hook that edits an activation sees and
changes exactly what it did before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

_C = math.sqrt(2.0 / math.pi)  # the tanh GELU's sqrt(2 / pi)
_A = 0.044715


def _pointwise(f: Callable[[Array], Array], df: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """``f`` with the derivative ``df`` (elementwise): reverse mode saves ``df(x)`` only."""
    g = jax.custom_jvp(f)

    @g.defjvp
    def _jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), df(x) * t

    return g


def _tanh_gelu_grad(c: float) -> Callable[[Array], Array]:
    def df(x):
        t = jnp.tanh(c * (x + _A * x * x * x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (c * (1.0 + 3.0 * _A * x * x))
    return df


def _erf_gelu_grad(x):
    return 0.5 * jax.lax.erfc(-x * math.sqrt(0.5)) + x * jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def _silu_grad(x):
    s = jax.nn.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


gelu_new = _pointwise(lambda x: jax.nn.gelu(x, approximate=True), _tanh_gelu_grad(_C))
gelu = _pointwise(lambda x: jax.nn.gelu(x, approximate=False), _erf_gelu_grad)
gelu_fast = _pointwise(lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + _A * x * x))),
                       _tanh_gelu_grad(0.7978845608))
silu = _pointwise(jax.nn.silu, _silu_grad)


@jax.custom_jvp
def softmax(x: Array) -> Array:
    """``jax.nn.softmax(x, axis=-1)``; its derivative saves the output only."""
    return jax.nn.softmax(x, axis=-1)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = jax.nn.softmax(x, axis=-1)
    return y, y * (t - (y * t).sum(-1, keepdims=True))
