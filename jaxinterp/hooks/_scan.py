"""Scanned layers with hook points inside: ``scan_layers``.

A model whose per-layer weights are stacked on a leading ``n_layers`` axis runs its blocks
with ``lax.scan``: one traced layer, so compile time does not grow with depth. Inside the
scan body the layer index is a tracer; hooks there are named ``{prefix}.{l}.{name}`` with a
traced ``l``. A capture wanted from inside is returned by the scan as a stacked output
and handed to its transform under per-layer names once the scan is done; an intervention
applies inside the body with ``jnp.where(l == layer, new, old)``.

Called outside ``jit`` (eagerly), ``lax.scan`` would retrace and recompile its body on
every call, since the body is a fresh closure; :func:`scan_layers` keys compiled scans by
the text of their jaxpr instead (same text, same program), a small bounded cache.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.errors import JaxinterpError
from jaxinterp.hooks._carry import Receivers, collecting, deliver
from jaxinterp.hooks._core import _state, in_traced_scope, layer_scope
from jaxinterp.hooks._jax_internals import is_eager, jaxpr_key


def scan_layers(
    block: Callable[[Any, Any], Any],
    carry: Any,
    layer_params: Any,
    *,
    n_layers: int,
    prefix: str = "blocks",
    remat: bool = False,
    extra: Any = None,
    unroll: int = 1,
    first_layer: int = 0,
) -> tuple[Any, Any]:
    """Runs ``carry = block(carry, params_l)`` for each layer under ``lax.scan``, hooks included.

    Args:
      block: ``block(carry, params_l)`` or, with ``extra``, ``block(carry, (params_l, extra_l))``;
        returns the new carry, or ``(carry, y)`` when ``extra`` is given.
      carry: the value threaded through the layers (e.g. the residual stream).
      layer_params: a pytree whose leaves have a leading ``n_layers`` axis.
      n_layers: number of layers (the scan length).
      prefix: hook names inside read ``{prefix}.{l}.{name}``.
      remat: rematerialise each layer in the backward pass (``jax.checkpoint``).
      extra: optional per-layer scanned inputs (leading axis ``n_layers``); when given the
        per-layer outputs ``y`` of ``block`` are stacked and returned.
      unroll: passed to ``lax.scan``.
      first_layer: the model layer of ``layer_params[0]``, so hooks of a partial run
        (layers ``first_layer:first_layer + n_layers``) keep their model-wide names.

    Returns:
      ``(carry, ys)``, with ``ys`` the stacked per-layer outputs (``None`` without ``extra``).
    """
    if in_traced_scope():
        raise JaxinterpError("scan_layers cannot nest inside another scanned layer scope")
    if n_layers == 0:
        return carry, None
    with_extra = extra is not None
    # Which handler gets which emitted value: plain Python, filled in while tracing the body.
    receivers: Receivers = {}

    # Under inline_jit keep the scan (one traced layer), but inline jits inside the body.
    inline = _state.inline > 0 and jax.config.jax_disable_jit

    def body(c, xs):
        index, params = xs[0], xs[1]
        with contextlib.ExitStack() as stack:
            if inline:
                stack.enter_context(jax.disable_jit())
            frame = stack.enter_context(collecting("scan", receivers))
            stack.enter_context(layer_scope(prefix, index, n_layers, first_layer=first_layer))
            out = block(c, (params, xs[2]) if with_extra else params)
        c, y = out if with_extra else (out, None)
        return c, (y, frame.emitted)

    fn = jax.checkpoint(body) if remat else body

    def run(carry, layer_params, extra):
        index = jnp.arange(first_layer, first_layer + n_layers, dtype=jnp.int32)
        xs = (index, layer_params) + ((extra,) if with_extra else ())
        return jax.lax.scan(fn, carry, xs, unroll=unroll)

    with jax.disable_jit(False) if inline else contextlib.nullcontext():
        eager = is_eager() and not jax.config.jax_disable_jit
        carry, (ys, emitted) = (_call_cached if eager else _call)(run, carry, layer_params, extra)
    deliver(receivers, emitted, stacked=True)
    return carry, ys


# Eager calls: compile each distinct scan once -----------------------------------------
_EAGER_CACHE: collections.OrderedDict[str, Callable] = collections.OrderedDict()
_EAGER_LOCK = threading.Lock()
_EAGER_MAX = 32


def _call(f: Callable, *args: Any) -> Any:
    return f(*args)


def _call_cached(f: Callable, *args: Any) -> Any:
    closed, shapes = jax.make_jaxpr(f, return_shape=True)(*args)
    key = jaxpr_key(closed)
    with _EAGER_LOCK:
        compiled = _EAGER_CACHE.pop(key, None)
        if compiled is None:
            jaxpr = closed.jaxpr
            compiled = jax.jit(lambda consts, flat: jax.core.eval_jaxpr(jaxpr, consts, *flat))
        _EAGER_CACHE[key] = compiled
        while len(_EAGER_CACHE) > _EAGER_MAX:
            _EAGER_CACHE.popitem(last=False)
    out = compiled(list(closed.consts), jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(shapes), out)
