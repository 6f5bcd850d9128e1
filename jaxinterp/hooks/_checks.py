"""Checked mode for traced indices: report an out-of-range index instead of ignoring it.

A concrete index is checked on the host before anything runs. An index that is a tracer
(a ``vmap``ped sweep over layers or positions, or an argument of a ``jit``ted function)
has no value while JAX traces, so a wrong one cannot raise there; by default it selects
nothing. :func:`checked` runs a function under ``jax.experimental.checkify`` with checks
enabled, so every traced index is tested on the device and a bad one raises
:class:`~jaxinterp.errors.IndexRangeError` after the call::

    sweep = ji.checked(lambda pos: jax.vmap(run)(pos))   # run builds patch(..., pos=p)
    sweep(jnp.array([0, 5, 40]))     # IndexRangeError: position out of range for ... (size 16)
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxinterp.errors import IndexRangeError
from jaxinterp.hooks._jax_internals import is_tracer


class _Flag(threading.local):
    on = False


_flag = _Flag()
_MARK = "jaxinterp: "


def is_traced(x: Any) -> bool:
    return is_tracer(x)


@contextlib.contextmanager
def index_checks() -> Iterator[None]:
    """Emits device-side checks for traced indices while the block traces."""
    before, _flag.on = _flag.on, True
    try:
        yield
    finally:
        _flag.on = before


def check_in_range(index: Any, size: int, message: str) -> None:
    """In checked mode, a device-side check that every ``index`` lies in ``[-size, size)``."""
    if _flag.on:
        index = jnp.asarray(index)
        safe = message.replace("{", "{{").replace("}", "}}")  # check() formats its message
        checkify.check(jnp.all((index >= -size) & (index < size)), _MARK + safe)


def checked(fn: Callable, *, jit: bool = True) -> Callable:
    """``fn`` with every traced intervention index checked (see the module docstring).

    The returned function runs ``fn`` under ``checkify`` (and ``jax.jit`` unless
    ``jit=False``) and raises :class:`~jaxinterp.errors.IndexRangeError` if an index was out
    of range. Pass the un-jitted function: the checks are emitted while it traces.
    """

    def traced(*args: Any, **kwargs: Any) -> Any:
        with index_checks():
            return fn(*args, **kwargs)

    run = checkify.checkify(traced, errors=checkify.user_checks)
    if jit:
        run = jax.jit(run)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        err, out = run(*args, **kwargs)
        message = err.get()
        if message:
            text = message.split(_MARK, 1)[-1]
            raise IndexRangeError(text.split(" (`check` failed)")[0].split(" (check failed at")[0].strip())
        return out

    return call
