"""Hooks inside a transform that starts inside the model: what happened, and what to do.

A jaxinterp transform traces the model once. A JAX transform the model starts itself
(``lax.scan``, ``jax.checkpoint``, ``lax.cond``, an inner ``jax.jit``...) traces its body
into a program of its own, so a value computed there cannot be handed to the outer
transform. Three cases are handled and need nothing from the user: the model's own
``jax.vmap`` (the hook core reads the whole batch from the vmap), and the frames of
:func:`~jaxinterp.hooks.scan_layers`, :func:`~jaxinterp.hooks.remat` and the Flax drop-ins
(they return the values as extra outputs). For any other inner transform:

* a hook nobody asked for is skipped (a bridge that tags every module then works on
  models that call some modules inside a ``lax.cond``); ``run_with_cache(names=None)``
  ("everything") skips them too and warns once, listing the skipped names;
* a hook someone asked for by name or pattern raises :class:`NestedTraceError`, which
  names the transform that was met and the fix that applies to it (:data:`FIXES`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from jaxinterp.hooks._core import NestedTraceError, _Entry
from jaxinterp.hooks._jax_internals import transform_between

# The fix for each kind of inner transform (by the name the user wrote).
FIXES = {
    "scan": ("carry the values out of the loop: run stacked layers with ji.scan_layers, or "
             "replace nn.scan with jaxinterp.hooks.flax_lifted.scan and nnx.scan with "
             "jaxinterp.hooks.nnx_lifted.scan (same arguments)"),
    "remat": ("replace the rematerialisation with one that carries hook values out: "
              "ji.remat for jax.checkpoint / eqx.filter_checkpoint, "
              "jaxinterp.hooks.flax_lifted.remat for nn.remat, "
              "jaxinterp.hooks.nnx_lifted.remat for nnx.remat (same arguments)"),
    "loop": ("a value inside lax.fori_loop / while_loop cannot leave it: use a Python loop "
             "(with ji.layer_scope) or ji.scan_layers for layers"),
    "cond": ("a value computed in one branch of lax.cond / switch cannot leave it: ask for "
             "a hook outside the branch (the cond's caller's output)"),
    "jit": ("pass inline_jit=True so inner jax.jit / eqx.filter_jit / nnx.jit calls are "
            "inlined into this trace (or call the un-jitted function)"),
    "vmap": ("put the jaxinterp transform inside the vmap: "
             "jax.vmap(lambda x: ji.run_with_cache(model, x, names=...))(xs)"),
    "grad": "hooks inside a gradient taken by the model itself cannot be handed out",
}
_KIND = {
    "lax.scan": "scan", "nn.scan": "scan", "nnx.scan": "scan", "lax.map": "scan",
    "jax.checkpoint": "remat", "nn.remat": "remat", "nnx.remat": "remat",
    "eqx.filter_checkpoint": "remat",
    "lax.fori_loop": "loop", "lax.while_loop": "loop", "nn.while_loop": "loop",
    "nnx.fori_loop": "loop", "nnx.while_loop": "loop",
    "lax.cond": "cond", "lax.switch": "cond", "nn.cond": "cond", "nn.switch": "cond",
    "nnx.cond": "cond", "nnx.switch": "cond",
    "jax.jit": "jit", "nn.jit": "jit", "nnx.jit": "jit", "eqx.filter_jit": "jit",
    "jax.vmap": "vmap", "nn.vmap": "vmap", "nnx.vmap": "vmap", "eqx.filter_vmap": "vmap",
    "jax.pmap": "vmap", "shard_map": "vmap",
    "jax.grad": "grad", "jax.vjp": "grad", "jax.jvp": "grad", "eqx.filter_grad": "grad",
    "jax.custom_vjp": "grad",
}


def transform_name(entry: _Entry) -> str:
    """The inner transform met since ``entry`` (a handler or frame) started."""
    return transform_between(entry.depth) or "an inner JAX transform"


def nested_error(name: str, where: str) -> NestedTraceError:
    kind = _KIND.get(where)
    fix = FIXES.get(kind, "; ".join(FIXES[k] for k in ("scan", "remat", "jit")))
    return NestedTraceError(
        f"Hook {name!r} was asked for, but it is reached inside {where}, which the model "
        f"starts inside the jaxinterp transform, so its value cannot leave that inner trace. "
        f"Fix: {fix}. (Hooks nobody asks for there are skipped.)")


_WARNED: set[frozenset[str]] = set()


def warn_skipped(skipped: dict[str, str]) -> None:
    """Warns, once per set of names, that a capture of everything skipped ``skipped``
    (name -> the inner transform it was in)."""
    key = frozenset(skipped)
    if not skipped or key in _WARNED:
        return
    _WARNED.add(key)
    by_where: dict[str, list[str]] = {}
    for name, where in skipped.items():
        by_where.setdefault(where, []).append(name)
    parts = [f"{_shown(names)} (inside {where}; fix: {FIXES.get(_KIND.get(where), 'see NestedTraceError')})"
             for where, names in by_where.items()]
    warnings.warn("run_with_cache(names=None) skipped hooks it cannot hand out: " + "; ".join(parts),
                  stacklevel=3)


def _shown(names: Iterable[str], n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
