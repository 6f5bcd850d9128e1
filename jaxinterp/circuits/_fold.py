"""Edge scores with the layer norm's Jacobian folded into the contraction (what EAP runs).

A destination ``v`` reads the residual ``x`` through a norm and a projection ``W_v``
(a head's query, key or value weights, or the MLP's input). With the gradient ``g_v``
after the projection, ``w`` the norm's weight, ``s = sqrt(mean(x_c^2) + eps)`` and
``xh = x_c / s`` (``x_c``: ``x`` centred for LayerNorm, ``x`` for RMSNorm), the node's input
gradient is, per batch row and position,

    d metric / d in_v = ghat_v - mean(ghat_v) - xh mean(xh ghat_v),   ghat_v = (w W_v) (g_v / s)

(no ``mean(ghat_v)`` term for RMSNorm), and an edge's score is ``<diff_u, d metric / d in_v>``
summed over batch rows and positions (``diff_u``: the source's corrupted minus clean output).
The MLP is one destination: its ``ghat`` is the gradient at its norm's output, which the
backward pass formed (``_probe.zero_deltas``), so only the two corrections are left; the
product below is the heads' (and the MLP's where no norm precedes it).

``ghat_v`` is one matrix product (summed over EAP-IG's stacked copies before it, and with the
norm's weight applied to its output, not to ``W_v``); ``beta_v = mean_d(xh ghat_v)`` is
computed in the projection's own (``d_head`` or ``d_mlp``) space, ``(g_v / s) . (xh (w W_v))
/ d``, from the forward pass's projections; the two corrections are elementwise on ``[n, B,
P, d]`` for a layer's ``n`` destinations. Then one product ``[U, B P d] x [B P d, n]`` per
layer: the only pass over the sources' outputs ``[U, B, P, d]`` (correcting on their side
instead, ``sum_d diff_u`` and ``<diff_u, xh>`` per layer, cost two more passes over them a
layer: at GPT-2 small's shapes 2.5 forwards). One layer of destinations at a time
(``lax.scan``; on XLA's CPU a fresh megabyte of temporaries costs about half a millisecond of
page faults each call, so the loop's reused buffers beat one ``[V, B, P, d]`` array).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.circuits._probe import MLP_NORMALIZED, norm_back, normalised
from jaxinterp.circuits.graph import Graph


def _join(parts: list, heads: bool) -> tuple[Array, Array, Array]:
    """One ``(g, W, xh (w W))`` from several: side by side as more destinations (``heads``:
    the q, k and v inputs) or as one destination's longer projection (their gradients add up:
    ``qkv=False``, or a gated MLP's two input projections)."""
    axes = (3, 0, 3) if heads else (4, 2, 4)
    return tuple(jnp.concatenate(t, axis) for t, axis in zip(zip(*parts, strict=True), axes, strict=True))


def _dot(right: Float[Array, "n ..."], left: Float[Array, "U N"]) -> Float[Array, "U n"]:
    """``left right^T`` over the flattened trailing axes, computed as ``(right left^T)^T``
    (the destinations first: XLA's CPU ran ``[V, N] x [N, U]`` about twice as fast as
    ``[U, N] x [N, V]`` at bench_circuits.py's GPT-2 shapes)."""
    out = jax.lax.dot_general(right.reshape(right.shape[0], -1), left, (((1,), (1,)), ((), ())))
    return out.T


def _copies_sum(g: Float[Array, "K ..."]) -> Float[Array, "..."]:
    """``sum_k g_k``, as a product of its own: as a reduction XLA's CPU fused it into the
    product that reads it, which ran four times slower (GPT-2 small's MLP, K = 5: 34 ms a layer)."""
    return g[0] if g.shape[0] == 1 else jnp.einsum("k,k...->...", jnp.ones(g.shape[0], g.dtype), g)


def _back(g: Float[Array, "B P n e"], W: Float[Array, "n d e"]) -> Float[Array, "n B P d"]:
    """``g W^T`` per destination. One destination (an MLP) as a plain product: as a batched
    one of batch 1, XLA's CPU transposed ``W`` first (at GPT-2 small's shapes 8 ms a layer,
    about as long as the product)."""
    if W.shape[0] == 1:
        return jnp.einsum("bpe,de->bpd", g[:, :, 0], W[0])[None]
    return jnp.einsum("bpne,nde->nbpd", g, W)


