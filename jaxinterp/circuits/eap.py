"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG).

Patching one edge ``u -> v`` of the graph (:mod:`jaxinterp.circuits.graph`) means that
``v`` reads the corrupted run's output of ``u`` instead of the clean one. To first order
the metric changes by

    score(u -> v) = (a_u(corrupted) - a_u(clean)) . d metric / d in_v          (EAP)

(Syed, Rager and Conmy 2023): one corrupted forward pass for every ``a_u``, one clean
forward and backward pass for every ``d metric / d in_v``, then one contraction gives
every edge. EAP-IG (Hanna, Pezzelle and Belinkov 2024) replaces the clean gradient by its
average along a straight path from corrupted to clean, which tracks exact patching far
better where the model is not linear:

* ``"EAP-IG-inputs"``: the embeddings go from corrupted to clean, gradients at
  ``alpha = k / m`` for ``k = 0 .. m-1`` (as in their implementation);
* ``"EAP-IG-activations"``: for each group of sources in turn (the input, one layer's
  heads, one MLP) its outputs go from corrupted to clean (``alpha = k / m``, ``k = 1 .. m``)
  while the rest of the clean run is recomputed; gradients averaged over all of them.

A score estimates ``metric(edge patched) - metric(clean)``: large negative = the edge
carries what the clean prompt needs. Each method is one compiled program: EAP runs two
forward passes and one backward pass; EAP-IG-inputs one forward pass over the clean and
corrupted batches together and ``m`` forward and backward passes (batched);
EAP-IG-activations ``(2 n_layers + 1) m`` of them. The passes are the model's own
(:mod:`._probe`): heads' outputs are kept as ``z`` and expanded to ``z_h W_O[h]`` only for
the clean-corrupted difference, and the edges into one layer's destinations come from one
matrix product ``[U, B P d] x [B P d, n]`` into which the layer norms' Jacobians are folded
(:mod:`._fold`: a head's input gradient is one product ``(w W)^T (g / s)`` summed over
EAP-IG's copies, plus two rank-one corrections, and an MLP's comes from the backward pass at
its norm's output, so no pass over ``[V, B, P, d]``; a scan over
the layers keeps the largest array one layer's). :func:`exact_edge_scores` patches every edge for real, to
check the estimates.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.circuits._fold import folded_scores
from jaxinterp.circuits._graph_forward import EdgeMix, graph_forward
from jaxinterp.circuits._probe import Interpolation, probe_forward, probe_grads
from jaxinterp.circuits.graph import Graph
from jaxinterp.errors import ConfigError, ShapeError, unknown_name_message
from jaxinterp.interp.metrics import Metric, batch_mean, check_metric
from jaxinterp.models.transformer import HookedTransformer, check_tokens
from jaxinterp.named import NamedArray

METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations")


def _divisor_at_most(n: int, chunk: int) -> int:
    return max(k for k in range(1, min(n, max(chunk, 1)) + 1) if n % k == 0)


def _mean_over(fn: Callable[[Array], Array], xs: Array, chunk: int) -> Array:
    """``mean_i fn(xs[i:i+k])`` over chunks of ``k <= chunk`` rows (``fn`` takes a chunk and
    returns its mean), in one program."""
    k = _divisor_at_most(xs.shape[0], chunk)
    if k == xs.shape[0]:  # one chunk: no loop (XLA's CPU ran the pass 1.5-3x slower inside one)
        return fn(xs)
    return jax.lax.map(fn, xs.reshape((-1, k) + xs.shape[1:])).mean(0)


@eqx.filter_jit
def _attribute(model, graph: Graph, clean, corrupted, metric, method: str, steps: int, chunk: int):
    B = clean.shape[0]

    def scores(diff, k, **kw):  # edge scores from one pass over k stacked copies (the metric is their mean)
        _, _, grads, x_pre, x_mid, proj = probe_grads(model, clean, metric, copies=k, **kw)
        return folded_scores(model, graph, grads, x_pre, x_mid, proj, k, diff)

    if method == "EAP":  # 1 forward (corrupted), 1 forward + backward (clean)
        corrupt_logits, corrupt_acts, _, _ = probe_forward(model, corrupted)
        m_clean, clean_acts, grads, x_pre, x_mid, proj = probe_grads(model, clean, metric)
        out = folded_scores(model, graph, grads, x_pre, x_mid, proj, 1, (corrupt_acts - clean_acts).expand(model))
        return out, m_clean, batch_mean(metric, corrupt_logits)
    # clean and corrupted in one forward pass over both batches
    (clean_logits, corrupt_logits), both, _, _ = probe_forward(model, jnp.concatenate([clean, corrupted]), copies=2)
    clean_acts, corrupt_acts = both.rows(slice(None, B)), both.rows(slice(B, None))
    m_clean = batch_mean(metric, clean_logits)
    diff = (corrupt_acts - clean_acts).expand(model)
    # EAP-IG: each chunk of k steps is one pass over k stacked copies of the batch
    if method == "EAP-IG-inputs":
        x_clean, x_corrupt = clean_acts.embed, corrupt_acts.embed

        def at(alphas):
            a = alphas[:, None, None, None].astype(x_clean.dtype)
            embed = (x_corrupt[None] + a * (x_clean - x_corrupt)[None]).reshape((-1,) + x_clean.shape[1:])
            return scores(diff, alphas.shape[0], input_embed=embed)

        out = _mean_over(at, jnp.arange(steps, dtype=x_clean.dtype) / steps, chunk)
    else:  # EAP-IG-activations
        n_groups = 1 + model.cfg.n_layers * (2 if model.cfg.has_mlp else 1)
        index = jnp.arange(n_groups)
        codes = index if model.cfg.has_mlp else 2 * index - (index > 0)  # no MLP groups: 0, 1, 3, 5...
        group, k = jnp.meshgrid(codes, jnp.arange(1, steps + 1), indexing="ij")

        def at(gk):
            interp = Interpolation(gk[:, 0], gk[:, 1].astype(clean_acts.embed.dtype) / steps, clean_acts,
                                   corrupt_acts)
            return scores(diff, gk.shape[0], interp=interp)

        out = _mean_over(at, jnp.stack([group.ravel(), k.ravel()], 1), chunk)
    return out, m_clean, batch_mean(metric, corrupt_logits)


def check_pair(model: HookedTransformer, clean: ArrayLike, corrupted: ArrayLike) -> tuple[Array, Array]:
    """Clean and corrupted tokens as int32 arrays of one shape, checked against the model."""
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"expected a HookedTransformer, got {type(model).__name__}")
    clean, corrupted = jnp.asarray(clean), jnp.asarray(corrupted)
    check_tokens(model.cfg, clean)
    check_tokens(model.cfg, corrupted)
    if clean.shape != corrupted.shape:
        raise ShapeError(f"clean {clean.shape} and corrupted {corrupted.shape} prompts must have one shape "
                         "(edges are patched position by position)")
    return clean.astype(jnp.int32), corrupted.astype(jnp.int32)


