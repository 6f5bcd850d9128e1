"""Ablations: remove a component's information and see what breaks.

An ablation replaces an activation ``a`` by a value that carries no information about
the prompt:

* **zero**: ``a -> 0`` (simple, but off-distribution: later layers never saw zeros);
* **mean**: ``a -> mean of a over a reference batch`` (per position by default);
* **resample**: ``a -> a`` from a randomly chosen reference prompt (Chan et al., causal
  scrubbing), the most on-distribution of the three.

Each function returns :class:`~jaxinterp.hooks.Intervention` objects; run them with
``ji.run_with_hooks(model, tokens, interventions=ivs)`` and combine freely::

    ivs = ablate_heads(model, [(9, 6), (9, 9)], method="mean", reference=ref_tokens)
    logits = ji.run_with_hooks(model, tokens, interventions=ivs)

Targets: heads (``attn.hook_z``), MLP neurons (``mlp.hook_post``), whole layers'
attention or MLP outputs, any direction in any activation (only the component along a
unit vector is ablated), and attention edges (query -> key entries of a head's pattern,
knocked out and the row renormalised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from jaxinterp.errors import HookNameError, ShapeError, unknown_name_message
from jaxinterp.hooks import Intervention, edit, run_with_cache
from jaxinterp.interp.patching import check_index
from jaxinterp.models.transformer import HookedTransformer

METHODS = ("zero", "mean", "resample")


@dataclasses.dataclass(frozen=True)
class _Ablate:
    """``x -> where(mask, replacement, x)``; ``mask`` broadcasts against ``x`` from the right."""

    method: str

    def __call__(self, x: Array, p: dict) -> Array:
        if self.method == "zero":
            new = jnp.zeros_like(x)
        elif self.method == "mean":
            new = jnp.broadcast_to(p["mean"], x.shape)
        else:  # resample: each example takes a random reference example's activation
            pool = p["pool"]
            pick = jax.random.randint(p["key"], (x.shape[0],), 0, pool.shape[0])
            new = pool[pick]
        return jnp.where(p["mask"], new.astype(x.dtype), x)


def _reference(model, name, method, reference, key, per_position, attention_mask=None) -> dict:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "zero":
        return {}
    if reference is None:
        raise ValueError(f"{method} ablation needs reference tokens [batch, pos]")
    _, cache = run_with_cache(model, jnp.asarray(reference), attention_mask, names=name)
    acts = cache[name]
    if method == "mean":
        mean = acts.mean(0)
        return {"mean": mean.mean(0, keepdims=True) if not per_position else mean}
    if key is None:
        raise ValueError("resample ablation needs a PRNG key")
    return {"pool": acts, "key": key}


def _check_name(model: HookedTransformer, name: str) -> None:
    if name not in model.hook_names():
        raise HookNameError(unknown_name_message("hook name", name, model.hook_names()))


def _ablation(model, name, mask, method, reference, key, per_position, attention_mask) -> Intervention:
    params = _reference(model, name, method, reference, key, per_position, attention_mask)
    return edit(name, _Ablate(method), {"mask": mask, **params})


def ablate_heads(model: HookedTransformer, heads: Sequence[tuple[int, int]], *, method: str = "zero",
                 reference: Int[ArrayLike, "batch pos"] | None = None, key: Array | None = None,
                 per_position: bool = True, attention_mask: ArrayLike | None = None) -> list[Intervention]:
    """Ablates the output (``z``) of each ``(layer, head)``."""
    cfg, out = model.cfg, []
    for layer, head in heads:
        layer = check_index("layer", layer, cfg.n_layers, "n_layers")
        head = check_index("head", head, cfg.n_heads, "n_heads")
        mask = (jnp.arange(cfg.n_heads) == head)[:, None]  # [H, 1] over [.., H, e]
        out.append(_ablation(model, f"blocks.{layer}.attn.hook_z", mask, method,
                             reference, key, per_position, attention_mask))
    return out


def ablate_neurons(model: HookedTransformer, neurons: Sequence[tuple[int, int]], *, method: str = "zero",
                   reference: Int[ArrayLike, "batch pos"] | None = None, key: Array | None = None,
                   per_position: bool = True, attention_mask: ArrayLike | None = None) -> list[Intervention]:
    """Ablates MLP neurons ``(layer, neuron)`` (their post-activation ``mlp.hook_post``)."""
    cfg = model.cfg
    if not cfg.has_mlp:
        raise ShapeError("this model has no MLP neurons")
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in neurons:
        layer = check_index("layer", layer, cfg.n_layers, "n_layers")
        by_layer.setdefault(layer, []).append(check_index("neuron", neuron, cfg.d_mlp, "d_mlp"))
    return [_ablation(model, f"blocks.{layer}.mlp.hook_post", jnp.isin(jnp.arange(cfg.d_mlp), jnp.asarray(ns)),
                      method, reference, key, per_position, attention_mask)
            for layer, ns in by_layer.items()]


def ablate_layers(model: HookedTransformer, layers: Sequence[int], *, component: str = "attn",
                  method: str = "zero", reference: Int[ArrayLike, "batch pos"] | None = None,
                  key: Array | None = None, per_position: bool = True,
                  attention_mask: ArrayLike | None = None) -> list[Intervention]:
    """Ablates whole layers' ``"attn"`` or ``"mlp"`` output (``hook_attn_out``/``hook_mlp_out``)."""
    if component not in ("attn", "mlp"):
        raise ValueError(f"component must be 'attn' or 'mlp', got {component!r}")
    out = []
    for layer in layers:
        layer = check_index("layer", layer, model.cfg.n_layers, "n_layers")
        name = f"blocks.{layer}.hook_{component}_out"
        _check_name(model, name)
        out.append(_ablation(model, name, jnp.asarray(True), method, reference, key, per_position, attention_mask))
    return out


