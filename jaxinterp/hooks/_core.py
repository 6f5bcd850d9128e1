"""Hook points: named tags on values, and the machinery that lets transforms see them.

Model code marks a value with ``x = hook("hook_resid_pre", x)``. Outside any transform
that is the identity and costs nothing. A transform (``run_with_cache``,
``run_with_hooks``) installs a *handler* for the duration of one call of the model; the
handler sees every tagged value while the model is traced, and may record it or return a
replacement. Because this happens at trace time, handlers compose with ``jit``, ``vmap``,
``grad`` and sharding as long as the transform sits *outside* them, the usual rule for
JAX transforms.

Layers run under ``lax.scan``. Inside :func:`scan_layers` the layer index is a tracer, so
a hook's full name (``blocks.{l}.hook_resid_pre``) is known only up to ``l``: handlers
receive a :class:`Site` with the template and the traced index. Captured values leave
the scan as stacked outputs and are presented under per-layer names; interventions apply
with ``jnp.where(l == layer, new, old)``, so a traced ``layer`` can be ``vmap``ped.

The bookkeeping is a thread-local stack of frames that lives only while a transform
traces the model; nothing of it persists between calls. :func:`scan_layers` lives in
:mod:`jaxinterp.hooks._scan`.

A hook must be reached in the same JAX trace as the transform that handles it: a hook
inside a ``jax.jit``, ``vmap``, ``lax.scan`` or ``checkpoint`` that starts *inside* the
transform raises :class:`NestedTraceError` (its value could not leave that inner trace).
The exceptions are :func:`scan_layers`, which carries values out of its scan, and inner
``jax.jit`` calls under ``inline_jit=True`` (see :func:`inline_jit_scope`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import jax

from jaxinterp.errors import JaxinterpError, ShapeError
from jaxinterp.hooks._jax_internals import current_trace as _current_trace


class NestedTraceError(JaxinterpError, RuntimeError):
    """A hook was reached inside a JAX transform started inside a jaxinterp transform."""


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a hook fired: its name, and for stacked layers the (maybe traced) index.

    ``prefix`` and ``layer`` are set inside :func:`layer_scope` / :func:`scan_layers`;
    then the full name is ``f"{prefix}.{layer}.{suffix}"``. A traced ``layer`` takes the
    values ``first, ..., first + n_layers - 1``.
    """

    suffix: str
    prefix: str | None = None
    layer: Any = None  # int, traced int32 scalar, or None
    n_layers: int | None = None
    first: int = 0
    axes: tuple[str, ...] | None = None  # the value's layout, when the tag declared it

    @property
    def dynamic(self) -> bool:
        return self.prefix is not None and not isinstance(self.layer, int)

    def name(self, layer: int | None = None) -> str:
        if self.prefix is None:
            return self.suffix
        idx = self.layer if layer is None else layer
        return f"{self.prefix}.{idx}.{self.suffix}"

    def names(self) -> list[str]:
        """Every concrete name this site can take."""
        if not self.dynamic:
            return [self.name()]
        return [self.name(i) for i in range(self.first, self.first + self.n_layers)]


class Handler:
    """A transform's view of the hooks. Subclasses override :meth:`wants` and :meth:`handle`."""

    def wants(self, name: str) -> bool:
        return False

    def handle(self, site: Site, x: jax.Array, frames_above: list[_ScanFrame]) -> jax.Array:
        return x

    def receive_stacked(self, site: Site, layers: list[int], stacked: jax.Array) -> None:
        """Receives, once the scan has finished, the per-layer values captured inside it:
        ``stacked[i]`` is layer ``i`` of the scan; ``layers`` are those the handler wanted."""


@dataclasses.dataclass
class _Entry:
    handler: Handler | None
    scan: _ScanFrame | None
    trace: Any


@dataclasses.dataclass
class _ScanFrame:
    """Collects values that outer handlers want from inside one scanned layer body."""

    prefix: str
    n_layers: int
    emitted: dict[tuple[int, str], jax.Array] = dataclasses.field(default_factory=dict)
    receivers: dict[tuple[int, str], tuple[Handler, list[int], Site]] = dataclasses.field(
        default_factory=dict
    )

    def emit(self, handler: Handler, site: Site, layers: list[int], x: jax.Array) -> None:
        key = (id(handler), site.suffix)
        self.emitted[key] = x
        self.receivers[key] = (handler, layers, site)


class _State(threading.local):
    def __init__(self):
        self.stack: list[_Entry] = []
        self.scope: list[tuple[str, Any, int | None, int]] = []  # prefix, layer, n, first
        self.inline = 0  # depth of inline_jit_scope blocks


_state = _State()


def _check_trace(entry: _Entry, name: str) -> None:
    now = _current_trace()
    if entry.trace is not None and now is not None and now is not entry.trace:
        raise NestedTraceError(
            f"Hook {name!r} was reached inside a JAX transform (jit, vmap, scan, grad...) that "
            "started inside a jaxinterp transform, so its value cannot leave that inner trace. "
            "Put the jaxinterp transform inside the inner transform instead (for a per-example "
            "model: jax.vmap(lambda x: ji.run_with_cache(model, x, names=...))), use "
            "ji.scan_layers for scanned layers, and for an inner jax.jit pass inline_jit=True "
            "(or call the un-jitted function)."
        )


