"""Activation patching: which activations carry the behaviour that a metric measures.

Run the model on a *clean* prompt (the behaviour happens) and a *corrupted* one (it does
not). **Denoising** runs the corrupted prompt with one activation replaced by its clean
value and asks how much of the clean metric comes back; **noising** runs the clean prompt
with one corrupted activation and asks how much is lost. A sweep does this for every
target (every layer and position of the residual stream, every head...) and returns the
metric per target as a :class:`NamedArray`::

    result = ji.activation_patching(model, clean, corrupted, ji.logit_diff(io, s),
                                    "resid_pre", by=("layer", "pos"))
    result.normalized()   # 0 = corrupted metric, 1 = clean metric

Components (``by`` in brackets, first is the default): ``resid_pre``, ``resid_mid``,
``resid_post``, ``attn_out``, ``mlp_out`` [("layer", "pos"), ("layer",)]; ``z`` (each
head's output), ``q``, ``k``, ``v``, ``pattern`` [("layer", "head"), ("layer", "head",
"pos")]. Without ``pos`` a target patches every position.

The sweep is one compiled program over chunks of ``chunk_size`` targets, and each patched
run recomputes only the layers after the patch and the positions from the patch on,
reusing the unpatched run's keys and values (see :mod:`jaxinterp.interp._fast_forward`).
:func:`patched_forward` is the plain single patch the sweep is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int
from tqdm.auto import tqdm

from jaxinterp.errors import ShapeError
from jaxinterp.hooks import patch, run_with_hooks
from jaxinterp.hooks._checks import is_traced
from jaxinterp.hooks.interventions import check_index as _check_index
from jaxinterp.interp import _fast_forward as F
from jaxinterp.interp._plan import COMPONENTS, enumerate_targets, pack, resolve, unknown_component
from jaxinterp.interp.metrics import Metric, check_metric, read_positions
from jaxinterp.models.tokens import as_tokens
from jaxinterp.models.transformer import HookedTransformer, check_tokens, positions_and_mask
from jaxinterp.named import NamedArray

DIRECTIONS = ("denoising", "noising")


def check_pair(model: HookedTransformer, clean: Array, corrupted: Array, attention_mask=None):
    """Validates a clean/corrupted pair of token batches (same shape, valid ids)."""
    clean, corrupted = as_tokens(model, clean), as_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise ShapeError(f"clean tokens {clean.shape} and corrupted tokens {corrupted.shape} must "
                         "have the same [batch, pos] shape (pad them to one length)")
    check_tokens(model.cfg, clean, attention_mask)
    check_tokens(model.cfg, corrupted, attention_mask)
    if model.cfg.n_layers == 0:
        raise ShapeError("patching needs a model with at least one layer")
    return clean, corrupted


def base_and_source(clean, corrupted, direction: str):
    """(tokens run, tokens whose activations are patched in) for a direction."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return (corrupted, clean) if direction == "denoising" else (clean, corrupted)


def check_index(what: str, value: Any, size: int, name: str) -> Any:
    """An index checked against ``[-size, size)`` (``IndexRangeError`` otherwise) with
    negatives counted from the end; a concrete one comes back as a Python int, a traced
    one as a normalised tracer (checked only under :func:`jaxinterp.hooks.checked`)."""
    out = _check_index(what, value, size, f"a model with {name}={size}")
    if out is None or is_traced(out):
        return out
    return int(out) if np.ndim(out) == 0 else out


