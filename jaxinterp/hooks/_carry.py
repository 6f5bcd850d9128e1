"""Carrying hook values out of inner transforms: the frames of scans and remats.

A value computed inside ``lax.scan`` or ``jax.checkpoint`` lives in that transform's own
trace; it can leave only as one of its outputs. So the body of such a transform opens a
:class:`~jaxinterp.hooks._core.Frame`; a handler outside that wants a hook inside *emits*
the value into the frame instead of keeping it; the body returns ``(out, frame.emitted)``
and, once the transform has returned, :func:`deliver` hands each value on: to the next
frame out (a remat inside a scanned layer), or to its handler (stacked over layers when it
came out of a scan). Interventions need none of this: they apply inside the body, closing
over their arrays like any other constant.

:func:`carried` wraps any inner transform this way; :func:`scan_layers`, :func:`remat` and
the Flax drop-ins (:mod:`jaxinterp.hooks.flax_lifted`, :mod:`jaxinterp.hooks.nnx_lifted`)
are built on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax

from jaxinterp.errors import JaxinterpError
from jaxinterp.hooks._core import Frame, Handler, Site, _state, active, frame_scope

Receivers = dict[tuple[int, str], tuple[Handler, "list[int] | None", Site, bool]]


def deliver(receivers: Receivers, emitted: dict, *, stacked: bool) -> None:
    """Hands each emitted value to the next frame out, or to its handler.

    ``stacked``: the values came out of a scan, one row per layer.
    """
    stack = _state.stack
    for key, value in emitted.items():
        handler, layers, site, was_stacked = receivers[key]
        if was_stacked and stacked:
            raise JaxinterpError("scanned layers cannot nest inside other scanned layers")
        stacked_now = stacked or was_stacked
        depth = next((i for i, e in enumerate(stack) if e.handler is handler), None)
        if depth is None:
            continue  # the handler was started inside the transform and has finished
        frames = [e.frame for e in stack[depth + 1:] if e.frame is not None]
        if frames:
            frames[-1].emit(handler, site, layers, value, stacked_now)
        elif stacked_now:
            handler.receive_stacked(site, layers, value)
        else:
            handler.receive(site, value)


@contextlib.contextmanager
def collecting(kind: str, receivers: Receivers) -> Iterator[Frame]:
    """Opens a frame inside the inner transform's body and records who receives what."""
    with frame_scope(kind) as frame:
        yield frame
    receivers.update(frame.receivers)


def carried(transform: Callable[[Callable], Callable], fn: Callable, kind: str = "remat") -> Callable:
    """``transform(fn)`` (a ``jax.checkpoint``-like wrapper of one function), with the
    values that outer transforms want from inside ``fn`` carried out as extra outputs."""
    def body(receivers: Receivers, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        with collecting(kind, receivers) as frame:
            out = fn(*args, **kwargs)
        return out, frame.emitted

    def call(*args: Any, **kwargs: Any) -> Any:
        if not active():
            return transform(fn)(*args, **kwargs)
        receivers: Receivers = {}
        out, emitted = transform(lambda *a, **k: body(receivers, *a, **k))(*args, **kwargs)
        deliver(receivers, emitted, stacked=False)
        return out

    return call


def remat(fn: Callable, *, policy: Callable | None = None, prevent_cse: bool = True) -> Callable:
    """``jax.checkpoint(fn)`` (``eqx.filter_checkpoint``: non-array arguments are static)
    whose hooks work: values captured inside are carried out, interventions apply inside.

    Use it where a model rematerialises a layer::

        x = ji.remat(block)(x)          # instead of jax.checkpoint(block)(x)

    The backward pass recomputes ``fn`` as ``jax.checkpoint`` does; a captured value is one
    more output of the checkpointed function, so it is saved, not recomputed.
    """

    def transform(f: Callable) -> Callable:
        return eqx.filter_checkpoint(f, policy=policy, prevent_cse=prevent_cse)

    return carried(transform, fn)


def scan_frame_body(fn: Callable, receivers: Receivers) -> Callable:
    """``fn`` (a scan body) returning ``(out, emitted)`` from inside a scan frame."""

    def body(*args: Any, **kwargs: Any) -> tuple[Any, dict]:
        with collecting("scan", receivers) as frame:
            out = fn(*args, **kwargs)
        return out, frame.emitted

    return body


def is_array(x: Any) -> bool:
    return isinstance(x, jax.Array) or eqx.is_array(x)