def edge_scores_array(values: Array, graph: Graph, attrs: dict) -> NamedArray:
    """Edge scores ``[src, dst]`` labelled with the node names; ``attrs["graph"]`` is the graph."""
    return NamedArray(values, ("src", "dst"), {"src": list(graph.src_names), "dst": list(graph.dst_names)},
                      {"graph": graph, **attrs})


def edge_attribution(model: HookedTransformer, clean_tokens: Int[ArrayLike, "batch pos"],
                     corrupted_tokens: Int[ArrayLike, "batch pos"], metric: Metric, *,
                     method: str = "EAP", steps: int = 5, qkv: bool = True, chunk: int = 8) -> NamedArray:
    """Scores every edge of the model's graph (one compiled program per method and shape).

    Args:
      model: a :class:`~jaxinterp.models.HookedTransformer`.
      clean_tokens, corrupted_tokens: prompts ``[batch, pos]`` of one shape.
      metric: ``logits -> [batch]`` (e.g. ``ji.logit_diff(...)``); scores are for its batch mean.
      method: ``"EAP"``, ``"EAP-IG-inputs"`` or ``"EAP-IG-activations"``.
      steps: ``m``, the integration steps of the EAP-IG methods.
      qkv: separate query, key and value inputs per head (else one input per head).
      chunk: EAP-IG passes run up to this many at a time (stacked along the batch): memory
        against speed.

    Returns:
      :class:`NamedArray` ``[src, dst]`` (node names as labels; zero where there is no edge),
      estimating ``metric(edge patched) - metric(clean)``; ``attrs``: ``graph``, ``method``,
      ``steps``, ``clean`` and ``corrupted`` metric values.
    """
    if method not in METHODS:
        raise ConfigError(unknown_name_message("edge attribution method", str(method), METHODS))
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive int, got {steps!r}")
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    check_metric(metric)
    graph = Graph.from_config(model.cfg, qkv)
    scores, m_clean, m_corrupt = _attribute(model, graph, clean, corrupted, metric, method, steps, chunk)
    return edge_scores_array(scores, graph, {"method": method, "steps": steps if method != "EAP" else 0,
                                             "clean": float(m_clean), "corrupted": float(m_corrupt)})


