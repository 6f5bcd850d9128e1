"""The forward pass over the node graph: every node input built from node outputs.

Circuit discovery needs two things a plain forward pass does not give: the gradient of
the metric at each node's *own* input (one head's query input, not the shared residual
stream), and runs in which each node reads some edges from another run. Both come from
one function, :func:`graph_forward`, which runs the model layer by layer (``lax.scan``)
with node inputs

    in_v = bias_v + sum_u valid[u, v] (w[u, v] a_u + (1 - w[u, v]) c_u)  (+ delta_v)

where ``a_u`` are this run's node outputs and ``c_u`` fixed outputs of another run (the
corrupted prompt). Without ``mix`` every edge is this run's, so ``in_v`` is just the
residual stream, built the cheap way. ``delta_v`` (zeros) makes ``d metric / d in_v`` the
gradient with respect to ``deltas``. Attention reuses ``components.attention``: the
per-head q, k, v computed from separate inputs replace its ``hook_q/k/v`` values and
its per-head ``hook_result`` is the heads' outputs; the MLP, norms and unembedding are
``components``' too. This module is the only forward logic of :mod:`jaxinterp.circuits`,
kept in one place so it can move onto the core's partial forward.

Shapes: ``U`` source nodes, ``V`` destination nodes, ``B`` batch, ``P`` positions.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.circuits.graph import Graph
from jaxinterp.hooks import Handler, handler_scope
from jaxinterp.models import components as C
from jaxinterp.models.transformer import HookedTransformer, embed, positions_and_mask, unembed


class EdgeMix(eqx.Module):
    """Node ``v`` reads ``a_u`` from this run where ``weight[u, v]`` is 1, ``corrupt[u]`` where 0."""

    weight: Float[Array, "U V"]
    corrupt: Float[Array, "U B P d"]


class Interpolation(eqx.Module):
    """Replaces one group of node outputs (``group`` 0: the input; ``1 + 2l``: the heads
    of layer ``l``; ``2 + 2l``: its MLP) by ``alpha * clean + (1 - alpha) * corrupt``."""

    group: Int[Array, ""]
    alpha: Float[Array, ""]
    clean: Float[Array, "U B P d"]
    corrupt: Float[Array, "U B P d"]

    def at(self, code, start: int, size: int, value: Array) -> Array:
        """``value`` (rows ``start:start+size`` of the outputs, ``[size, ...]``), interpolated
        if ``code`` is the group."""
        def rows(x):
            return jax.lax.dynamic_slice_in_dim(x, start, size, 0)

        new = self.alpha * rows(self.clean) + (1 - self.alpha) * rows(self.corrupt)
        return jnp.where(self.group == code, new.astype(value.dtype), value)


class _SplitInputs(Handler):
    """Inside ``components.attention``: q, k, v from the nodes' own inputs; keeps ``hook_result``."""

    def __init__(self, q, k, v):
        self.values, self.result = {"attn.hook_q": q, "attn.hook_k": k, "attn.hook_v": v}, None

    def wants(self, name: str) -> bool:
        return name in self.values or name == "attn.hook_result"

    def handle(self, site, x, frames_above):
        name = site.name()
        if name == "attn.hook_result":
            self.result = x
        return self.values[name].astype(x.dtype) if name in self.values else x


def _heads(cfg, graph: Graph, p: C.BlockParams, x_in: Float[Array, "n B P d"], positions, mask):
    """Per-head outputs ``[H, B, P, d]`` of one layer whose attention inputs are ``x_in``."""
    a, H, G = p.attn, cfg.n_heads, cfg.n_kv_heads
    x = C.normalize(cfg, p.ln1, jnp.moveaxis(x_in, 0, 2), "ln1")  # [B, P, n, d], one norm per input
    xq, xk, xv = (x[:, :, :H], x[:, :, H:H + G], x[:, :, H + G:]) if graph.qkv else (x, x, x)

    def project(x, W, b):
        y = jnp.einsum("bpnd,nde->bpne", x, W)
        return y if b is None else y + b

    split = _SplitInputs(project(xq, a.W_Q, a.b_Q), project(xk, a.W_K, a.b_K), project(xv, a.W_V, a.b_V))
    placeholder = jnp.zeros(x_in.shape[1:], x_in.dtype)  # its own q/k/v are replaced (dead code)
    with handler_scope(split):
        C.attention(cfg, a, placeholder, positions, mask)
    return jnp.moveaxis(split.result, 2, 0)


