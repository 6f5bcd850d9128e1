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

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Int

from jaxinterp.hooks import Handler, handler_scope
from jaxinterp.interp._fast_forward import keys_values, unembed_by_position
from jaxinterp.interp._plan import resolve
from jaxinterp.interp.metrics import Metric, batch_mean, check_metric, read_positions
from jaxinterp.interp.patching import base_and_source, check_pair
from jaxinterp.models import components as C
from jaxinterp.models.transformer import HookedTransformer, embed, positions_and_mask
from jaxinterp.named import NamedArray


class _AddDelta(Handler):
    """At ``suffix``: records the activation and adds ``delta`` (its gradient is the activation's)."""

    def __init__(self, suffix: str, delta: jax.Array | None):
        self.suffix, self.delta, self.seen = suffix, delta, None

    def wants(self, name: str) -> bool:
        return name == self.suffix

    def handle(self, site, x, frames_above):
        if site.name() != self.suffix:
            return x
        self.seen = x
        return x if self.delta is None else x + self.delta.astype(x.dtype)


UNROLL_BELOW = 2048  # n_layers * d_model up to which the layers are unrolled (see _forward)
_KV = ("hook_resid_pre", "attn.hook_k", "attn.hook_v")  # hooks the last layer sees everywhere


def _last_layer(cfg, params, x, positions, mask, suffix, d, read):
    """The last layer when the metric reads only ``read``: keys and values everywhere,
    queries (attention, MLP) only at ``read``. Activations elsewhere are returned as zeros;
    the metric's gradient there is zero, so they never contribute."""
    m, n_m, n_pos = jnp.asarray(read), len(read), x.shape[1]
    on_kv = suffix in _KV
    seen_kv = _AddDelta(suffix if on_kv else None, d)
    with handler_scope(seen_kv):
        x, k, v = keys_values(cfg, params, x, positions)
    dq = None
    if d is not None and not on_kv:
        dq = d[:, :, m] if suffix == "attn.hook_pattern" else d[:, m]
        if suffix == "attn.hook_pattern":
            dq = jnp.concatenate([dq, jnp.zeros(dq.shape[:-1] + (n_m,), dq.dtype)], -1)
    seen_q = _AddDelta(None if on_kv else suffix, dq)

    def pad(a):  # room for the query tokens' own keys/values, which the mask hides
        return jnp.concatenate([a, jnp.zeros((a.shape[0], n_m) + a.shape[2:], a.dtype)], 1)

    q_mask = mask[:, m]
    q_mask = jnp.concatenate([q_mask, jnp.zeros(q_mask.shape[:-1] + (n_m,), bool)], -1)
    with handler_scope(seen_q):
        out, _ = C.block(cfg, params, x[:, m], positions[:, m], q_mask, (pad(k), pad(v)), n_pos)
    act = seen_kv.seen
    if not on_kv:
        val = seen_q.seen
        if suffix == "attn.hook_pattern":
            act = jnp.zeros(val.shape[:2] + (n_pos, n_pos), val.dtype).at[:, :, m].set(val[..., :n_pos])
        else:
            act = jnp.zeros((val.shape[0], n_pos) + val.shape[2:], val.dtype).at[:, m].set(val)
    return jnp.zeros_like(x).at[:, m].set(out), act


def _forward(model: HookedTransformer, tokens, attention_mask, suffix: str, delta=None, read=None):
    """Logits and ``[L, ...]`` activations at ``suffix``, with ``delta[l]`` added at layer ``l``.

    The layers run under ``lax.scan`` with each layer rematerialised except its matmuls
    (``dots_saveable``): on CPU this backward is about twice as fast as saving every
    intermediate. Small models (``n_layers * d_model <= 2048``) unroll the scan, which
    on CPU saves more per-layer overhead than it costs in compile time, and, when the
    metric declares the positions it reads, run the last layer's queries only there.
    """
    cfg = model.cfg
    positions, mask = positions_and_mask(tokens, attention_mask)

    def layer(h, params, d):
        seen = _AddDelta(suffix, d)
        with handler_scope(seen):
            out, _ = C.block(cfg, params, h, positions, mask)
        return out, seen.seen

    layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_saveable)
    small = cfg.n_layers * cfg.d_model <= UNROLL_BELOW
    read = read if small else None  # slicing off the last layer copies the stacked weights
    n = cfg.n_layers if read is None else cfg.n_layers - 1
    xs = (model.blocks, delta) if n == cfg.n_layers else jax.tree.map(lambda a: a[:n], (model.blocks, delta))
    x, acts = jax.lax.scan(lambda h, xs: layer(h, *xs), embed(model, tokens, positions), xs,
                           unroll=max(n, 1) if small else 1)
    if read is not None:
        params, d = jax.tree.map(lambda a: a[n], (model.blocks, delta))
        x, act = _last_layer(cfg, params, x, positions, mask, suffix, d, read)
        acts = jnp.concatenate([acts, act[None].astype(acts.dtype)], 0)
    return unembed_by_position(model, x), acts


def _sum_axes(suffix: str, by: tuple[str, ...], ndim: int) -> tuple[tuple[int, ...], bool]:
    """Axes of a stacked ``[L, B, ...]`` activation summed away, and whether to swap pos/head."""
    if suffix == "attn.hook_pattern":  # [L, B, H, Q, K]
        return ((1, 3, 4), False) if by == ("layer", "head") else ((1, 4), False)
    if suffix.startswith("attn."):  # [L, B, P, H, e]
        return ((1, 2, 4), False) if by == ("layer", "head") else ((1, 4), True)
    rest = tuple(range(3, ndim))  # [L, B, P, ...]
    return ((1,) + rest, False) if by == ("layer", "pos") else (tuple(range(1, ndim)), False)


@eqx.filter_jit
def _attribute(model, base_tokens, source_tokens, attention_mask, metric, suffix, by, read):
    source_logits, source = _forward(model, source_tokens, attention_mask, suffix, None, read)

    def run(delta):
        logits, acts = _forward(model, base_tokens, attention_mask, suffix, delta, read)
        return batch_mean(metric, logits), acts

    (base_metric, base_act), grad = jax.value_and_grad(run, has_aux=True)(jnp.zeros_like(source))
    prod = (source - base_act).astype(jnp.float32) * grad.astype(jnp.float32)
    axes, swap = _sum_axes(suffix, by, prod.ndim)
    est = prod.sum(axes)
    est = jnp.swapaxes(est, 1, 2) if swap else est
    return base_metric + est, base_metric, batch_mean(metric, source_logits)


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
