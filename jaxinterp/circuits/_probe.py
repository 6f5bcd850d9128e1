"""Node outputs and node-input gradients from the plain forward pass (what EAP needs).

Edge attribution needs, for every source node ``u``, its output ``a_u`` and, for every
destination node ``v``, ``d metric / d in_v``: the gradient at the node's *own* input (one
head's query input, not the shared residual stream). Both come out of the model's own
``components.block`` under ``lax.scan``, with a handler (:class:`_Probe`) that

* records the node outputs compactly, :class:`NodeActs`: the embedding, each layer's
  ``z`` ``[B, P, H, d_head]`` and each MLP's output. A head's output is ``z_h W_O[h]``;
  it is formed (:meth:`NodeActs.expand`) only for the difference of two runs, never in
  the forward pass, which keeps its fused ``sum_h z_h W_O[h]``;
* adds zero ``deltas`` after the q/k/v projections and at the MLP's normalised input: the
  gradient of the metric with respect to them, carried back through ``W^T`` (heads) and
  the layer norm at the residual the node read, is ``d metric / d in_v``
  (:func:`node_gradients`: one forward and one backward pass, no per-node copy of the
  residual stream);
* optionally swaps in interpolated node outputs (:class:`Interpolation`, EAP-IG-activations).
  Interpolating ``z`` interpolates the heads' outputs, which are linear in it.

Shapes: ``U`` source nodes, ``V`` destination nodes, ``B`` batch, ``P`` positions,
``L`` layers, ``H`` heads, ``K`` stacked copies of the batch.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.circuits.graph import Graph
from jaxinterp.hooks import Handler, handler_scope
from jaxinterp.models import components as C
from jaxinterp.models.partial import logits_at
from jaxinterp.models.transformer import HookedTransformer, embed, positions_and_mask


class NodeActs(eqx.Module):
    """Every source node's output in compact form: the embedding ``[B, P, d]``, the heads'
    ``z`` ``[L, B, P, H, d_head]`` (head ``h`` writes ``z_h W_O[h]``) and the MLPs' outputs
    ``[L, B, P, d]`` (``None`` for attention-only models)."""

    embed: Float[Array, "B P d"]
    z: Float[Array, "L B P H e"]
    mlp: Float[Array, "L B P d"] | None

    def __sub__(self, other: NodeActs) -> NodeActs:
        return jax.tree.map(jnp.subtract, self, other)

    def rows(self, s: slice) -> NodeActs:
        """The batch rows ``s`` of every output."""
        return NodeActs(self.embed[s], self.z[:, s], None if self.mlp is None else self.mlp[:, s])

    def expand(self, model: HookedTransformer) -> Float[Array, "U B P d"]:
        """The outputs ``[U, B, P, d]`` in the graph's source order (input, then per layer
        its heads and its MLP)."""
        heads = jax.vmap(C.head_results)(self.z, model.blocks.attn.W_O.astype(self.z.dtype))
        heads = jnp.moveaxis(heads, 3, 1)  # [layer, head, batch, pos, d_model]
        per_layer = heads if self.mlp is None else jnp.concatenate([heads, self.mlp[:, None]], 1)
        return jnp.concatenate([self.embed[None], per_layer.reshape((-1,) + self.embed.shape)])


class Interpolation(eqx.Module):
    """For each of ``K`` stacked copies of the batch (rows ``k*B:(k+1)*B``), replaces one
    group of node outputs (``group[k]`` 0: the input; ``1 + 2l``: the heads of layer ``l``,
    through their ``z``; ``2 + 2l``: its MLP) by ``alpha[k] * clean + (1 - alpha[k]) * corrupt``."""

    group: Int[Array, " K"]
    alpha: Float[Array, " K"]
    clean: NodeActs
    corrupt: NodeActs

    def mix(self, code, value: Array, clean: Array, corrupt: Array) -> Array:
        """``value`` ``[K*B, ...]``, each copy interpolated where ``code`` is its group."""
        K = self.group.shape[0]
        copies = value.reshape((K, -1) + value.shape[1:])
        bcast = (slice(None),) + (None,) * (copies.ndim - 1)
        a = self.alpha[bcast].astype(value.dtype)
        new = a * clean.astype(value.dtype)[None] + (1 - a) * corrupt.astype(value.dtype)[None]
        return jnp.where((self.group == code)[bcast], new, copies).reshape(value.shape)


_PROJECTIONS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre", "mlp.hook_pre_linear")
_PROBED = ("hook_resid_pre", "hook_resid_mid", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
           "hook_mlp_out", "mlp.hook_pre", "mlp.hook_pre_linear", "ln2.hook_normalized")
MLP_NORMALIZED = "ln2.hook_normalized"


def mlp_reads_norm(model: HookedTransformer) -> bool:
    """Whether the MLP reads the residual through its own norm (``ln2``): then the gradient
    at the norm's output (``ln2.hook_normalized``, before its weight) is the whole MLP's,
    and only the norm's Jacobian is left to apply."""
    cfg = model.cfg
    return cfg.has_mlp and cfg.normalization_type is not None and model.blocks.ln2 is not None