def current_site(suffix: str, axes: tuple[str, ...] | None = None) -> Site:
    if not _state.scope:
        return Site(suffix, axes=axes)
    prefix, layer, n, first = _state.scope[-1]
    if len(_state.scope) > 1:
        outer = ".".join(f"{p}.{i}" for p, i, _, _ in _state.scope[:-1])
        prefix = f"{outer}.{prefix}"
    return Site(suffix, prefix, layer, n, first, axes)


def hook(name: str, x: jax.Array, *, axes: tuple[str, ...] | None = None) -> jax.Array:
    """Tags ``x`` as the hook point ``name``; returns ``x`` or a transform's replacement.

    Use it anywhere in JAX code (Flax, Equinox, plain functions). Without an active
    jaxinterp transform it returns ``x`` unchanged at no cost. Inside :func:`layer_scope`
    (or :func:`scan_layers`) the full name is ``{prefix}.{layer}.{name}``.

    ``axes`` names the value's axes (``("batch", "pos", "head", "d_head")``, the
    vocabulary of :mod:`jaxinterp.typing`), so interventions can select ``pos=``/``head=``
    on it; without it they need the layout stated on the intervention.
    """
    if not _state.stack:
        return x
    return _fire(current_site(name, axes), x)


def _is_array(x: Any) -> bool:
    """An array or tracer (anything with a shape and dtype)."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _fire(site: Site, x: jax.Array) -> jax.Array:
    stack = _state.stack
    shown = site.name() if not site.dynamic else site.name("{l}")
    if not _is_array(x):
        raise ShapeError(
            f"hook({shown!r}, x) needs an array, got {type(x).__name__}; tag each array leaf "
            "of a pytree under its own name"
        )
    _check_trace(stack[-1], shown)
    # Innermost handler first, so an outer capture sees what inner interventions made.
    for depth in range(len(stack) - 1, -1, -1):
        entry = stack[depth]
        if entry.handler is None:
            continue
        above = [e.scan for e in stack[depth + 1 :] if e.scan is not None]
        x = entry.handler.handle(site, x, above)
    return x


def hook_tree(name: str, tree: Any, *, scoped: bool = True) -> Any:
    """Tags every array in ``tree``: an array is ``name``; a pytree's leaves are
    ``{name}_{key}`` (``hook_out_0``, ``hook_out_1`` for a tuple). Other leaves pass through.

    ``scoped=False`` ignores enclosing static :func:`layer_scope` prefixes (for names that
    are already complete, like a module path); a traced scope still applies.
    """
    if not _state.stack:
        return tree
    absolute = not scoped and not any(not isinstance(lay, int) for _, lay, _, _ in _state.scope)

    def tag(n: str, x: jax.Array) -> jax.Array:
        return _fire(Site(n) if absolute else current_site(n), x)

    if _is_array(tree):
        return tag(name, tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        if _is_array(leaf):
            keys = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
            leaf = tag(name + "".join(f"_{k}" for k in keys), leaf)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def is_hooked(name: str) -> bool:
    """Whether any active transform wants the hook ``name`` here.

    Lets model code skip computing optional activations nobody asked for
    (``attn.hook_result`` is ``n_heads`` times the size of ``hook_attn_out``).
    """
    if not _state.stack:
        return False
    site = current_site(name)
    names = site.names()
    return any(
        e.handler is not None and any(e.handler.wants(n) for n in names) for e in _state.stack
    )


@contextlib.contextmanager
def handler_scope(handler: Handler) -> Iterator[Handler]:
    """Installs ``handler`` for the hooks reached inside the ``with`` block."""
    _state.stack.append(_Entry(handler, None, _current_trace()))
    try:
        yield handler
    finally:
        _state.stack.pop()


@contextlib.contextmanager
def layer_scope(prefix: str, layer: Any, n_layers: int | None = None, *,
                first_layer: int = 0) -> Iterator[None]:
    """Names hooks inside the block ``{prefix}.{layer}.{name}``.

    ``layer`` is an int (a Python loop over layers) or a traced int taking the values
    ``first_layer ... first_layer + n_layers - 1`` (then ``n_layers`` is required).
    """
    if not isinstance(layer, int) and n_layers is None:
        raise JaxinterpError("layer_scope with a traced layer index needs n_layers")
    _state.scope.append((prefix, layer, n_layers, first_layer))
    try:
        yield
    finally:
        _state.scope.pop()


@contextlib.contextmanager
def inline_jit_scope() -> Iterator[None]:
    """Runs the ``with`` block under ``jax.disable_jit()`` so inner ``jax.jit`` calls inline.

    A hook inside a user's ``jax.jit`` normally sits in a nested trace (and a jit whose
    trace is already cached never reaches its hooks at all). With jit disabled, inner
    jitted functions run as plain Python in the caller's trace, so their hooks work; put the
    transform itself inside an outer ``jax.jit`` to keep one compiled program.
    :func:`scan_layers` keeps its ``lax.scan`` (it re-enables jit for the scan and disables
    it again inside the body), so depth still costs one traced layer; a user's own
    ``lax.scan`` or ``fori_loop`` is unrolled by ``disable_jit`` instead.
    """
    _state.inline += 1
    try:
        with jax.disable_jit():
            yield
    finally:
        _state.inline -= 1