def _site(cfg, p, x, part) -> Float[Array, "n B P d"]:
    """The input gradients (summed over the copies) of a group of ``n`` destinations reading
    one residual ``x`` ``[K, B, P, d]``; ``part``: ``(g [K, B, P, n, e], W [n, d, e], xh (w W)
    [K, B, P, n, e])``. The norm's corrections cost one elementwise pass over the ``n``
    destinations' ``[B, P, d]`` (the copies share ``W``: ``sum_k (g_k / s_k) W^T`` is one
    product), not passes over the ``U`` sources (more of them at every GPT-2 size)."""
    g, W, xhW = part
    W = W.astype(jnp.float32)
    if cfg.normalization_type is None or p is None:
        return _back(_copies_sum(g.astype(jnp.float32)), W)
    d = x.shape[-1]
    xh, s = normalised(cfg, x)
    gs = g.astype(jnp.float32) / s[..., None]
    g_sum = _copies_sum(gs)  # [B, P, n, e]
    ghat = _back(g_sum, W)
    w = jnp.ones((d,), jnp.float32) if p.w is None else p.w.astype(jnp.float32)
    if p.w is not None:  # (w W) g = w (W g): the norm's weight on the product, not on W
        ghat = ghat * w
    if cfg.normalization_type == "LN":
        # alpha (the mean over d) in the projection's space, summed over the copies, with w W
        # summed over d as a product (as a reduction of w * W: 25 ms a layer for GPT-2 small's
        # MLP), and no reduction over the big product's output (fused with it, it slowed it down)
        ghat = ghat - (jnp.einsum("bpne,ne->nbp", g_sum, jnp.einsum("d,nde->ne", w, W)) / d)[..., None]
    beta = jnp.einsum("kbpne,kbpne->nkbp", gs, xhW) / d  # in the projection's space too
    # elementwise, one term per copy (an einsum over k became a transposed product; a
    # broadcast-and-sum, a [n, K, B, P, d] buffer)
    return ghat - sum(beta[:, k, ..., None] * xh[k] for k in range(xh.shape[0]))


def folded_scores(model, graph: Graph, grads: dict, resid_pre, resid_mid, proj: dict, copies: int,
                  diff: Float[Array, "U B P d"]) -> Float[Array, "U V"]:
    """Edge scores (summed over the ``copies`` stacked along the batch; zero where there is
    no edge) from the gradients after each projection (``grads``, rows ``[K*B]``), the
    residuals the norms read (``[L, K*B, P, d]``), the forward pass's projections (``proj``:
    ``xh (w W) = projection - its bias - b_norm W``, so ``beta`` costs no product over
    ``d``) and the sources' outputs ``diff`` (corrupted minus clean). One layer of
    destinations at a time (``lax.scan``): its ``ghat`` ``[n, B, P, d]`` is the largest
    array, and a loop reuses its memory (XLA's CPU pays a page fault per fresh 4 KiB a call
    touches: half a millisecond per megabyte)."""
    cfg = model.cfg
    left = diff.astype(jnp.float32).reshape(diff.shape[0], -1)

    def split(a):  # [K*B, ...] -> [K, B, ...]
        return a.reshape((copies, -1) + a.shape[1:])

    def part(g, pr, W, b, norm):  # g, pr [K*B, P, n, e], W [n, d, e], b [n, e] or None
        off = 0.0 if b is None else b.astype(jnp.float32)
        if norm is not None and norm.b is not None:
            off = off + jnp.einsum("d,nde->ne", norm.b.astype(jnp.float32), W.astype(jnp.float32))
        return split(g), W, split(pr.astype(jnp.float32) - off)

    def layer(xs):  # one layer's destinations' input gradients [n, B, P, d]
        p, g, x_pre, x_mid, pr = xs
        a = p.attn
        q, k, v = (part(g[f"attn.hook_{n}"], pr[f"attn.hook_{n}"], getattr(a, f"W_{n.upper()}"),
                        getattr(a, f"b_{n.upper()}"), p.ln1) for n in "qkv")
        ghat = [_site(cfg, p.ln1, split(x_pre), _join([q, k, v], graph.qkv))]
        if MLP_NORMALIZED in g:  # the MLP's input gradient, but for the norm's Jacobian
            ghat.append(_copies_sum(norm_back(cfg, split(x_mid), split(g[MLP_NORMALIZED])))[None])
        elif cfg.has_mlp:
            m = p.mlp
            up = m.W_gate if m.W_gate is not None else m.W_in  # hook_pre reads x @ W_gate when gated
            b_up = None if m.W_gate is not None or m.b_in is None else m.b_in[None]
            parts = [part(g["mlp.hook_pre"][:, :, None], pr["mlp.hook_pre"][:, :, None], up[None], b_up, p.ln2)]
            if m.W_gate is not None:
                parts.append(part(g["mlp.hook_pre_linear"][:, :, None], pr["mlp.hook_pre_linear"][:, :, None],
                                  m.W_in[None], None if m.b_in is None else m.b_in[None], p.ln2))
            ghat.append(_site(cfg, p.ln2, split(x_mid), _join(parts, False)))
        return jnp.concatenate(ghat)

    per_layer = {key: val for key, val in grads.items() if key != "final"}
    _, blocks = jax.lax.scan(lambda _, xs: (None, _dot(layer(xs), left)), None,
                             (model.blocks, per_layer, resid_pre, resid_mid, proj))  # [L, U, n]
    final = _dot(_copies_sum(split(grads["final"]).astype(jnp.float32))[None], left)
    out = jnp.concatenate([jnp.moveaxis(blocks, 0, 1).reshape(left.shape[0], -1), final], 1)
    return jnp.where(jnp.asarray(graph.valid), out, 0.0)
