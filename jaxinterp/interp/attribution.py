"""Attribution patching: every patch of a sweep estimated from one forward and one backward.

Patching an activation ``a`` from its base value ``a_base`` to ``a_src`` changes the
metric by about the first-order term

    metric(patched) ~= metric(base) + sum_selected (a_src - a_base) * d metric / d a |base

(Nanda, "Attribution patching", 2023). One backward pass gives ``d metric / d a`` for
every layer, position and head at once, so a whole sweep costs a source forward, a base
forward and the backward (gradients with respect to activations only, no weight
gradients). The estimate is exact when the metric is linear in the activation (the last
layer's head outputs without a final norm, or a model with frozen attention patterns and
no norms) and degrades where the model is far from linear between the two runs (often
the residual stream at early layers). :func:`compare_attribution` reports how well it
tracks exact patching.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Int

from jaxinterp.hooks import Handler, handler_scope, run_with_cache
from jaxinterp.interp._plan import resolve
from jaxinterp.interp.metrics import Metric, batch_mean, check_metric, read_positions
from jaxinterp.interp.patching import base_and_source, check_pair
from jaxinterp.models.hook_specs import BY_NAME, HookSpec, spec
from jaxinterp.models.partial import embed, logits_at, positions_and_mask, run_layers
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

UNROLL_BELOW = 2048  # n_layers * d_model up to which the layers are unrolled (see _forward)


def _along_pos(hook: HookSpec, a: jax.Array, read) -> jax.Array:
    """``a`` (with or without the leading layer axis) at the positions ``read``."""
    return jnp.take(a, jnp.asarray(read), axis=hook.axis("pos"))


class _AddDelta(Handler):
    """At ``hook`` in layer ``l``: adds ``delta[l]`` (so the metric's gradient with respect to
    ``delta`` is its gradient with respect to the activation). In the last layer, run at the
    read positions only, the query-side activations get ``delta`` at those positions."""

    def __init__(self, hook: HookSpec, delta: jax.Array, read, last: int):
        self.hook, self.delta, self.read, self.last = hook, delta, read, last

    def wants(self, name: str) -> bool:
        return spec(name) is self.hook

    def handle(self, site, x, frames_above):
        if site.suffix != self.hook.name:
            return x
        d = jax.lax.dynamic_index_in_dim(self.delta, site.layer, keepdims=False)
        if self.read is not None and not self.hook.at_keys and not site.dynamic and site.layer == self.last:
            d = _along_pos(self.hook, d, self.read)
        return x + d.astype(x.dtype)


def _forward(model: HookedTransformer, tokens, attention_mask, hook: HookSpec, delta=None, read=None):
    """Logits and the ``[L, ...]`` activations at ``hook``, with ``delta[l]`` added at layer ``l``.

    The partial forward from layer 0; when the metric declares the positions it reads, the
    last layer queries only there (its query-side activations elsewhere are zeros: the
    metric's gradient there is zero, so they never contribute). Small models
    (``n_layers * d_model <= 2048``) unroll the layer scan, which on CPU saves more
    per-layer overhead than it costs in compile time.
    """
    cfg = model.cfg
    positions, mask = positions_and_mask(tokens, attention_mask)
    L, n_pos = cfg.n_layers, tokens.shape[1]
    small = L * cfg.d_model <= UNROLL_BELOW
    index = None if read is None else jnp.broadcast_to(jnp.asarray(read), (tokens.shape[0], len(read)))

    def run(t):
        x = embed(model, t, positions)
        return run_layers(model, x, positions, mask, read=index, unroll=max(L - 1, 1) if small else 1)[0]

    name = f"blocks.*.{hook.name}"
    with handler_scope(_AddDelta(hook, delta, read, L - 1)) if delta is not None else contextlib.nullcontext():
        x, cache = run_with_cache(run, tokens, names=name)
    acts = [cache[f"blocks.{i}.{hook.name}"] for i in range(L)]
    if read is not None and not hook.at_keys:  # the last layer's activation, at the read positions only
        full = list(acts[0].shape)
        axis = hook.axis("pos")
        full[axis] = n_pos
        moved = jnp.moveaxis(jnp.zeros(full, acts[-1].dtype), axis, 0)
        acts[-1] = jnp.moveaxis(moved.at[jnp.asarray(read)].set(jnp.moveaxis(acts[-1], axis, 0)), 0, axis)
    return logits_at(model, x, read, n_pos), jnp.stack(acts)


def _per_target(prod: jax.Array, hook: HookSpec, by: tuple[str, ...]) -> jax.Array:
    """``prod [L, *hook.axes]`` summed over every axis not in ``by``, in ``by``'s order."""
    axes = ("layer",) + hook.axes
    kept = [a for a in axes if a in by]
    summed = prod.sum(axis=tuple(i for i, a in enumerate(axes) if a not in by))
    return jnp.transpose(summed, [kept.index(a) for a in by])


@eqx.filter_jit
def _attribute(model, base_tokens, source_tokens, attention_mask, metric, suffix, by, read):
    hook = BY_NAME[suffix]
    source_logits, source = _forward(model, source_tokens, attention_mask, hook, None, read)

    def run(delta):
        logits, acts = _forward(model, base_tokens, attention_mask, hook, delta, read)
        return batch_mean(metric, logits), acts

    (base_metric, base_act), grad = jax.value_and_grad(run, has_aux=True)(jnp.zeros_like(source))
    prod = (source - base_act).astype(jnp.float32) * grad.astype(jnp.float32)
    return base_metric + _per_target(prod, hook, by), base_metric, batch_mean(metric, source_logits)


def attribution_patching(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    component: str = "resid_pre",
    *,
    by: Sequence[str] | None = None,
    direction: str = "denoising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
    pos_labels: Sequence[str] | None = None,
) -> NamedArray:
    """First-order estimate of :func:`activation_patching` for the same sweep.

    Same arguments and result layout as :func:`~jaxinterp.interp.activation_patching`
    (the estimated patched metric per target, with ``attrs`` ``clean``/``corrupted``).
    """
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, attention_mask)
    suffix, by = resolve(component, by, model.hook_names())
    base_tokens, source_tokens = base_and_source(clean, corrupted, direction)
    check_metric(metric)
    am = None if attention_mask is None else jnp.asarray(attention_mask)
    read = read_positions(metric, clean.shape[1])
    est, base_m, source_m = _attribute(model, base_tokens, source_tokens, am, metric, suffix, by, read)
    clean_m, corrupt_m = (source_m, base_m) if direction == "denoising" else (base_m, source_m)
    labels = {} if pos_labels is None or "pos" not in by else {"pos": list(pos_labels)}
    attrs = {"component": component, "direction": direction, "clean": float(clean_m),
             "corrupted": float(corrupt_m), "method": "attribution"}
    return NamedArray(est, by, labels, attrs)


def compare_attribution(exact: NamedArray | ArrayLike, estimate: NamedArray | ArrayLike) -> dict[str, float]:
    """How well an attribution estimate tracks exact patching over the same targets.

    Returns Pearson and Spearman correlations, the RMS and max absolute error, and the
    spread of the exact values (``exact_std``) to read the errors against.
    """
    a, b = np.asarray(exact, np.float64).ravel(), np.asarray(estimate, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"exact {np.shape(exact)} and estimate {np.shape(estimate)} differ in shape")

    def corr(x, y):
        x, y = x - x.mean(), y - y.mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        return float((x * y).sum() / den) if den > 0 else float("nan")

    def ranks(x):
        return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)

    err = b - a
    return {"pearson": corr(a, b), "spearman": corr(ranks(a), ranks(b)),
            "rmse": float(np.sqrt((err**2).mean())), "max_abs_error": float(np.abs(err).max()),
            "exact_std": float(a.std()), "n": int(a.size)}
