"""TopK training with only the active latents after the encoder: the sparse path.

A TopK SAE's forward pass needs every pre-activation once (to choose the ``k`` largest),
but after that only ``k`` latents per token take part. Written densely, the backward
pass would still do two more ``[batch, d_in] x [d_in, d_sae]``-sized matmuls (the
gradients of ``W_enc`` and of the input) and the decoder two more, although all but
``k`` entries per row of the gradient are zero. Here::

    pre      = stop_gradient((x - b_dec) @ W_enc + b_enc)       the one dense matmul
    idx      = top_k(pre, k)                                     [n, k] latent ids
    vals     = gather_pre(pre, x, b_dec, W_enc, b_enc, idx)      = pre[idx], custom VJP
    x_hat    = sum_j relu(vals_j) * W_dec[idx_j] + b_dec         gather, not a matmul

``gather_pre``'s VJP is sparse: with ``g [n, k]`` the cotangent of ``vals``,

    dW_enc[:, idx[b, j]] += g[b, j] * x_c[b]      (n * k rank-one columns, a scatter-add)
    db_enc[idx[b, j]]    += g[b, j]
    db_dec               = -W_enc @ db_enc        (through x_c = x - b_dec: one mat-vec)

and the decoder's gather has a scatter-add as its VJP, so the work after the encoder is
``O(n * k * d)`` instead of ``O(n * d_sae * d)``. Gradients equal the dense path's
(``tests/sae/test_architectures.py`` checks them against it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def gather_pre(
    pre: Float[Array, "n s"],
    x: Float[Array, "n d"],
    b_dec: Float[Array, " d"],
    W_enc: Float[Array, "d s"],
    b_enc: Float[Array, " s"],
    idx: Int[Array, "n k"],
    apply_b_dec: bool,
) -> Float[Array, "n k"]:
    """``pre[b, idx[b, j]]``, where ``pre = (x - b_dec) @ W_enc + b_enc`` was computed
    already (pass it under ``stop_gradient``); differentiable in x, b_dec, W_enc, b_enc."""
    return jnp.take_along_axis(pre, idx, axis=-1)


def _fwd(pre, x, b_dec, W_enc, b_enc, idx, apply_b_dec):
    return gather_pre(pre, x, b_dec, W_enc, b_enc, idx, apply_b_dec), (x, b_dec, W_enc, idx)


def _bwd(apply_b_dec, res, g):
    x, b_dec, W_enc, idx = res
    n, k = idx.shape
    d, s = W_enc.shape
    x_c = x - b_dec if apply_b_dec else x
    flat_idx = idx.reshape(-1)
    g = g.astype(W_enc.dtype)
    d_b_enc = jnp.zeros(s, W_enc.dtype).at[flat_idx].add(g.reshape(-1))
    rows = (g[:, :, None] * x_c[:, None, :]).reshape(n * k, d)
    d_W_enc = jnp.zeros((s, d), W_enc.dtype).at[flat_idx].add(rows).T
    # d x_c = sum_j g[b, j] W_enc[:, idx[b, j]]; only the input needs it per token, and
    # XLA drops it when the input is data. b_dec needs only its sum: -W_enc @ d_b_enc.
    d_x = jnp.einsum("nk,nkd->nd", g, jnp.take(W_enc.T, idx, axis=0))
    d_b_dec = -(W_enc @ d_b_enc) if apply_b_dec else jnp.zeros_like(b_dec)
    return None, d_x.astype(x.dtype), d_b_dec.astype(b_dec.dtype), d_W_enc, d_b_enc, None


gather_pre.defvjp(_fwd, _bwd)


@jax.custom_vjp
def sparse_decode(
    acts: Float[Array, "n k"], idx: Int[Array, "n k"], W_dec: Float[Array, "s d"]
) -> Float[Array, "n d"]:
    """``sum_j acts[b, j] * W_dec[idx[b, j]]`` (no bias): the decoder on active latents only.

    Its VJP keeps only ``(acts, idx, W_dec)`` and gathers the rows again, instead of
    saving the ``[n, k, d]`` gathered rows between the passes."""
    return jnp.einsum("nk,nkd->nd", acts.astype(W_dec.dtype), jnp.take(W_dec, idx, axis=0))


def _decode_fwd(acts, idx, W_dec):
    return sparse_decode(acts, idx, W_dec), (acts, idx, W_dec)


def _decode_bwd(res, g):
    acts, idx, W_dec = res
    g = g.astype(W_dec.dtype)
    d_acts = jnp.einsum("nd,nkd->nk", g, jnp.take(W_dec, idx, axis=0)).astype(acts.dtype)
    rows = (acts.astype(W_dec.dtype)[:, :, None] * g[:, None, :]).reshape(-1, W_dec.shape[1])
    d_W_dec = jnp.zeros_like(W_dec).at[idx.reshape(-1)].add(rows)
    return d_acts, None, d_W_dec


sparse_decode.defvjp(_decode_fwd, _decode_bwd)


def count_fires(idx: Int[Array, "n k"], active: Array, d_sae: int) -> Float[Array, " s"]:
    """How many rows each latent was active in (``active [n, k]`` marks real activity)."""
    return jnp.zeros(d_sae, jnp.float32).at[idx.reshape(-1)].add(active.reshape(-1).astype(jnp.float32))