class _Probe(Handler):
    """Inside ``components.block``: adds the deltas, swaps in interpolated outputs, keeps
    what the node outputs and node-input gradients are built from."""

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


def zero_deltas(model: HookedTransformer, tokens, dtype) -> dict:
    """Zeros after every projection a head's input goes through, at the MLP's normalised input
    (:func:`mlp_reads_norm`; else after its input projections), and at the final residual.
    The MLP is one node: the backward pass forms its input gradient through ``W_in^T``
    anyway, and taking it there saves a second ``[B P, d_mlp] x [d_mlp, d]`` product a
    layer, the ``d_mlp``-wide gradients and projections (at GPT-2 small's shapes about 0.3
    forwards of EAP)."""
    cfg = model.cfg
    B, P = tokens.shape
    L, H, G, e = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    d = {"attn.hook_q": (L, B, P, H, e), "attn.hook_k": (L, B, P, G, e), "attn.hook_v": (L, B, P, G, e)}
    if mlp_reads_norm(model):
        d[MLP_NORMALIZED] = (L, B, P, cfg.d_model)
    elif cfg.has_mlp:
        d["mlp.hook_pre"] = (L, B, P, cfg.d_mlp)
        if cfg.gated_mlp:
            d["mlp.hook_pre_linear"] = (L, B, P, cfg.d_mlp)
    d["final"] = (B, P, cfg.d_model)
    return {k: jnp.zeros(v, dtype) for k, v in d.items()}


def probe_forward(model: HookedTransformer, tokens: Int[Array, "B P"], *, deltas: dict | None = None,
                  input_embed: Float[Array, "B P d"] | None = None, interp: Interpolation | None = None,
                  with_projections: bool = False, copies: int = 1):
    """The plain forward pass with every node's output recorded:
    ``(logits, NodeActs, resid_pre [L, B, P, d], resid_mid [L, B, P, d])``, and with
    ``with_projections`` the q/k/v and MLP input projections ``{hook name: [L, B, P, ...]}``.
    With ``copies = K`` the rows are ``K`` stacked copies of a batch and ``logits`` is their
    list (:func:`copy_logits`)."""
    cfg = model.cfg
    positions, mask = positions_and_mask(tokens)
    x0 = embed(model, tokens, positions) if input_embed is None else input_embed
    if interp is not None:
        x0 = interp.mix(0, x0, interp.clean.embed, interp.corrupt.embed)
    deltas = deltas or {}
    per_layer = {k: v for k, v in deltas.items() if k != "final"}
    fixed = None if interp is None else (interp.clean.z, interp.corrupt.z, interp.clean.mlp, interp.corrupt.mlp)

    def layer(h, xs):
        p, spec, l, d, fix = xs
        swap = {}
        if interp is not None:
            z_clean, z_corrupt, m_clean, m_corrupt = fix
            swap["attn.hook_z"] = lambda z: interp.mix(1 + 2 * l, z, z_clean, z_corrupt)
            if cfg.has_mlp:
                swap["hook_mlp_out"] = lambda o: interp.mix(2 + 2 * l, o, m_clean, m_corrupt)
        probe = _Probe(d, swap)
        with handler_scope(probe):
            out, _ = C.block(cfg, p, h, positions, mask, spec=spec)
        seen = probe.seen
        x_pre = seen["hook_resid_pre"]
        proj = {k: seen[k] for k in _PROJECTIONS if k in d}  # the ones whose gradients are taken
        return out, (seen["attn.hook_z"], seen.get("hook_mlp_out"), x_pre, seen.get("hook_resid_mid", x_pre), proj)

    xs = (model.blocks, C.layer_specs(cfg), jnp.arange(cfg.n_layers), per_layer, fixed)
    # differentiated, a layer keeps its matrix products and recomputes the elementwise rest
    # (GELU, softmax, norms): the same FLOPs, fewer saved [L, B, P, d_mlp] arrays, and XLA's CPU
    # pays a page fault per fresh 4 KiB of them each call (IOI model: EAP 59 -> 43 ms)
    layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_saveable)
    resid, (z, mlp_out, x_pre, x_mid, proj) = jax.lax.scan(layer, x0, xs)
    if "final" in deltas:
        resid = resid + deltas["final"]
    logits = copy_logits(model, resid, tokens.shape[1], copies)
    acts = NodeActs(x0, z, mlp_out if cfg.has_mlp else None)
    return (logits, acts, x_pre, x_mid, proj) if with_projections else (logits, acts, x_pre, x_mid)


