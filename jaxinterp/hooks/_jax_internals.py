"""The private JAX the hook core needs, in one place, each with the reason.

jaxinterp's transforms run while JAX traces the user's function. Three facts about that
trace are not in JAX's public API:

* **the current trace** (``jax._src.core.trace_ctx.trace``): a hook reached inside a
  ``jit``/``vmap``/``scan`` that started *inside* a jaxinterp transform belongs to a
  nested trace; handing its value to the outer transform would leak a tracer, so the
  hook core compares the trace at the hook with the trace at the transform and raises
  ``NestedTraceError`` instead;
* **whether we are tracing at all** (the current trace is an ``EvalTrace``): an eager
  ``scan_layers`` would retrace and recompile its body on every call, so eager calls go
  through a small cache of compiled scans;
* **a key for a traced program** (the text of its jaxpr): that cache's key, so the same
  program compiles once.

If a JAX upgrade removes one of these, ``tests/hooks/test_jax_internals.py`` fails with
a message naming it; the hook core then degrades as documented below (no nested-trace
check; eager scans recompile) rather than giving wrong results.

Supported JAX versions: ``jax>=0.5,<0.11`` (tested with 0.10.2), as ``pyproject.toml`` says.
"""

from __future__ import annotations

from typing import Any

import jax

try:
    from jax._src.core import trace_ctx as _trace_ctx

    HAVE_TRACE_CTX = True
except ImportError:  # pragma: no cover - a JAX without it: skip the nested-trace check
    _trace_ctx = None
    HAVE_TRACE_CTX = False


def current_trace() -> Any:
    """The trace JAX is recording into now (``None`` if this JAX does not say)."""
    return _trace_ctx.trace if _trace_ctx is not None else None


def is_eager() -> bool:
    """True when no transformation is tracing (ops run one by one)."""
    return type(current_trace()).__name__ == "EvalTrace"


def jaxpr_key(closed: Any) -> str:
    """A key equal for equal traced programs: the text of the jaxpr."""
    return str(closed.jaxpr)


def is_tracer(x: Any) -> bool:
    """Whether ``x`` is an abstract value being traced (public API, kept here for symmetry)."""
    return isinstance(x, jax.core.Tracer)
