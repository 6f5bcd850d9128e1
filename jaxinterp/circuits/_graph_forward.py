"""Forward passes over the node graph: node outputs, node-input gradients, edge patching.

Circuit discovery needs what a plain forward pass does not hand out: the output of every
node (each head's ``z W_O``, each MLP's output), the gradient of the metric at each
node's *own* input (one head's query input, not the shared residual stream), and runs in
which each node reads some edges from another run. All of it is here, in one module,
so it can move onto the core's partial forward later:

* :func:`probe_forward` runs ``components.block`` under ``lax.scan`` with a handler that
  records the node outputs (``attn.hook_result``, ``hook_mlp_out``), optionally swaps in
  interpolated ones (EAP-IG-activations) and adds zero deltas after the q/k/v and MLP
  input projections;
* :func:`node_gradients` differentiates it: the gradients after the projections, carried
  back through ``W^T`` and the layer norm at the residual the node read, are
  ``d metric / d in_v`` for every destination node (one forward and one backward pass);
* :func:`graph_forward` builds every node input edge by edge,

      in_v = bias_v + sum_u valid[u, v] (w[u, v] a_u + (1 - w[u, v]) c_u)  (+ delta_v)

  with ``a_u`` this run's outputs and ``c_u`` fixed (corrupted) ones: exact edge patching.
  Attention reuses ``components.attention`` (the per-node q, k, v replace its
  ``hook_q/k/v`` values); the MLP, norms and unembedding are ``components``' too. It is the
  slow reference: its per-node projections are batched matmuls. Differentiating it with
  respect to ``deltas`` gives the same gradients as :func:`node_gradients` (tested).

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
    """For each of ``K`` stacked copies of the batch (rows ``k*B:(k+1)*B``), replaces one
    group of node outputs (``group[k]`` 0: the input; ``1 + 2l``: the heads of layer ``l``;
    ``2 + 2l``: its MLP) by ``alpha[k] * clean + (1 - alpha[k]) * corrupt``."""

    group: Int[Array, " K"]
    alpha: Float[Array, " K"]
    clean: Float[Array, "U B P d"]
    corrupt: Float[Array, "U B P d"]

    def at(self, code, start: int, size: int, value: Array) -> Array:
        """``value`` (rows ``start:start+size`` of the outputs, ``[size, K*B, ...]``), each copy
        interpolated where ``code`` is its group."""
        def rows(x):
            return jax.lax.dynamic_slice_in_dim(x, start, size, 0)[:, None]

        K = self.group.shape[0]
        copies = value.reshape((size, K, -1) + value.shape[2:])
        bcast = (None, slice(None)) + (None,) * (copies.ndim - 2)
        a = self.alpha[bcast].astype(value.dtype)
        new = a * rows(self.clean).astype(value.dtype) + (1 - a) * rows(self.corrupt).astype(value.dtype)
        return jnp.where((self.group == code)[bcast], new, copies).reshape(value.shape)


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
        p, spec, l, d, mixed, b_attn, b_mlp = xs
        x_in = inputs(cur, resid, mixed, slice(0, NA), b_attn)
        heads = _heads(cfg, graph, p, spec, x_in if d is None else x_in + d[:NA], positions, mask)  # [H, ...]
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

    xs = (model.blocks, C.layer_specs(cfg), jnp.arange(L), d_layers, per_layer, before, bias_mlp)
    (resid, cur), outs = jax.lax.scan(layer, (x0, cur), xs)
    outputs = jnp.concatenate([x0[None], outs.reshape((L * S,) + x0.shape)])
    if mix is not None:
        resid = jnp.einsum("ubpd,u->bpd", cur, weight[:, -1]) + fixed[-1] + b_O.sum(0)
    if deltas is not None:
        resid = resid + deltas[-1]
    return unembed(model, resid), outputs


# Gradients at every node input from the plain forward pass --------------------------------

_PROBED = ("hook_resid_pre", "hook_resid_mid", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result",
           "hook_mlp_out", "mlp.hook_pre", "mlp.hook_pre_linear")
_DELTAS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre", "mlp.hook_pre_linear")


class _Probe(Handler):
    """Inside ``components.block``: adds zero deltas after the q/k/v and MLP input
    projections (their gradients are the metric's), swaps in interpolated node outputs,
    and keeps what the node-input gradients are rebuilt from."""

    def __init__(self, deltas: dict, swap: dict):
        self.deltas, self.swap, self.seen = deltas, swap, {}

    def wants(self, name: str) -> bool:
        return name in _PROBED

    def handle(self, site, x, frames_above):
        name = site.name()
        if name in self.swap:
            x = self.swap[name](x)
        if name in self.deltas:
            x = x + self.deltas[name].astype(x.dtype)
        self.seen[name] = x
        return x


def _zero_deltas(cfg, tokens, dtype) -> dict:
    B, P = tokens.shape
    L, H, G, e = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    d = {"attn.hook_q": (L, B, P, H, e), "attn.hook_k": (L, B, P, G, e), "attn.hook_v": (L, B, P, G, e)}
    if cfg.has_mlp:
        d["mlp.hook_pre"] = (L, B, P, cfg.d_mlp)
        if cfg.gated_mlp:
            d["mlp.hook_pre_linear"] = (L, B, P, cfg.d_mlp)
    d["final"] = (B, P, cfg.d_model)
    return {k: jnp.zeros(v, dtype) for k, v in d.items()}


def _node_input_grads(model, graph: Graph, grads: dict, resid_pre, resid_mid) -> Float[Array, "V B P d"]:
    """``d metric / d in_v`` from the gradients after each projection: back through the
    projection (``W^T``), then through the layer norm at the residual it read."""
    cfg = model.cfg

    def back(g, W):  # g [B, P, n, e], W [n, d, e] -> [n, B, P, d]
        return jnp.einsum("nbpe,nde->nbpd", jnp.moveaxis(g, 2, 0), W)

    def layer(p, g, x_pre, x_mid):
        a = p.attn
        aq, ak, av = back(g["attn.hook_q"], a.W_Q), back(g["attn.hook_k"], a.W_K), back(g["attn.hook_v"], a.W_V)
        _, ln1 = jax.vjp(lambda x: C.normalize(cfg, p.ln1, x, "ln1"), x_pre)
        attn_in = jnp.concatenate([aq, ak, av]) if graph.qkv else aq + ak + av
        out = [jax.vmap(lambda c: ln1(c)[0])(attn_in)]
        if cfg.has_mlp:
            m = p.mlp
            up = m.W_gate if m.W_gate is not None else m.W_in  # hook_pre reads x @ W_gate when gated
            a_m = jnp.einsum("bpm,dm->bpd", g["mlp.hook_pre"], up)
            if m.W_gate is not None:
                a_m = a_m + jnp.einsum("bpm,dm->bpd", g["mlp.hook_pre_linear"], m.W_in)
            _, ln2 = jax.vjp(lambda x: C.normalize(cfg, p.ln2, x, "ln2"), x_mid)
            out.append(ln2(a_m)[0][None])
        return jnp.concatenate(out)

    per_layer = {k: v for k, v in grads.items() if k != "final"}
    g_layers = jax.vmap(layer)(model.blocks, per_layer, resid_pre, resid_mid)  # [L, N, B, P, d]
    return jnp.concatenate([g_layers.reshape((-1,) + g_layers.shape[2:]), grads["final"][None]])


def probe_forward(model: HookedTransformer, graph: Graph, tokens: Int[Array, "B P"], *,
                  deltas: dict | None = None, input_embed: Float[Array, "B P d"] | None = None,
                  interp: Interpolation | None = None):
    """The plain forward pass (``components.block`` under ``lax.scan``) with every node's
    output recorded: ``(logits, outputs [U, B, P, d], resid_pre [L, ...], resid_mid [L, ...])``.
    ``deltas`` (see :func:`_zero_deltas`) are added after the q/k/v and MLP input projections."""
    cfg = model.cfg
    H, S = cfg.n_heads, graph.per_layer_src
    positions, mask = positions_and_mask(tokens)
    x0 = embed(model, tokens, positions) if input_embed is None else input_embed
    if interp is not None:
        x0 = interp.at(0, 0, 1, x0[None])[0]
    deltas = deltas or {}

    def layer(h, xs):
        p, spec, l, d = xs
        swap = {}
        if interp is not None:
            swap["attn.hook_result"] = lambda r: jnp.moveaxis(
                interp.at(1 + 2 * l, 1 + l * S, H, jnp.moveaxis(r, 2, 0)), 0, 2)
            swap["hook_mlp_out"] = lambda o: interp.at(2 + 2 * l, 1 + l * S + H, 1, o[None])[0]
        probe = _Probe(d, swap)
        with handler_scope(probe):
            out, _ = C.block(cfg, p, h, positions, mask, spec=spec)
        seen = probe.seen
        outs = jnp.moveaxis(seen["attn.hook_result"], 2, 0)
        if cfg.has_mlp:
            outs = jnp.concatenate([outs, seen["hook_mlp_out"][None]])
        x_pre = seen["hook_resid_pre"]
        return out, (outs, x_pre, seen.get("hook_resid_mid", x_pre))

    per_layer = {k: v for k, v in deltas.items() if k != "final"}
    resid, (outs, x_pre, x_mid) = jax.lax.scan(layer, x0, (model.blocks, C.layer_specs(cfg), jnp.arange(cfg.n_layers), per_layer))
    if "final" in deltas:
        resid = resid + deltas["final"]
    outputs = jnp.concatenate([x0[None], outs.reshape((-1,) + x0.shape)])
    return unembed(model, resid), outputs, x_pre, x_mid


def node_gradients(model: HookedTransformer, graph: Graph, tokens: Int[Array, "B P"], metric, *,
                   input_embed: Float[Array, "K*B P d"] | None = None, interp: Interpolation | None = None,
                   copies: int = 1):
    """``(metric, node outputs [U, K*B, P, d], d metric / d in_v [V, B, P, d])`` from one plain
    forward and backward pass (:func:`probe_forward`).

    Equal to differentiating :func:`graph_forward` with respect to ``deltas``, without
    giving each node its own copy of the residual stream: the gradients are taken after
    the q/k/v (and MLP input) projections, where every head already has its own values,
    and carried back through ``W^T`` and the layer norm afterwards.

    ``copies = K`` runs ``K`` copies of the batch stacked along it (each with its own
    ``input_embed`` rows or ``interp`` group and alpha): the metric and the gradients are
    the means over the copies, from one pass with ``K`` times the batch (on a CPU far
    cheaper than ``K`` vmapped passes).
    """
    from jaxinterp.interp.metrics import batch_mean

    B = tokens.shape[0]
    folded = jnp.tile(tokens, (copies, 1)) if copies > 1 else tokens

    def run(deltas):
        logits, outputs, x_pre, x_mid = probe_forward(model, graph, folded, deltas=deltas,
                                                      input_embed=input_embed, interp=interp)
        per_copy = jax.vmap(lambda lg: batch_mean(metric, lg))(logits.reshape((copies, B) + logits.shape[1:]))
        return per_copy.mean(), (outputs, x_pre, x_mid)

    zeros = _zero_deltas(model.cfg, folded, model.W_E.dtype)
    (value, (outputs, x_pre, x_mid)), grads = jax.value_and_grad(run, has_aux=True)(zeros)
    g = _node_input_grads(model, graph, grads, x_pre, x_mid)  # [V, K*B, P, d], each copy's / K
    return value, outputs, g.reshape((g.shape[0], copies, B) + g.shape[2:]).sum(1)
