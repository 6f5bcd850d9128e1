"""The activations that tell SAE architectures apart, on pre-activations ``pre [..., d_sae]``.

* ReLU: ``max(pre, 0)``.
* TopK (Gao et al. 2024): ``relu(pre)`` at the ``k`` largest entries of each row, 0 elsewhere.
* BatchTopK (Bussmann et al. 2024): the ``k * n_rows`` largest entries of ``relu(pre)`` over
  the whole batch; at inference a single threshold estimated in training replaces it.
* JumpReLU (Rajamanoharan et al. 2024, Gemma Scope): ``pre * H(pre - threshold)`` with H
  the Heaviside step. H has no useful derivative, so the threshold learns through a
  straight-through estimator: the derivative of H(z - t) with respect to t is replaced by
  ``-(1/eps) * K((z - t)/eps)`` with K the rectangle kernel ``1{|u| < 1/2}`` and ``eps``
  the bandwidth. So::

      d jumprelu / d pre = H(pre - t)
      d jumprelu / d t   = -(t / eps) * K((pre - t) / eps)
      d step / d t       = -(1 / eps) * K((pre - t) / eps)        (step = H(pre - t), the L0)

Every function acts on the last axis and broadcasts over the others.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rectangle(u: Array) -> Array:
    """The rectangle kernel ``1{-1/2 < u < 1/2}`` (same dtype as ``u``)."""
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_leading(x: Array) -> Array:
    return x.reshape(-1, x.shape[-1]).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre: Float[Array, "... s"], threshold: Float[Array, " s"], bandwidth: float) -> Array:
    """``pre * (pre > threshold)``, with the straight-through threshold gradient above."""
    return jnp.where(pre > threshold, pre, jnp.zeros((), pre.dtype))


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu(pre, threshold, bandwidth), (pre, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    pre, threshold = res
    d_pre = jnp.where(pre > threshold, g, jnp.zeros((), g.dtype))
    ste = (threshold / bandwidth) * rectangle((pre - threshold) / bandwidth) * g
    return d_pre, -_sum_leading(ste).astype(threshold.dtype)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre: Float[Array, "... s"], threshold: Float[Array, " s"], bandwidth: float) -> Array:
    """``H(pre - threshold)`` as 0/1 floats; gradient only to ``threshold`` (STE)."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step(pre, threshold, bandwidth), (pre, threshold)


def _step_bwd(bandwidth, res, g):
    pre, threshold = res
    ste = (1.0 / bandwidth) * rectangle((pre - threshold) / bandwidth) * g
    return jnp.zeros_like(pre), -_sum_leading(ste).astype(threshold.dtype)


step.defvjp(_step_fwd, _step_bwd)


def topk_indices(pre: Float[Array, "... s"], k: int) -> tuple[Array, Int[Array, "... k"]]:
    """``(values, indices)`` of the ``k`` largest entries of each row (``lax.top_k``).

    The optimization barrier keeps XLA from fusing the consumers of the result into the
    selection: ``top_k`` reaches XLA as a full sort plus slices, which XLA turns back into
    a real top-k only when slices are the sort's sole users (otherwise a ``[n, d_sae]``
    sort, ~100x slower at d_sae 65536)."""
    return tuple(jax.lax.optimization_barrier(jax.lax.top_k(pre, k)))


def scatter_last(values: Float[Array, "... k"], indices: Int[Array, "... k"], size: int) -> Array:
    """A dense ``[..., size]`` array holding ``values`` at ``indices`` (0 elsewhere)."""
    lead = values.shape[:-1]
    flat_v = values.reshape(-1, values.shape[-1])
    flat_i = indices.reshape(-1, indices.shape[-1])
    rows = jnp.arange(flat_v.shape[0])[:, None]
    dense = jnp.zeros((flat_v.shape[0], size), values.dtype).at[rows, flat_i].set(flat_v)
    return dense.reshape(*lead, size)


def topk(pre: Float[Array, "... s"], k: int) -> Float[Array, "... s"]:
    """Dense TopK activations: ``relu`` of each row's ``k`` largest pre-activations."""
    values, indices = topk_indices(pre, k)
    return scatter_last(jax.nn.relu(values), indices, pre.shape[-1])


def batch_topk(pre: Float[Array, "... s"], k: int) -> Float[Array, "... s"]:
    """BatchTopK: the ``k * n_rows`` largest entries of ``relu(pre)`` over all rows."""
    acts = jax.nn.relu(pre)
    flat = acts.reshape(-1)
    n_rows = flat.shape[0] // pre.shape[-1]
    values, indices = jax.lax.top_k(flat, min(k * n_rows, flat.shape[0]))
    return jnp.zeros_like(flat).at[indices].set(values).reshape(pre.shape)


def threshold_acts(pre: Float[Array, "... s"], threshold: Float[Array, " s"]) -> Array:
    """Inference form of JumpReLU and BatchTopK: ``relu(pre) * (pre > threshold)``."""
    return jnp.where(pre > threshold, jax.nn.relu(pre), jnp.zeros((), pre.dtype))
