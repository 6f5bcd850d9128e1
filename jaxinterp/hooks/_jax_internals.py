"""The private JAX the hook core needs, in one place, each with the reason.

jaxinterp's transforms run while JAX traces the user's function. These facts about that
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
  program compiles once;
* **a vmap's batched value** (``BatchTrace.to_batch_info``, ``BatchTracer``,
  ``set_current_trace``): a hook inside the model's own ``jax.vmap`` (idiomatic Equinox
  calls every ``Linear`` that way) sees one example; the hook core reads the whole batch
  from the vmap's tracer, hands it to the transform in the outer trace, and wraps the
  transform's answer back into the vmap (:func:`vmap_chain`, :func:`unbatch`,
  :func:`rebatch`);
* **which transform a nested trace belongs to**: JAX records no name for it, so
  :func:`transform_between` reads the Python call stack (the files and functions of
  ``lax.scan``, ``jax.checkpoint``, ``lax.cond``... and of Flax's and Equinox's lifted
  versions) to name it in ``NestedTraceError``. Only the error message depends on it.

If a JAX upgrade removes one of these, ``tests/hooks/test_jax_internals.py`` fails with
a message naming it; the hook core then degrades as documented below (no nested-trace
check; eager scans recompile; hooks inside a model's own vmap raise ``NestedTraceError``;
the error names no transform) rather than giving wrong results.

Supported JAX versions: ``jax>=0.5,<0.11`` (tested with 0.10.2), as ``pyproject.toml`` says.
"""

from __future__ import annotations

import sys
import sysconfig
from typing import Any

import jax
import jax.numpy as jnp

try:
    from jax._src.core import trace_ctx as _trace_ctx

    HAVE_TRACE_CTX = True
except ImportError:  # pragma: no cover - a JAX without it: skip the nested-trace check
    _trace_ctx = None
    HAVE_TRACE_CTX = False

try:
    from jax._src.core import set_current_trace as _set_current_trace
    from jax._src.interpreters.batching import BatchTrace as _BatchTrace
    from jax._src.interpreters.batching import BatchTracer as _BatchTracer

    HAVE_BATCH_TRACE = True
except ImportError:  # pragma: no cover - hooks inside a model's vmap then raise instead
    HAVE_BATCH_TRACE = False


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


# Hooks inside the model's own vmap --------------------------------------------------------


def vmap_chain(target: Any) -> list[Any] | None:
    """The ``jax.vmap`` traces between the current trace and ``target``, innermost first;
    ``[]`` when the current trace is ``target``, ``None`` when anything but vmaps lies between."""
    trace, chain = current_trace(), []
    while trace is not target:
        if not HAVE_BATCH_TRACE or not isinstance(trace, _BatchTrace):
            return None
        chain.append(trace)
        trace = trace.parent_trace
    return chain


def unbatch(x: Any, chain: list[Any]) -> Any:
    """``x`` (a value inside the vmaps of ``chain``) as seen from outside them: the whole
    batch, each vmapped axis moved to the front (outermost vmap first)."""
    for trace in chain:
        val, dim = trace.to_batch_info(x)
        with _set_current_trace(trace.parent_trace):
            if dim is None:  # the same for every example: broadcast it
                x = jnp.broadcast_to(val, (trace.axis_data.size, *jnp.shape(val)))
            else:
                x = jnp.moveaxis(val, dim, 0)
    return x


def rebatch(x: Any, chain: list[Any]) -> Any:
    """The inverse of :func:`unbatch`: a whole-batch value back inside the vmaps."""
    for trace in reversed(chain):
        x = _BatchTracer(trace, x, 0)
    return x


def outer_trace(target: Any) -> Any:
    """A context in which operations record into ``target`` (the transform's own trace)."""
    return _set_current_trace(target)


# Which transform a nested trace belongs to -------------------------------------------------