@eqx.filter_jit
def _patched_metrics(model, graph: Graph, clean, corrupted, metric, keep: Float[Array, "chunk U V"]):
    corrupt_out = probe_forward(model, corrupted)[1].expand(model)

    def one(w):
        return batch_mean(metric, graph_forward(model, graph, clean, mix=EdgeMix(w, corrupt_out))[0])

    return jax.vmap(one)(keep)


def patch_edges(model: HookedTransformer, clean_tokens: Int[ArrayLike, "batch pos"],
                corrupted_tokens: Int[ArrayLike, "batch pos"], metric: Metric,
                keep: ArrayLike, graph: Graph, *, chunk: int = 16) -> Float[Array, " n"]:
    """Exact edge patching: the metric (batch mean) of the clean run in which every edge
    outside ``keep`` reads the corrupted run. ``keep``: bool ``[n_src, n_dst]`` or a stack
    ``[n, n_src, n_dst]``, run ``chunk`` at a time by one compiled program whatever ``n``
    (so exact scores, faithfulness and curves of any length share it)."""
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    check_metric(metric)
    keep = np.asarray(keep)
    if keep.shape[-2:] != graph.valid.shape:
        raise ShapeError(f"keep must be [..., {graph.n_src}, {graph.n_dst}] (sources, destinations), "
                         f"got {keep.shape}")
    stack = keep.reshape((-1,) + graph.valid.shape).astype(np.float32)
    n = len(stack)
    padded = np.concatenate([stack, np.zeros((-n % chunk,) + stack.shape[1:], np.float32)])
    out = [_patched_metrics(model, graph, clean, corrupted, metric, jnp.asarray(padded[i:i + chunk]))
           for i in range(0, len(padded), chunk)]
    return jnp.concatenate(out)[:n].reshape(keep.shape[:-2])


def exact_edge_scores(model: HookedTransformer, clean_tokens: Int[ArrayLike, "batch pos"],
                      corrupted_tokens: Int[ArrayLike, "batch pos"], metric: Metric, *,
                      qkv: bool = True, chunk: int = 16) -> NamedArray:
    """``metric(edge patched) - metric(clean)`` for every edge, each patched alone (one
    forward pass per edge, all in one compiled program): the ground truth for EAP."""
    graph = Graph.from_config(model.cfg, qkv)
    us, vs = np.nonzero(graph.valid)
    keep = np.broadcast_to(graph.valid, (len(us) + 2,) + graph.valid.shape).copy()
    keep[np.arange(len(us)), us, vs] = False
    keep[-1] = False  # every edge corrupted: the corrupted run
    values = np.asarray(patch_edges(model, clean_tokens, corrupted_tokens, metric, keep, graph, chunk=chunk))
    m_clean, m_corrupt = float(values[-2]), float(values[-1])
    scores = np.zeros(graph.valid.shape, np.float32)
    scores[us, vs] = values[:-2] - m_clean
    return edge_scores_array(jnp.asarray(scores), graph, {"method": "exact", "clean": m_clean,
                                                           "corrupted": m_corrupt})