@dataclasses.dataclass(frozen=True)
class _Direction:
    method: str

    def __call__(self, x: Array, p: dict) -> Array:
        u = p["u"]
        along = jnp.einsum("...d,d->...", x, u)
        if self.method == "zero":
            new = jnp.zeros_like(along)
        elif self.method == "mean":
            new = jnp.broadcast_to(p["mean"], along.shape)
        else:
            pool = p["pool"]
            new = pool[jax.random.randint(p["key"], (x.shape[0],), 0, pool.shape[0])]
        return x + ((new - along)[..., None] * u).astype(x.dtype)


def ablate_direction(model: HookedTransformer, name: str, direction: Float[ArrayLike, " d"], *,
                     method: str = "zero", reference: Int[ArrayLike, "batch pos"] | None = None,
                     key: Array | None = None, per_position: bool = True,
                     attention_mask: ArrayLike | None = None) -> Intervention:
    """Ablates the component of activation ``name`` along ``direction`` (last axis).

    ``x -> x + (c - x.u) u`` with ``u`` the unit direction and ``c`` zero, the reference
    mean of ``x.u``, or a resampled reference prompt's ``x.u``.
    """
    _check_name(model, name)
    u = jnp.asarray(direction, jnp.float32)
    norm = jnp.linalg.norm(u)
    if u.ndim != 1 or float(norm) == 0.0:
        raise ShapeError(f"direction must be a non-zero vector, got shape {u.shape}")
    u = u / norm
    params = _reference(model, name, method, reference, key, per_position, attention_mask)
    if "mean" in params:
        params["mean"] = jnp.einsum("...d,d->...", params["mean"], u)
    if "pool" in params:
        params["pool"] = jnp.einsum("...d,d->...", params["pool"], u)
    return edit(name, _Direction(method), {"u": u, **params})


@dataclasses.dataclass(frozen=True)
class _Knockout:
    def __call__(self, x: Array, p: dict) -> Array:  # pattern [batch, head, query, key]
        kept = jnp.where(p["edges"], 0.0, x)
        total = kept.sum(-1, keepdims=True)
        return jnp.where(total > 0, kept / jnp.where(total > 0, total, 1.0), 0.0).astype(x.dtype)


def knockout_edges(model: HookedTransformer, layer: int, edges: Bool[ArrayLike, "query key"] | Sequence[tuple[int, int]],
                   *, head: int | None = None, n_pos: int | None = None) -> Intervention:
    """Removes attention edges ``query -> key`` of ``head`` (or every head) at ``layer``.

    ``edges``: a boolean ``[query, key]`` mask, or ``(query, key)`` pairs (then ``n_pos``
    gives the sequence length). The remaining weights of each row are renormalised to
    sum to one, exactly as masking those attention scores to ``-inf`` would; a row that
    loses every edge attends to nothing (its output is zero).
    """
    cfg = model.cfg
    layer = check_index("layer", layer, cfg.n_layers, "n_layers")
    head = check_index("head", head, cfg.n_heads, "n_heads")
    if isinstance(edges, Sequence) and not hasattr(edges, "shape"):
        if n_pos is None:
            raise ValueError("knockout_edges with (query, key) pairs needs n_pos")
        mask = np.zeros((n_pos, n_pos), bool)
        for q, k in edges:
            mask[check_index("query position", q, n_pos, "n_pos"), check_index("key position", k, n_pos, "n_pos")] = True
        mask = jnp.asarray(mask)
    else:
        mask = jnp.asarray(edges, bool)
        if mask.ndim != 2:
            raise ShapeError(f"edges mask must be [query, key], got shape {mask.shape}")
    heads = jnp.ones(cfg.n_heads, bool) if head is None else jnp.arange(cfg.n_heads) == head
    return edit(f"blocks.{layer}.attn.hook_pattern", _Knockout(),
                {"edges": heads[:, None, None] & mask[None]})
