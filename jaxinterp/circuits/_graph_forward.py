"""Exact edge patching: a forward pass that builds every node input edge by edge.

Circuit discovery's ground truth runs the model as its graph (:mod:`.graph`): each node
reads its own input,

    in_v = bias_v + sum_u valid[u, v] (w[u, v] a_u + (1 - w[u, v]) c_u)  (+ delta_v)

with ``a_u`` this run's node outputs and ``c_u`` fixed (corrupted) ones, so any set of
edges can be patched at once. Attention reuses ``components.attention`` (the per-node q,
k, v replace its ``hook_q/k/v`` values); the MLP, norms and unembedding are
``components``' too. It is the slow reference: every head gets its own copy of the
residual stream. Differentiating it with respect to ``deltas`` gives the node-input
gradients that :mod:`._probe` gets from the plain forward pass (tested).

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


def _heads(cfg, graph: Graph, p: C.BlockParams, spec: C.LayerSpec, x_in: Float[Array, "n B P d"], positions, mask):
    """Per-head outputs ``[H, B, P, d]`` of one layer whose attention inputs are ``x_in``."""
    a, H, G = p.attn, cfg.n_heads, cfg.n_kv_heads
    x = C.normalize(cfg, p.ln1, x_in, "ln1")  # [n, B, P, d], one norm per input
    xq, xk, xv = (x[:H], x[H:H + G], x[H + G:]) if graph.qkv else (x, x, x)

    def project(x, W, b):  # node-major layout: XLA's CPU batched matmul is far faster this way
        y = jnp.moveaxis(jnp.einsum("nbpd,nde->nbpe", x, W), 0, 2)
        return y if b is None else y + b

    split = _SplitInputs(project(xq, a.W_Q, a.b_Q), project(xk, a.W_K, a.b_K), project(xv, a.W_V, a.b_V))
    placeholder = jnp.zeros(x_in.shape[1:], x_in.dtype)  # its own q/k/v are replaced (dead code)
    with handler_scope(split):
        z, _ = C.attention(cfg, a, placeholder, positions, mask, spec=spec)
        C.attn_output(cfg, p, z)  # reaches attn.hook_result: each head's z_h W_O[h]
    return jnp.moveaxis(split.result, 2, 0)


def graph_forward(model: HookedTransformer, graph: Graph, tokens: Int[Array, "B P"], *,
                  input_embed: Float[Array, "B P d"] | None = None, mix: EdgeMix | None = None,
                  deltas: Float[Array, "V B P d"] | None = None) -> tuple[Float[Array, "B P v"], Float[Array, "U B P d"]]:
    """Logits and every source node's output ``[U, B, P, d]`` (see the module docstring).

    ``input_embed`` replaces the ``input`` node's output (the embeddings).
    """
    cfg = model.cfg
    L, H, S, N, NA = cfg.n_layers, cfg.n_heads, graph.per_layer_src, graph.per_layer_dst, graph.n_attn_in
    positions, mask = positions_and_mask(tokens)
    x0 = embed(model, tokens, positions) if input_embed is None else input_embed
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
        p, spec, l, d, mixed, b_attn, b_mlp = xs
        x_in = inputs(cur, resid, mixed, slice(0, NA), b_attn)
        heads = _heads(cfg, graph, p, spec, x_in if d is None else x_in + d[:NA], positions, mask)  # [H, ...]
        attn_out = heads.sum(0) if p.attn.b_O is None else heads.sum(0) + p.attn.b_O
        outs = heads
        if cur is not None:
            cur = jax.lax.dynamic_update_slice_in_dim(cur, heads, 1 + l * S, 0)
        if cfg.has_mlp:
            x_m = resid if cfg.parallel_attn_mlp else resid + attn_out
            x_m = inputs(cur, x_m, mixed, slice(NA, NA + 1), b_mlp)[0]
            x_m = x_m if d is None else x_m + d[NA]
            out = C.mlp(cfg, p.mlp, C.normalize(cfg, p.ln2, x_m, "ln2"))[None]
            if cur is not None:
                cur = jax.lax.dynamic_update_slice_in_dim(cur, out, 1 + l * S + H, 0)
            outs, attn_out = jnp.concatenate([heads, out]), attn_out + out[0]
        return (resid + attn_out, cur), outs

    xs = (model.blocks, C.layer_specs(cfg), jnp.arange(L), d_layers, per_layer, before, bias_mlp)
    (resid, cur), outs = jax.lax.scan(layer, (x0, cur), xs)
    outputs = jnp.concatenate([x0[None], outs.reshape((L * S,) + x0.shape)])
    if mix is not None:
        resid = jnp.einsum("ubpd,u->bpd", cur, weight[:, -1]) + fixed[-1] + b_O.sum(0)
    if deltas is not None:
        resid = resid + deltas[-1]
    return unembed(model, resid), outputs