def _norm_vjp(cfg, p, x: Float[Array, "B P d"], g: Float[Array, "n B P d"]) -> Float[Array, "n B P d"]:
    """``J^T g`` for the Jacobian ``J`` of ``components.normalize`` at ``x``, for ``n``
    cotangents at once, in closed form: with ``x_c`` (centred for LayerNorm), ``s =
    sqrt(mean(x_c^2) + eps)``, ``xh = x_c / s`` and ``g' = w g``,

        J^T g = centre( g' - xh mean(xh g') ) / s

    (``jax.vjp`` vmapped over the ``n`` cotangents cost XLA's CPU about ten times more)."""
    if cfg.normalization_type is None or p is None:
        return g
    return norm_back(cfg, x, g if p.w is None else g.astype(jnp.float32) * p.w.astype(jnp.float32))


def normalised(cfg, x: Float[Array, "... d"]) -> tuple[Array, Array]:
    """``(xh, s)`` of the norm at ``x`` (float32): ``s = sqrt(mean(x_c^2) + eps)``, ``xh = x_c / s``
    (``x_c``: ``x`` centred for LayerNorm, ``x`` for RMSNorm)."""
    x = x.astype(jnp.float32)
    if cfg.normalization_type == "LN":
        x = x - x.mean(-1, keepdims=True)
    s = jnp.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps)
    return x / s, s


def norm_back(cfg, x: Float[Array, "... d"], g: Float[Array, "... d"]) -> Float[Array, "... d"]:
    """The gradient at the norm's input from ``g``, the gradient at its normalised value
    ``xh`` (before the weight): ``centre(g - xh mean(xh g)) / s``."""
    xh, s = normalised(cfg, x)
    g = g.astype(jnp.float32)
    # centring commutes with the rest since mean(xh) = 0 for LayerNorm: one pass for the
    # two means, one for the result (fewer passes over [n, B, P, d] than the textbook order)
    centre = g.mean(-1, keepdims=True) if cfg.normalization_type == "LN" else 0.0
    return (g - centre - xh * (xh * g).mean(-1, keepdims=True)) / s


def _node_input_grads(model, graph: Graph, grads: dict, resid_pre, resid_mid) -> Float[Array, "V B P d"]:
    """``d metric / d in_v`` from the gradients after each projection: back through the
    projection (``W^T``), then through the layer norm at the residual it read (closed form,
    :func:`_norm_vjp`)."""
    cfg = model.cfg

    def back(g, W):  # g [B, P, n, e], W [n, d, e] -> [n, B, P, d]; node-major is faster on XLA's CPU
        return jnp.einsum("nbpe,nde->nbpd", jnp.moveaxis(g, 2, 0), W)

    def layer(p, g, x_pre, x_mid):
        a = p.attn
        aq, ak, av = back(g["attn.hook_q"], a.W_Q), back(g["attn.hook_k"], a.W_K), back(g["attn.hook_v"], a.W_V)
        attn_in = jnp.concatenate([aq, ak, av]) if graph.qkv else (aq + ak + av)
        out = [_norm_vjp(cfg, p.ln1, x_pre, attn_in).astype(x_pre.dtype)]
        if MLP_NORMALIZED in g:
            out.append(norm_back(cfg, x_mid, g[MLP_NORMALIZED])[None].astype(x_mid.dtype))
        elif cfg.has_mlp:  # no norm before the MLP: back through its input projections
            m = p.mlp
            up = m.W_gate if m.W_gate is not None else m.W_in  # hook_pre reads x @ W_gate when gated
            a_m = jnp.einsum("bpm,dm->bpd", g["mlp.hook_pre"], up)
            if m.W_gate is not None:
                a_m = a_m + jnp.einsum("bpm,dm->bpd", g["mlp.hook_pre_linear"], m.W_in)
            out.append(a_m[None].astype(x_mid.dtype))
        return jnp.concatenate(out)

    per_layer = {k: v for k, v in grads.items() if k != "final"}
    g_layers = jax.vmap(layer)(model.blocks, per_layer, resid_pre, resid_mid)  # [L, N, B, P, d]
    return jnp.concatenate([g_layers.reshape((-1,) + g_layers.shape[2:]), grads["final"][None]])