def graph_forward(model: HookedTransformer, graph: Graph, tokens: Int[Array, "B P"], *,
                  input_embed: Float[Array, "B P d"] | None = None, mix: EdgeMix | None = None,
                  deltas: Float[Array, "V B P d"] | None = None,
                  interp: Interpolation | None = None) -> tuple[Float[Array, "B P v"], Float[Array, "U B P d"]]:
    """Logits and every source node's output ``[U, B, P, d]`` (see the module docstring).

    ``input_embed`` replaces the ``input`` node's output (the embeddings).
    """
    cfg = model.cfg
    L, H, S, N, NA = cfg.n_layers, cfg.n_heads, graph.per_layer_src, graph.per_layer_dst, graph.n_attn_in
    positions, mask = positions_and_mask(tokens)
    x0 = embed(model, tokens, positions) if input_embed is None else input_embed
    if interp is not None:
        x0 = interp.at(0, 0, 1, x0[None])[0]
    dtype = x0.dtype
    b_O = model.blocks.attn.b_O
    b_O = jnp.zeros((L, cfg.d_model), dtype) if b_O is None else b_O.astype(dtype)
    before = jnp.cumsum(b_O, 0) - b_O  # attention biases written before layer l's attention
    bias_mlp = before if cfg.parallel_attn_mlp else before + b_O
    valid = jnp.asarray(graph.valid, dtype)
    if mix is not None:
        weight = mix.weight.astype(dtype) * valid
        fixed = jnp.einsum("ubpd,uv->vbpd", mix.corrupt.astype(dtype), valid - weight)
        per_layer = (weight[:, :L * N].reshape(-1, L, N).swapaxes(0, 1), fixed[:L * N].reshape((L, N) + x0.shape))
        cur = jnp.zeros((graph.n_src,) + x0.shape, dtype).at[0].set(x0)
    else:
        per_layer, cur = None, None
    d_layers = None if deltas is None else deltas[:L * N].reshape((L, N) + x0.shape)

    def inputs(cur, resid, mixed, rows, bias):
        if mixed is None:
            return jnp.broadcast_to(resid, (rows.stop - rows.start,) + resid.shape)
        w, f = mixed
        return jnp.einsum("ubpd,un->nbpd", cur, w[:, rows]) + f[rows] + bias

    def layer(carry, xs):
        resid, cur = carry
        p, l, d, mixed, b_attn, b_mlp = xs
        x_in = inputs(cur, resid, mixed, slice(0, NA), b_attn)
        heads = _heads(cfg, graph, p, x_in if d is None else x_in + d[:NA], positions, mask)  # [H, ...]
        if interp is not None:
            heads = interp.at(1 + 2 * l, 1 + l * S, H, heads)
        attn_out = heads.sum(0) if p.attn.b_O is None else heads.sum(0) + p.attn.b_O
        outs = heads
        if cur is not None:
            cur = jax.lax.dynamic_update_slice_in_dim(cur, heads, 1 + l * S, 0)
        if cfg.has_mlp:
            x_m = resid if cfg.parallel_attn_mlp else resid + attn_out
            x_m = inputs(cur, x_m, mixed, slice(NA, NA + 1), b_mlp)[0]
            x_m = x_m if d is None else x_m + d[NA]
            out = C.mlp(cfg, p.mlp, C.normalize(cfg, p.ln2, x_m, "ln2"))[None]
            if interp is not None:
                out = interp.at(2 + 2 * l, 1 + l * S + H, 1, out)
            if cur is not None:
                cur = jax.lax.dynamic_update_slice_in_dim(cur, out, 1 + l * S + H, 0)
            outs, attn_out = jnp.concatenate([heads, out]), attn_out + out[0]
        return (resid + attn_out, cur), outs

    xs = (model.blocks, jnp.arange(L), d_layers, per_layer, before, bias_mlp)
    (resid, cur), outs = jax.lax.scan(layer, (x0, cur), xs)
    outputs = jnp.concatenate([x0[None], outs.reshape((L * S,) + x0.shape)])
    if mix is not None:
        resid = jnp.einsum("ubpd,u->bpd", cur, weight[:, -1]) + fixed[-1] + b_O.sum(0)
    if deltas is not None:
        resid = resid + deltas[-1]
    return unembed(model, resid), outputs
