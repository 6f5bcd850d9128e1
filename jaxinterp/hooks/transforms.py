"""Transforms over hook points: capture activations, and intervene on them.

``run_with_cache(fn, *args, names=...)`` runs ``fn`` and returns ``(output, cache)``,
where ``cache`` maps TransformerLens-style names to arrays and holds only the names asked
for (an exact name, wildcards like ``blocks.*.hook_z``, a list of them, or a predicate).
``run_with_hooks(fn, *args, interventions=[...])`` runs ``fn`` with activations replaced
(see :mod:`jaxinterp.hooks.interventions`); with ``names=`` it also captures, after the
interventions. Both are pure functions of their inputs, so they go *inside* ``jax.jit``,
``jax.grad`` and ``jax.vmap``::

    logits, cache = jax.jit(lambda m, t: ji.run_with_cache(m, t, names="blocks.*.hook_z"))(model, tokens)

Hook names are checked: for a model with ``hook_names()`` (``HookedTransformer``) before
anything is traced, for any other function after the run (the names it reached). Unknown
names raise :class:`~jaxinterp.errors.HookNameError` listing the nearest valid ones.

What the transform cannot see: hooks inside a ``jax.jit``, ``vmap``, ``lax.scan`` or
``checkpoint`` that starts inside ``fn`` live in a nested trace and raise
:class:`NestedTraceError`. Use :func:`scan_layers` for scanned layers and put the
transform inside ``vmap`` (per-example models: ``jax.vmap(lambda x: ji.run_with_cache(model,
x, names=...))(xs)``). For a user's inner ``jax.jit`` pass ``inline_jit=True``: ``fn`` runs
under ``jax.disable_jit()`` so inner jits are inlined into the caller's trace (wrap the
whole call in an outer ``jax.jit`` to keep it compiled). Without it, an inner jit whose
trace JAX has already cached never reaches its hooks: nothing is captured or patched, which
the name check reports.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import equinox as eqx

from jaxinterp.errors import ArgumentTypeError, HookNameError, IndexRangeError, unknown_name_message
from jaxinterp.hooks._core import NestedTraceError, handler_scope, inline_jit_scope
from jaxinterp.hooks._handlers import _Capture, _Intervene
from jaxinterp.hooks._nested import warn_skipped
from jaxinterp.hooks.cache import Cache
from jaxinterp.hooks.interventions import (
    Intervention,
    add,
    concrete_layer,
    edit,
    layer_in_name,
    patch,
    with_layer_count,
)
from jaxinterp.hooks.patterns import check_one_character, dots_hint, matches
from jaxinterp.hooks.tl_hooks import FwdHooks, from_fwd_hooks

NameSpec = str | Sequence[str] | Callable[[str], bool] | None


def _matcher(spec: NameSpec) -> Callable[[str], bool]:
    if spec is None:
        return lambda name: True
    if callable(spec):
        return spec
    patterns = _patterns(spec)
    return lambda name: any(matches(name, p) for p in patterns)


def _patterns(spec: NameSpec) -> list[str]:
    if spec is None or callable(spec):
        return []
    patterns = [spec] if isinstance(spec, str) else list(spec)
    for p in patterns:
        if not isinstance(p, str):
            raise ArgumentTypeError(f"hook names must be strings, got {type(p).__name__}: {p!r}")
    return patterns


def _as_interventions(interventions: Any) -> list[Intervention]:
    """A list of interventions from one intervention, a list/tuple of them, or None."""
    if interventions is None:
        return []
    if isinstance(interventions, Intervention):
        return [interventions]
    if isinstance(interventions, Sequence) and not isinstance(interventions, str):
        out = list(interventions)
        for iv in out:
            if not isinstance(iv, Intervention):
                hint = (" (a (name, function) pair is a TransformerLens hook: pass it as "
                        "fwd_hooks=[(name, fn)])" if isinstance(iv, tuple) else "")
                raise ArgumentTypeError(f"interventions must be ji.Intervention objects (from ji.patch, "
                                f"ji.add, ji.edit), got {type(iv).__name__}{hint}")
        return out
    raise ArgumentTypeError(f"interventions must be an Intervention or a list of them, got "
                    f"{type(interventions).__name__}")


def _layered(iv: Intervention, names: Iterable[str]) -> Intervention:
    """``iv`` with its layer resolved against the layers of the hooks its pattern matches."""
    if iv.layer is None:
        return iv
    layers = {layer_in_name(n) for n in names if matches(n, iv.name)} - {None}
    if not layers:
        raise HookNameError(f"layer= was given, but {iv.name!r} matches no hook inside a layer "
                            "(names like blocks.3.hook_resid_pre); drop layer= or use a layered pattern")
    return with_layer_count(iv, max(layers) + 1)


def _check_applied(handler: _Intervene) -> None:
    """A ``layer=`` that can never take effect is an error (or, traced, a warning), not a no-op."""
    for iv, hit, layers in zip(handler.interventions, handler.applied, handler.layers, strict=True):
        if iv.layer is None:
            continue
        layer = concrete_layer(iv)
        span = f"{min(layers)}..{max(layers)}" if layers else "none"
        if not hit:
            what = f"layer={layer}" if layer is not None else "layer= (traced)"
            raise IndexRangeError(f"{what} of the intervention on {iv.name!r} never applied: "
                                  f"the hooks reached for that pattern have layers {span}")
        if layer is None and len(layers) == 1:
            warnings.warn(
                f"layer= varies (it is traced, e.g. vmapped) but {iv.name!r} reaches only layer "
                f"{span}: every other value of layer does nothing. Use a pattern over all layers, "
                "such as 'blocks.{l}.hook_resid_pre'.", stacklevel=3)


def _known_names(fn: Any) -> list[str] | None:
    names = getattr(fn, "hook_names", None)
    return list(names()) if callable(names) else None


_NOTHING_REACHED = (
    " The function reached no hook at all: if it is (or calls) a jax.jit-compiled function "
    "whose trace JAX had already cached, the hooks inside are skipped; pass inline_jit=True."
)


def _validate(patterns: Iterable[str], valid: Iterable[str], after_run: bool = False) -> None:
    valid = list(valid)
    for p in patterns:
        check_one_character(p, valid)
        if not any(matches(v, p) for v in valid):
            msg = unknown_name_message("hook name", p, valid) + dots_hint(p, valid)
            if after_run:
                msg += " (no hook with that name was reached while running the function)"
                msg += "" if valid else _NOTHING_REACHED
            raise HookNameError(msg)


def _warn_repeats(recorder: _Capture) -> None:
    if recorder.repeated:
        shown = ", ".join(f"{n!r} ({k} times)" for n, k in list(recorder.repeated.items())[:5])
        warnings.warn(
            f"hook {shown} reached more than once in one run: a capture keeps the last value and "
            "an intervention applies at each. If these are different layers, name each with "
            "`with ji.layer_scope('blocks', i):` (a module called twice is one name by design).",
            stacklevel=3)


def run_with_hooks(fn: Callable, *args: Any, interventions: Any = (), names: NameSpec | bool = False,
                   fwd_hooks: FwdHooks = (), inline_jit: bool = False, **kwargs: Any) -> Any:
    """Calls ``fn(*args, **kwargs)`` with ``interventions`` applied at their hook points.

    Args:
      fn: the model or any function whose code calls :func:`jaxinterp.hooks.hook`.
      interventions: an :class:`Intervention` or a list of them, applied in order at every
        matching hook (later ones see earlier ones' results).
      names: anything but ``False`` also captures those activations (as in
        :func:`run_with_cache`), after the interventions, and returns ``(output, cache)``.
      fwd_hooks: TransformerLens-style ``[(name or predicate, hook_fn)]``; each
        ``hook_fn(activation, hook)`` returns the new activation (or None to keep it) and
        reads ``hook.name``/``hook.layer()``. They run after ``interventions``.
      inline_jit: run ``fn`` under ``jax.disable_jit()`` so hooks inside its inner
        ``jax.jit`` calls work (see the module docstring).

    Returns:
      ``fn``'s output, or ``(output, cache)`` when ``names`` is given.

    Raises:
      HookNameError: a name or pattern matches no hook of ``fn``.
      IndexRangeError: a concrete ``layer``/``pos``/``head`` outside its range.
    """
    interventions = _as_interventions(interventions)
    capture = names is not False
    known = _known_names(fn)
    if known is None and (fwd_hooks or any(
            (concrete_layer(iv) or 0) < 0 for iv in interventions)):
        known_here = hook_names(fn, *args, inline_jit=inline_jit, **kwargs)
    else:
        known_here = known
    interventions += from_fwd_hooks(fwd_hooks, known_here)
    wanted = [iv.name for iv in interventions] + (_patterns(names) if capture else [])
    if known_here is not None:
        _validate(wanted, known_here)
        interventions = [_layered(iv, known_here) for iv in interventions]
    inner = _Intervene(interventions)
    outer = _Capture(_matcher(names) if capture else (lambda n: False), everything=names is None)
    with handler_scope(outer), handler_scope(inner):
        with inline_jit_scope() if inline_jit else contextlib.nullcontext():
            out = fn(*args, **kwargs)
    if known is None:
        _validate(wanted, outer.seen, after_run=True)
        if not outer.seen and capture and not wanted:
            warnings.warn("run_with_cache reached no hook point." + _NOTHING_REACHED, stacklevel=2)
    _check_applied(inner)
    _warn_repeats(outer)
    if not capture:
        return out
    if names is None and outer.skipped:
        if not outer.store:
            from jaxinterp.hooks._nested import nested_error

            name, where = next(iter(outer.skipped.items()))
            raise nested_error(name, where)
        warn_skipped(outer.skipped)
    cache = outer.cache()
    wrap = getattr(fn, "wrap_cache", None)  # a model may bind itself to its cache
    return out, (wrap(cache) if callable(wrap) else cache)


def run_with_cache(fn: Callable, *args: Any, names: NameSpec = None, inline_jit: bool = False,
                   **kwargs: Any) -> tuple[Any, Cache]:
    """Calls ``fn(*args, **kwargs)`` and returns ``(output, cache)``.

    ``names``: a hook name, a list of names or wildcard patterns (``blocks.*.hook_z``), a
    predicate on names, or ``None`` for every hook. Only the names asked for are kept; the
    cache is a :class:`Cache` (a read-only mapping) in execution order, layered names per layer.
    """
    return run_with_hooks(fn, *args, interventions=(), names=names, inline_jit=inline_jit, **kwargs)


def hook_names(fn: Callable, *args: Any, inline_jit: bool = False, **kwargs: Any) -> list[str]:
    """Every hook name ``fn(*args)`` reaches, in order, found by an abstract trace (no FLOPs)."""
    known = _known_names(fn)
    if known is not None:
        return known
    seen: dict[str, tuple[int, int, int]] = {}
    # The function's own arrays (a model's weights) go in as arguments too (NNX's lifted
    # transforms refuse state captured from outside the trace); non-arrays stay static.

    def probe(fn, *a):
        rec = _Capture(lambda n: False)
        with handler_scope(rec), inline_jit_scope() if inline_jit else contextlib.nullcontext():
            out = fn(*a, **kwargs)
        seen.update(rec.seen)
        return out

    eqx.filter_eval_shape(probe, fn, *args)
    return sorted(seen, key=seen.__getitem__)


__all__ = [
    "Cache", "Intervention", "NestedTraceError", "add", "edit", "hook_names", "patch", "run_with_cache", "run_with_hooks",
]