def activation_patching(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    component: str = "resid_pre",
    *,
    by: Sequence[str] | None = None,
    direction: str = "denoising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
    chunk_size: int | None = None,
    pos_labels: Sequence[str] | None = None,
    progress: bool = False,
) -> NamedArray:
    """Patches every target of a sweep and returns the batch-mean metric per target.

    Args:
      model: the transformer.
      clean_tokens, corrupted_tokens: ``[batch, pos]`` prompts of equal shape.
      metric: ``logits [batch, pos, d_vocab] -> [batch]`` (see :mod:`metrics`).
      component: which activation to patch (module docstring lists them).
      by: the sweep's axes, e.g. ``("layer", "pos")`` or ``("layer", "head")``.
      direction: ``"denoising"`` (clean into corrupted) or ``"noising"`` (the reverse).
      attention_mask: ``[batch, pos]`` padding mask shared by both prompts. Logits at
        padding positions are undefined (their attention has nothing to attend to), so
        the metric must not read them.
      chunk_size: patched runs computed together; peak memory grows with it. Default:
        about 2048 recomputed tokens per chunk on CPU (cache-friendly), 32768 elsewhere.
      pos_labels: tick labels for the ``pos`` axis (e.g. the clean prompt's tokens).
      progress: show a progress bar over chunks.

    Returns:
      A :class:`NamedArray` over ``by`` with ``attrs`` ``clean`` and ``corrupted`` (the
      unpatched metrics), ``component`` and ``direction``.
    """
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, attention_mask)
    cfg = model.cfg
    suffix, by = resolve(component, by, model.hook_names())
    base_tokens, source_tokens = base_and_source(clean, corrupted, direction)
    check_metric(metric)
    if chunk_size is None:
        budget = 2048 if jax.default_backend() == "cpu" else 32768
        chunk_size = max(1, 2 * budget // (clean.shape[0] * (clean.shape[1] + 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    am = None if attention_mask is None else jnp.asarray(attention_mask)
    k_hook, v_hook = F.kv_hooks(model)
    names = tuple(dict.fromkeys(("hook_resid_pre", k_hook, v_hook, suffix)))
    base_m, base_final, base_acts = F.collect_jit(model, base_tokens, am, names, metric)
    source_m, _, source_acts = F.collect_jit(model, source_tokens, am, names, metric)
    positions, _ = positions_and_mask(base_tokens, am)
    valid = jnp.ones(base_tokens.shape, bool) if am is None else am > 0
    base = F.BaseRun(base_acts["hook_resid_pre"], base_acts[k_hook], base_acts[v_hook],
                     base_final, positions, valid)
    n_heads = cfg.n_kv_heads if component in ("k", "v") else cfg.n_heads
    targets = enumerate_targets(by, cfg.n_layers, n_heads, clean.shape[1])
    chunks, index = pack(targets, clean.shape[1], chunk_size, cfg.n_layers)
    read = read_positions(metric, clean.shape[1])
    out = np.zeros(len(targets.layer), np.float32)
    for c, plan in enumerate(tqdm(chunks, desc=f"patching {component}", disable=not progress)):
        values = np.asarray(F.run_chunk_jit(model, base, source_acts[suffix], plan, metric, suffix, read))
        hit = index[c] >= 0
        out[index[c][hit]] = values[hit]
    clean_m, corrupt_m = (float(x) for x in ((source_m, base_m) if direction == "denoising" else (base_m, source_m)))
    labels = {} if pos_labels is None or "pos" not in by else {"pos": list(pos_labels)}
    attrs = {"component": component, "direction": direction, "clean": clean_m, "corrupted": corrupt_m,
             "metric": type(metric).__name__}
    return NamedArray(jnp.asarray(out.reshape(targets.shape)), by, labels, attrs)


def patched_forward(
    model: HookedTransformer,
    tokens: Int[ArrayLike, "batch pos"],
    source: Float[ArrayLike, "batch pos ..."],
    component: str,
    layer: int | Int[Array, ""],
    *,
    pos: int | Int[Array, ""] | None = None,
    head: int | Int[Array, ""] | None = None,
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
) -> Float[Array, "batch pos d_vocab"]:
    """Logits of one run with ``component`` at ``layer`` (``pos``, ``head``) set to ``source``.

    ``source`` is that layer's activation from the other run. ``layer``, ``pos`` and
    ``head`` may be traced, so ``jax.jit`` of this compiles once for a whole loop.
    """
    if component not in COMPONENTS:
        raise unknown_component(component)
    suffix, headed = COMPONENTS[component]
    layer = check_index("layer", layer, model.cfg.n_layers, "n_layers")
    n_heads = model.cfg.n_kv_heads if component in ("k", "v") else model.cfg.n_heads
    head = check_index("head", head, n_heads, "n_heads" if component not in ("k", "v") else "n_kv_heads")
    if head is not None and not headed:
        raise ShapeError(f"component {component!r} has no head axis")
    iv = patch(f"blocks.*.{suffix}", source, pos=pos, head=head, layer=layer)
    return run_with_hooks(model, jnp.asarray(tokens), attention_mask, interventions=[iv])
