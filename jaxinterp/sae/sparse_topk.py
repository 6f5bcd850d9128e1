"""TopK training with only the active latents after the encoder: the sparse path.

A TopK SAE's forward pass needs every pre-activation once (to choose the ``k`` largest),
but after that only ``k`` latents per token take part. Written densely, the backward
pass would still do two more ``[batch, d_in] x [d_in, d_sae]``-sized matmuls (the
gradients of ``W_enc`` and of the input) and the decoder two more, although all but
``k`` entries per row of the gradient are zero. Here, with ``vals, idx = top_k(pre, k)``
taken from the one dense matmul ``pre = (x - b_dec) @ W_enc + b_enc`` (no gradient)::

    recon[b]     = sum_j relu(vals[b, j]) * W_dec[idx[b, j]]          gathered rows
    aux_recon[b] = sum_j relu(aux_vals[b, j]) * W_dec[aux_idx[b, j]]  only when aux_on

(``aux_*``: the auxiliary-k loss's choice among dead latents, ``-inf`` where none is
left; with ``aux_on`` false nothing of it is computed.) The VJP is written by hand, with
``g``, ``g_aux [n, d_out]`` the cotangents of the two outputs and ``x_c = x - b_dec``::

    d_acts[b, j]         = g[b] . W_dec[idx[b, j]]                      k dot products
    d_vals               = d_acts * (vals > 0)
    dW_dec[idx[b, j]]   += relu(vals[b, j]) * g[b]                      scatter-add of rows
    dW_enc[:, idx[b, j]] += d_vals[b, j] * x_c[b]                       (built as rows of dW_enc.T)
    db_enc[idx[b, j]]   += d_vals[b, j]
    db_dec               = -W_enc @ db_enc                              one mat-vec

plus the same terms for the auxiliary latents, added into the same scatter buffers inside
one ``lax.cond``: a step without dead latents writes each full-size gradient once and
never touches the auxiliary rows. So the work after the encoder is ``O(n * k * d)``
instead of ``O(n * d_sae * d)``, and ``vals`` must be the pre-activations at ``idx`` (the
VJP credits ``d_vals`` to ``W_enc``, ``b_enc`` and ``b_dec`` through that formula).

Every gather and scatter runs as a ``fori_loop`` over latent slots (the decoder over
chunks of slots), each one fused loop over ``[n, d]`` rows: on CPU this is several times
faster than a batched ``einsum`` over ``[n, k, d]`` gathered rows, the scatters update
their buffer in place, and no ``[n, k, d]`` array is ever built.
Gradients equal the dense path's (``tests/sae/test_architectures.py`` checks them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

_CHUNK = 8  # decoder slots per loop iteration (unrolled inside the iteration)
_IN_BOUNDS = "promise_in_bounds"  # indices come from top_k: always < d_sae


def _chunked(vals: Array, idx: Array) -> tuple[Array, Array, int, int]:
    """``vals, idx [n, k]`` zero-padded to a multiple of the chunk: (vals, idx, chunk, n_chunks)."""
    k = idx.shape[1]
    chunk = min(_CHUNK, k)
    n_chunks = -(-k // chunk)
    pad = n_chunks * chunk - k
    if pad:
        vals = jnp.pad(vals, ((0, 0), (0, pad)))
        idx = jnp.pad(idx, ((0, 0), (0, pad)))
    return vals, idx, chunk, n_chunks


def _columns(a: Array, c: Array, chunk: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(a, c * chunk, chunk, axis=1)


def decode_rows(acts: Float[Array, "n k"], idx: Int[Array, "n k"], W: Float[Array, "s d"]
                ) -> Float[Array, "n d"]:
    """``sum_j acts[b, j] * W[idx[b, j]]``: a decoder on ``k`` rows per token."""
    out = jnp.zeros((idx.shape[0], W.shape[1]), W.dtype)
    if idx.shape[1] == 0:
        return out
    acts, idx, chunk, n_chunks = _chunked(acts.astype(W.dtype), idx)

    def body(c, out):
        a, i = _columns(acts, c, chunk), _columns(idx, c, chunk)
        for j in range(chunk):
            out = out + a[:, j:j + 1] * W.at[i[:, j]].get(mode=_IN_BOUNDS)
        return out

    return jax.lax.fori_loop(0, n_chunks, body, out)


def dot_rows(g: Float[Array, "n d"], idx: Int[Array, "n k"], W: Float[Array, "s d"]
             ) -> Float[Array, "n k"]:
    """``g[b] . W[idx[b, j]]`` for every slot: the transpose of :func:`decode_rows` in ``acts``."""
    n, k = idx.shape
    if k == 0:
        return jnp.zeros((n, 0), W.dtype)

    def body(j, out):
        rows = W.at[jax.lax.dynamic_index_in_dim(idx, j, 1, keepdims=False)].get(mode=_IN_BOUNDS)
        col = (g * rows).sum(-1, keepdims=True)
        return jax.lax.dynamic_update_index_in_dim(out, col, j, 1)

    return jax.lax.fori_loop(0, k, body, jnp.zeros((n, k), W.dtype))


def scatter_rows(out: Float[Array, "s d"], coef: Float[Array, "n k"], idx: Int[Array, "n k"],
                 rows: Float[Array, "n d"]) -> Float[Array, "s d"]:
    """``out[idx[b, j]] += coef[b, j] * rows[b]``, in place (the transpose of
    :func:`decode_rows` in ``W``): one ``[n, d]`` scatter-add per slot."""
    if idx.shape[1] == 0:
        return out
    coef, rows = coef.astype(out.dtype), rows.astype(out.dtype)

    def body(j, out):
        i = jax.lax.dynamic_index_in_dim(idx, j, 1, keepdims=False)
        return out.at[i].add(jax.lax.dynamic_index_in_dim(coef, j, 1) * rows, mode=_IN_BOUNDS)

    return jax.lax.fori_loop(0, idx.shape[1], body, out)


def _scatter_vals(out: Float[Array, " s"], vals: Array, idx: Array) -> Array:
    return out.at[idx.reshape(-1)].add(vals.reshape(-1).astype(out.dtype), mode=_IN_BOUNDS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def sparse_topk(
    apply_b_dec: bool,
    W_enc: Float[Array, "d s"],
    b_enc: Float[Array, " s"],
    W_dec: Float[Array, "s o"],
    b_dec: Float[Array, " d"],
    x: Float[Array, "n d"],
    vals: Float[Array, "n k"],
    idx: Int[Array, "n k"],
    aux_vals: Float[Array, "n ka"],
    aux_idx: Int[Array, "n ka"],
    aux_on: Bool[Array, ""],
) -> tuple[Float[Array, "n o"], Float[Array, "n o"]]:
    """``(recon, aux_recon)`` of the module docstring (no decoder bias), differentiable in
    ``W_enc, b_enc, W_dec, b_dec, x`` through the sparse VJP; ``vals``/``aux_vals`` are
    the (stop-gradient) pre-activations at ``idx``/``aux_idx``."""
    recon = decode_rows(jax.nn.relu(vals), idx, W_dec)
    aux = jax.lax.cond(aux_on, lambda: decode_rows(jax.nn.relu(aux_vals), aux_idx, W_dec),
                       lambda: jnp.zeros_like(recon))
    return recon, aux


def _fwd(apply_b_dec, W_enc, b_enc, W_dec, b_dec, x, vals, idx, aux_vals, aux_idx, aux_on):
    out = sparse_topk(apply_b_dec, W_enc, b_enc, W_dec, b_dec, x, vals, idx, aux_vals, aux_idx, aux_on)
    return out, (W_enc, W_dec, b_dec, x, vals, idx, aux_vals, aux_idx, aux_on)


def _bwd(apply_b_dec, res, cotangents):
    W_enc, W_dec, b_dec, x, vals, idx, aux_vals, aux_idx, aux_on = res
    g, g_aux = (c.astype(W_dec.dtype) for c in cotangents)
    x_c = (x - b_dec if apply_b_dec else x).astype(W_enc.dtype)
    d, s = W_enc.shape

    def grads(groups):
        d_W_dec = jnp.zeros_like(W_dec)
        d_W_enc_t = jnp.zeros((s, d), W_enc.dtype)
        d_b_enc = jnp.zeros(s, W_enc.dtype)
        d_vals_all = []
        for v, i, gg in groups:
            acts = jax.nn.relu(v).astype(W_dec.dtype)
            d_vals = jnp.where(v > 0, dot_rows(gg, i, W_dec), 0.0).astype(W_enc.dtype)
            d_W_dec = scatter_rows(d_W_dec, acts, i, gg)
            d_W_enc_t = scatter_rows(d_W_enc_t, d_vals, i, x_c)
            d_b_enc = _scatter_vals(d_b_enc, d_vals, i)
            d_vals_all.append(d_vals)
        # d x_c only matters when x is not data (XLA drops it otherwise): sum_j d_vals W_enc[:, j]
        d_x = sum(decode_rows(dv, i, W_enc.T) for dv, (_, i, _) in zip(d_vals_all, groups, strict=True))
        return d_W_dec, d_W_enc_t, d_b_enc, d_x

    main = ((vals, idx, g),)
    d_W_dec, d_W_enc_t, d_b_enc, d_x = jax.lax.cond(
        aux_on, lambda: grads(main + ((aux_vals, aux_idx, g_aux),)), lambda: grads(main))
    d_b_dec = -(W_enc @ d_b_enc) if apply_b_dec else jnp.zeros_like(b_dec)
    return (d_W_enc_t.T, d_b_enc, d_W_dec, d_b_dec.astype(b_dec.dtype), d_x.astype(x.dtype),
            None, None, None, None, None)


sparse_topk.defvjp(_fwd, _bwd)


def count_fires(idx: Int[Array, "n k"], active: Array, d_sae: int) -> Float[Array, " s"]:
    """How many rows each latent was active in (``active [n, k]`` marks real activity)."""
    return _scatter_vals(jnp.zeros(d_sae, jnp.float32), active.astype(jnp.float32), idx)