def copy_logits(model, resid: Float[Array, "K*B P d"], n_pos: int, copies: int):
    """The logits of the final residual (positions nobody reads compile away, see
    :func:`~jaxinterp.models.partial.logits_at`); with ``copies = K > 1`` a list, one
    ``[B, P, v]`` per stacked copy of the batch. The rows are split before the unembedding,
    with one ``lax.split``: a metric on row slices of the whole ``[K B, P, v]`` would transpose
    to a zero-padded full-size cotangent per copy (at GPT-2 small's shapes, 16 x 16 tokens and
    K = 5, five 257 MB pads, about 2 forwards), and a ``[K, B, ...]`` reshape hides which
    positions the metric reads (every position unembedded, forward and backward)."""
    if copies == 1:
        return logits_at(model, resid, None, n_pos)
    B = resid.shape[0] // copies
    return [logits_at(model, r, None, n_pos) for r in jax.lax.split(resid, [B] * copies)]


def copies_mean(metric, logits) -> Float[Array, ""]:
    """The metric's batch mean, averaged over the copies when ``logits`` is
    :func:`copy_logits`' list."""
    from jaxinterp.interp.metrics import batch_mean

    if isinstance(logits, list):
        return sum(batch_mean(metric, lg) for lg in logits) / len(logits)
    return batch_mean(metric, logits)


def probe_grads(model: HookedTransformer, tokens: Int[Array, "B P"], metric, *,
                input_embed: Float[Array, "K*B P d"] | None = None, interp: Interpolation | None = None,
                copies: int = 1) -> tuple[Array, NodeActs, dict, Array, Array, dict]:
    """One plain forward and backward pass (:func:`probe_forward`): ``(metric, node
    outputs, gradients after every projection and at the final residual (:func:`zero_deltas`),
    resid_pre, resid_mid, the projections themselves)``, rows ``[K*B]`` for ``copies = K``.

    ``copies = K`` runs ``K`` copies of the batch stacked along it (each with its own
    ``input_embed`` rows or ``interp`` group and alpha): the metric is the mean over the
    copies, from one pass with ``K`` times the batch (on a CPU far cheaper than ``K``
    vmapped passes)."""
    folded = jnp.tile(tokens, (copies, 1)) if copies > 1 else tokens

    def run(deltas):
        logits, acts, x_pre, x_mid, proj = probe_forward(model, folded, deltas=deltas, input_embed=input_embed,
                                                         interp=interp, with_projections=True, copies=copies)
        return copies_mean(metric, logits), (acts, x_pre, x_mid, proj)

    zeros = zero_deltas(model, folded, model.W_E.dtype)
    (value, (acts, x_pre, x_mid, proj)), grads = jax.value_and_grad(run, has_aux=True)(zeros)
    return value, acts, grads, x_pre, x_mid, proj


def node_gradients(model: HookedTransformer, graph: Graph, tokens: Int[Array, "B P"], metric, *,
                   input_embed: Float[Array, "K*B P d"] | None = None, interp: Interpolation | None = None,
                   copies: int = 1) -> tuple[Array, NodeActs, Float[Array, "V B P d"]]:
    """``(metric, node outputs, d metric / d in_v [V, B, P, d])`` from one plain forward
    and backward pass (:func:`probe_grads`; with ``copies``, the means over the copies).

    Equal to differentiating :func:`~jaxinterp.circuits._graph_forward.graph_forward` with
    respect to its ``deltas``, without giving each node its own copy of the residual
    stream: the gradients are taken after the q/k/v (and MLP input) projections, where
    every head already has its own values, and carried back through ``W^T`` and the layer
    norm afterwards. (Edge attribution itself folds that last step into its contraction,
    :mod:`._fold`.)
    """
    value, acts, grads, x_pre, x_mid, _ = probe_grads(model, tokens, metric, input_embed=input_embed,
                                                   interp=interp, copies=copies)
    g = _node_input_grads(model, graph, grads, x_pre, x_mid)  # [V, K*B, P, d]
    return value, acts, g.reshape((g.shape[0], copies, -1) + g.shape[2:]).sum(1)