# (file inside site-packages, function) -> the JAX transform it runs.
_JAX_FRAMES = {
    ("jax/_src/lax/control_flow/loops.py", "scan"): "lax.scan",
    ("jax/_src/lax/control_flow/loops.py", "fori_loop"): "lax.fori_loop",
    ("jax/_src/lax/control_flow/loops.py", "while_loop"): "lax.while_loop",
    ("jax/_src/lax/control_flow/loops.py", "map"): "lax.map",
    ("jax/_src/lax/control_flow/conditionals.py", "cond"): "lax.cond",
    ("jax/_src/lax/control_flow/conditionals.py", "switch"): "lax.switch",
    ("jax/_src/ad_checkpoint.py", "fun_remat"): "jax.checkpoint",
    ("jax/_src/api.py", "vmap_f"): "jax.vmap",
    ("jax/_src/api.py", "grad_f"): "jax.grad",
    ("jax/_src/api.py", "value_and_grad_f"): "jax.grad",
    ("jax/_src/api.py", "vjp"): "jax.vjp",
    ("jax/_src/api.py", "jvp"): "jax.jvp",
    ("jax/_src/api.py", "pmap_f"): "jax.pmap",
    ("jax/_src/pjit.py", "cache_miss"): "jax.jit",
    ("jax/_src/custom_derivatives.py", "__call__"): "jax.custom_vjp",
    ("jax/_src/shard_map.py", "_shard_map"): "shard_map",
}
# Libraries whose lifted transforms wrap the JAX ones, and their names for them.
_LIBRARIES = {
    "flax/core/": {"lax.scan": "nn.scan", "jax.checkpoint": "nn.remat", "jax.vmap": "nn.vmap",
                   "lax.cond": "nn.cond", "lax.switch": "nn.switch", "lax.while_loop": "nn.while_loop",
                   "jax.jit": "nn.jit"},
    "flax/linen/": {"lax.scan": "nn.scan", "jax.checkpoint": "nn.remat", "jax.vmap": "nn.vmap",
                    "jax.jit": "nn.jit"},
    "flax/nnx/": {"lax.scan": "nnx.scan", "jax.checkpoint": "nnx.remat", "jax.vmap": "nnx.vmap",
                  "lax.cond": "nnx.cond", "lax.switch": "nnx.switch", "jax.jit": "nnx.jit",
                  "lax.fori_loop": "nnx.fori_loop", "lax.while_loop": "nnx.while_loop"},
    "equinox/": {"jax.checkpoint": "eqx.filter_checkpoint", "jax.vmap": "eqx.filter_vmap",
                 "jax.jit": "eqx.filter_jit", "jax.grad": "eqx.filter_grad"},
}


_STDLIB = sysconfig.get_paths()["stdlib"]


def frame_depth(skip: tuple[str, ...] = ()) -> int:
    """How many Python frames are live below the innermost one not in a file ending with
    one of ``skip`` (to find, later, the frames started since)."""
    frame, n = sys._getframe(1), 0
    while frame is not None and frame.f_code.co_filename.endswith(skip):
        frame = frame.f_back
    while frame is not None:
        n, frame = n + 1, frame.f_back
    return n


def transform_between(depth: int) -> str | None:
    """The outermost JAX transform (as its user wrote it: ``nn.scan``, ``jax.vmap``...)
    started by the code running since the stack was ``depth`` frames deep; None if unknown."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    library = None  # the Flax/Equinox transform, if one called the JAX one directly
    for frame in reversed(frames[: max(len(frames) - depth, 0)]):
        path = frame.f_code.co_filename.replace("\\", "/")
        tail = path.split("site-packages/")[-1]
        owner = next((p for p in _LIBRARIES if tail.startswith(p)), None)
        if owner is not None:
            library = owner
        elif "site-packages/" not in path and not path.startswith(_STDLIB):
            library = None  # user code in between: a plain JAX transform
        jax_name = _JAX_FRAMES.get((tail, frame.f_code.co_name))
        if jax_name is not None:
            return _LIBRARIES.get(library, {}).get(jax_name, jax_name)
    return None
