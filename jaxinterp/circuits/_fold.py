"""Edge scores with the layer norm's Jacobian folded into the contraction (what EAP runs).

A destination ``v`` reads the residual ``x`` through a norm and a projection ``W_v``
(a head's query, key or value weights, or the MLP's input). With the gradient ``g_v``
after the projection, ``w`` the norm's weight, ``s = sqrt(mean(x_c^2) + eps)`` and
``xh = x_c / s`` (``x_c``: ``x`` centred for LayerNorm, ``x`` for RMSNorm), the node's input
gradient is, per batch row and position,

    d metric / d in_v = ghat_v - mean(ghat_v) - xh mean(xh ghat_v),   ghat_v = (w W_v) (g_v / s)

(no ``mean(ghat_v)`` term for RMSNorm). So an edge's score is

    score(u -> v) = <diff_u, ghat_v> - sum_bp sum_d(diff_u) alpha_v - sum_bp <diff_u, xh> beta_v

with ``alpha_v = mean_d(ghat_v)`` and ``beta_v = mean_d(xh ghat_v)``, both ``[B, P]`` and both
computed in the projection's own (``d_head`` or ``d_mlp``) space: ``alpha_v = (g_v / s) .
(w W_v)^T 1 / d`` and ``beta_v = (g_v / s) . (xh (w W_v)) / d``. ``ghat_v`` is one matrix
product, summed over EAP-IG's stacked copies before it; the norm never costs a pass over
``[V, B, P, d]``. The two rank-one corrections join the one contraction as extra columns:
``[diff_u, sum_d diff_u, <diff_u, xh_(site, copy)>]`` against ``[ghat_v, -alpha_v, -beta_v``
at its own site``]``, where a site is the residual a norm reads (each layer's attention
input, then each layer's MLP input).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.circuits.graph import Graph


class FoldedGrads(eqx.Module):
    """Every destination's input gradient with the norm folded out: ``ghat`` ``[V, B, P, d]``
    (summed over copies), ``alpha`` ``[V, B, P]`` (summed over copies), ``beta`` ``[V, K, B, P]``,
    the normalised residuals ``xh`` ``[S, K, B, P, d]`` and each destination's site ``[V]``
    (``-1``: no norm). ``alpha``, ``beta`` and ``xh`` are ``None`` for a model without norms."""

    ghat: Float[Array, "V B P d"]
    alpha: Float[Array, "V B P"] | None
    beta: Float[Array, "V K B P"] | None
    xh: Float[Array, "S K B P d"] | None
    site: tuple[int, ...] = eqx.field(static=True)


def _normalised(cfg, x: Float[Array, "K B P d"]) -> tuple[Array, Array]:
    x = x.astype(jnp.float32)
    if cfg.normalization_type == "LN":
        x = x - x.mean(-1, keepdims=True)
    s = jnp.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps)
    return x / s, s


def _site(cfg, p, x, parts, absorb: bool) -> tuple[Array, Array | None, Array | None, Array | None]:
    """``parts``: ``(g [K, B, P, n, e], W [n, d, e], xh (w W) [K, B, P, n, e])`` whose input
    gradients add up to one group of ``n`` destinations. Returns ``ghat [n, B, P, d]``, ``alpha [n, B, P]``,
    ``beta [n, K, B, P]`` and ``xh [K, B, P, d]``."""
    if cfg.normalization_type is None or p is None:
        return sum(jnp.einsum("kbpne,nde->nbpd", g, W) for g, W, _ in parts), None, None, None
    d = x.shape[-1]
    xh, s = _normalised(cfg, x)
    w = jnp.ones((d,), jnp.float32) if p.w is None else p.w.astype(jnp.float32)
    ghat = alpha = beta = 0.0
    for g, W, xhW in parts:
        gs = g.astype(jnp.float32) / s[..., None]
        Ww = W.astype(jnp.float32) * w[None, :, None]
        ghat = ghat + jnp.einsum("kbpne,nde->nbpd", gs, Ww)
        if cfg.normalization_type == "LN":
            alpha = alpha + jnp.einsum("kbpne,ne->nbp", gs, Ww.sum(1)) / d
        beta = beta + jnp.einsum("kbpne,kbpne->nkbp", gs, xhW) / d
    if cfg.normalization_type != "LN":
        alpha = jnp.zeros(ghat.shape[:-1], jnp.float32)
    if absorb:  # the corrections summed over copies here: one product contracting the copies
        return ghat - alpha[..., None] - jnp.einsum("nkbp,kbpd->nbpd", beta, xh), None, None, None
    return ghat, alpha, beta, xh


def fold_grads(model, graph: Graph, grads: dict, resid_pre, resid_mid, proj: dict, copies: int,
               absorb: bool = False) -> FoldedGrads:
    """:class:`FoldedGrads` from the gradients after each projection (``grads``, rows
    ``[K*B]``), the residuals the norms read (``[L, K*B, P, d]``) and the forward pass's
    projections (``proj``): ``xh (w W) = projection - its bias - b_norm W``, so ``beta``
    costs no product over ``d``."""
    cfg = model.cfg

    def split(a):  # [K*B, ...] -> [K, B, ...]
        return a.reshape((copies, -1) + a.shape[1:])

    def part(g, pr, W, b, norm):  # g, pr [K*B, P, n, e], W [n, d, e], b [n, e] or None
        off = 0.0 if b is None else b.astype(jnp.float32)
        if norm is not None and norm.b is not None:
            off = off + jnp.einsum("d,nde->ne", norm.b.astype(jnp.float32), W.astype(jnp.float32))
        return split(g), W, split(pr.astype(jnp.float32) - off)

    def layer(p, g, x_pre, x_mid, pr):
        a = p.attn
        q, k, v = (part(g[f"attn.hook_{n}"], pr[f"attn.hook_{n}"], getattr(a, f"W_{n.upper()}"),
                        getattr(a, f"b_{n.upper()}"), p.ln1) for n in "qkv")
        if graph.qkv:
            groups = [_site(cfg, p.ln1, split(x_pre), [t], absorb) for t in (q, k, v)]
            attn = [None if groups[0][i] is None else jnp.concatenate([gr[i] for gr in groups]) for i in range(3)]
            attn.append(groups[0][3])
        else:
            attn = list(_site(cfg, p.ln1, split(x_pre), [q, k, v], absorb))
        if not cfg.has_mlp:
            return attn, None
        m = p.mlp
        up = m.W_gate if m.W_gate is not None else m.W_in  # hook_pre reads x @ W_gate when gated
        b_up = None if m.W_gate is not None or m.b_in is None else m.b_in[None]
        parts = [part(g["mlp.hook_pre"][:, :, None], pr["mlp.hook_pre"][:, :, None], up[None], b_up, p.ln2)]
        if m.W_gate is not None:
            parts.append(part(g["mlp.hook_pre_linear"][:, :, None], pr["mlp.hook_pre_linear"][:, :, None], m.W_in[None],
                              None if m.b_in is None else m.b_in[None], p.ln2))
        return attn, list(_site(cfg, p.ln2, split(x_mid), parts, absorb))

    per_layer = {key: val for key, val in grads.items() if key != "final"}
    attn, mlp = jax.vmap(layer)(model.blocks, per_layer, resid_pre, resid_mid, proj)
    L, n_attn = cfg.n_layers, attn[0].shape[1]
    final = split(grads["final"]).sum(0)[None].astype(jnp.float32)

    def per_dst(i, tail_shape):  # [L, n, ...] (+ MLP [L, 1, ...]) -> [L*(n+1), ...] + final
        blocks = attn[i] if mlp is None else jnp.concatenate([attn[i], mlp[i]], 1)
        return jnp.concatenate([blocks.reshape((-1,) + blocks.shape[2:]), jnp.zeros((1,) + tail_shape)])

    ghat = jnp.concatenate([per_dst(0, final.shape[1:])[:-1], final])
    if cfg.normalization_type is None or absorb:
        return FoldedGrads(ghat, None, None, None, (-1,) * graph.n_dst)
    alpha, beta = per_dst(1, final.shape[1:-1]), per_dst(2, (copies,) + final.shape[1:-1])
    xh = attn[3] if mlp is None else jnp.concatenate([attn[3], mlp[3]])  # sites: attention inputs, then MLPs'
    site = [s for l in range(L) for s in [l] * n_attn + ([] if mlp is None else [L + l])]
    return FoldedGrads(ghat, alpha, beta, xh, tuple(site + [-1]))


def contract_folded(diff: Float[Array, "U B P d"], f: FoldedGrads, valid: np.ndarray) -> Float[Array, "U V"]:
    """``scores[u, v]`` (zero where not ``valid[u, v]``) as one matrix product over the
    flattened batch, positions and width, plus the correction columns."""
    U, V = diff.shape[0], f.ghat.shape[0]
    diff = diff.astype(jnp.float32)
    left, right = [diff.reshape(U, -1)], [f.ghat.reshape(V, -1)]
    if f.alpha is not None:
        S = f.xh.shape[0]
        onehot = jnp.asarray(np.array(f.site)[:, None] == np.arange(S)[None], jnp.float32)  # [V, S]
        left += [diff.sum(-1).reshape(U, -1), jnp.einsum("ubpd,skbpd->uskbp", diff, f.xh).reshape(U, -1)]
        right += [-f.alpha.reshape(V, -1), -(onehot[:, :, None] * f.beta.reshape(V, 1, -1)).reshape(V, -1)]
    out = jax.lax.dot_general(jnp.concatenate(left, 1), jnp.concatenate(right, 1), (((1,), (1,)), ((), ())))
    return jnp.where(jnp.asarray(valid), out, 0.0)
