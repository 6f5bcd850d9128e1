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

The bookkeeping is a thread-local stack of entries (handlers, and *frames* of inner
transforms that carry values out: see :mod:`jaxinterp.hooks._carry`) that lives only
while a transform traces the model; nothing of it persists between calls.

A hook is normally reached in the same JAX trace as the transform that handles it. Two
kinds of inner trace are handled: the model's own ``jax.vmap`` (the hook sees the whole
batch, read from the vmap's tracer) and the frames of :func:`scan_layers`, ``ji.remat`` and
the Flax drop-ins (they return the values as extra outputs). Any other inner transform
(``lax.scan``, ``lax.cond``, ``jax.checkpoint``, an inner ``jax.jit``...) is skipped when no
transform asked for the hook there, and raises :class:`NestedTraceError`, naming the
transform and the fix, when one did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import jax

from jaxinterp.errors import JaxinterpError, ShapeError
from jaxinterp.hooks import _jax_internals as internals
from jaxinterp.hooks._jax_internals import current_trace as _current_trace


class NestedTraceError(JaxinterpError, RuntimeError):
    """A hook someone asked for was reached inside a JAX transform started inside a
    jaxinterp transform, where its value cannot be handed out."""


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

    def name(self, layer: int | str | None = None) -> str:
        if self.prefix is None:
            return self.suffix
        idx = self.layer if layer is None else layer
        return f"{self.prefix}.{idx}.{self.suffix}"

    @property
    def shown(self) -> str:
        """The name, with ``{l}`` standing for a traced layer."""
        return self.name("{l}") if self.dynamic else self.name()

    def names(self) -> list[str]:
        """Every concrete name this site can take."""
        if not self.dynamic:
            return [self.name()]
        return [self.name(i) for i in range(self.first, self.first + self.n_layers)]


class Handler:
    """A transform's view of the hooks. Subclasses override :meth:`wants` and :meth:`handle`.

    ``handle`` is called only at hooks the handler :meth:`wants`; every hook reached is
    announced to :meth:`reached` (``nested`` is not None for a hook inside an inner
    transform whose values cannot be handed out: the transform's name for a wanted hook
    that was skipped, ``""`` for one nobody wanted). A wanted hook inside such a
    transform raises :class:`NestedTraceError` unless the handler's ``insists(name)``
    (default: :meth:`wants`) says it can do without it.
    """

    def wants(self, name: str) -> bool:
        return False

    def reached(self, site: Site, nested: str | None = None) -> None:
        """Told of every hook reached, before any :meth:`handle`."""

    def handle(self, site: Site, x: jax.Array, frames_above: list[Frame]) -> jax.Array:
        return x

    def receive(self, site: Site, x: jax.Array) -> None:
        """Receives, once an inner transform (``ji.remat``) has finished, a value emitted
        from inside it for this handler."""

    def receive_stacked(self, site: Site, layers: list[int], stacked: jax.Array) -> None:
        """Receives, once the scan has finished, the per-layer values captured inside it:
        ``stacked[i]`` is layer ``i`` of the scan; ``layers`` are those the handler wanted."""


@dataclasses.dataclass
class Frame:
    """An inner transform that carries values out (a scanned layer body, a remat): values
    handlers want from inside it are *emitted* here and become extra outputs of the inner
    transform; :func:`jaxinterp.hooks._carry.deliver` hands them on once it returns."""

    kind: str  # "scan" (outputs come back stacked over layers) or "remat"
    emitted: dict[tuple[int, str], jax.Array] = dataclasses.field(default_factory=dict)
    receivers: dict[tuple[int, str], tuple[Handler, list[int] | None, Site, bool]] = (
        dataclasses.field(default_factory=dict))

    def emit(self, handler: Handler, site: Site, layers: list[int] | None, x: jax.Array,
             stacked: bool = False) -> None:
        key = (id(handler), site.shown)
        self.emitted[key] = x
        self.receivers[key] = (handler, layers, site, stacked)


@dataclasses.dataclass
class _Entry:
    handler: Handler | None
    frame: Frame | None
    trace: Any
    depth: int  # Python stack depth when it started (to name inner transforms in errors)


@dataclasses.dataclass(frozen=True)
class _Scope:
    prefix: str
    layer: Any
    n_layers: int | None
    first: int
    module: str | None  # module path whose submodules' bridge names are re-rooted here


class _State(threading.local):
    def __init__(self):
        self.stack: list[_Entry] = []
        self.scope: list[_Scope] = []
        self.inline = 0  # depth of inline_jit_scope blocks


_state = _State()


_MACHINERY = ("hooks/_core.py", "hooks/_carry.py", "contextlib.py")


def push(handler: Handler | None, frame: Frame | None) -> _Entry:
    depth = internals.frame_depth(_MACHINERY)
    entry = _Entry(handler, frame, _current_trace(), depth)
    _state.stack.append(entry)
    return entry


def current_site(suffix: str, axes: tuple[str, ...] | None = None) -> Site:
    if not _state.scope:
        return Site(suffix, axes=axes)
    inner = _state.scope[-1]
    prefix = inner.prefix
    if len(_state.scope) > 1:
        outer = ".".join(f"{s.prefix}.{s.layer}" for s in _state.scope[:-1])
        prefix = f"{outer}.{prefix}"
    return Site(suffix, prefix, inner.layer, inner.n_layers, inner.first, axes)


def module_site(name: str) -> Site:
    """The site of a bridge's hook, whose ``name`` is a complete module path
    (``layers.attn.hook_out``). Static :func:`layer_scope` prefixes do not apply; inside a
    traced layer scope the layer goes after the scanned module's path
    (``layers.{l}.attn.hook_out``), or before the name when the path is not under it."""
    traced = [s for s in _state.scope if not isinstance(s.layer, int)]
    if not traced:
        return Site(name)
    scope = traced[-1]
    if scope.module and name.startswith(scope.module + "."):
        rest = name[len(scope.module) + 1:]
        return Site(rest, scope.prefix, scope.layer, scope.n_layers, scope.first)
    return current_site(name)


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
    """Hands ``x`` to every handler that wants ``site``, innermost handler first (so an
    outer capture sees what inner interventions made); returns the final value."""
    stack = _state.stack
    if not _is_array(x):
        raise ShapeError(
            f"hook({site.shown!r}, x) needs an array, got {type(x).__name__}; tag each array "
            "leaf of a pytree under its own name"
        )
    names = site.names()
    top = stack[-1]
    inside = "" if top.trace is not None and internals.vmap_chain(top.trace) is None else None
    for depth in range(len(stack) - 1, -1, -1):
        handler = stack[depth].handler
        if handler is None:
            continue
        if not any(handler.wants(n) for n in names):
            handler.reached(site, nested=inside)
            continue
        frames = [e for e in stack[depth + 1:] if e.frame is not None]
        receiving = frames[-1] if frames else stack[depth]  # the trace the value must be in
        chain = [] if receiving.trace is None else internals.vmap_chain(receiving.trace)
        if chain is None:  # an inner transform whose values cannot leave it
            from jaxinterp.hooks._nested import nested_error, transform_name

            where = transform_name(receiving)
            if any(getattr(handler, "insists", handler.wants)(n) for n in names):
                raise nested_error(site.shown, where)
            handler.reached(site, nested=where)
            continue
        handler.reached(site)
        above = [e.frame for e in frames]
        if not chain:
            x = handler.handle(site, x, above)
            continue
        # Inside the model's own vmap: the handler sees (and may replace) the whole batch.
        with internals.outer_trace(receiving.trace):
            outer = internals.unbatch(x, chain)
            new = handler.handle(site, outer, above)
        x = x if new is outer else internals.rebatch(new, chain)
    return x


def hook_tree(name: str, tree: Any, *, scoped: bool = True) -> Any:
    """Tags every array in ``tree``: an array, or a pytree holding one array, is ``name``;
    a pytree of several arrays tags each as ``{name}_{key}`` (``hook_out_0``,
    ``hook_out_1`` for a pair). Other leaves pass through.

    ``scoped=False`` marks ``name`` as a complete module path (the bridges' names):
    static :func:`layer_scope` prefixes do not apply, a traced one does
    (see :func:`module_site`).
    """
    if not _state.stack:
        return tree

    def tag(n: str, x: jax.Array) -> jax.Array:
        return _fire(current_site(n) if scoped else module_site(n), x)

    if _is_array(tree):
        return tag(name, tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    single = sum(_is_array(leaf) for _, leaf in leaves) == 1
    out = []
    for path, leaf in leaves:
        if _is_array(leaf):
            keys = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
            leaf = tag(name if single else name + "".join(f"_{k}" for k in keys), leaf)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def is_hooked(name: str) -> bool:
    """Whether any active transform wants the hook ``name`` here.

    Lets model code skip computing optional activations nobody asked for
    (``attn.hook_result`` is ``n_heads`` times the size of ``hook_attn_out``).
    """
    if not _state.stack:
        return False
    names = current_site(name).names()
    return any(
        e.handler is not None and any(e.handler.wants(n) for n in names) for e in _state.stack
    )


def active() -> bool:
    """Whether any jaxinterp transform is running (so inner frames are worth setting up)."""
    return any(e.handler is not None for e in _state.stack)


@contextlib.contextmanager
def handler_scope(handler: Handler) -> Iterator[Handler]:
    """Installs ``handler`` for the hooks reached inside the ``with`` block."""
    push(handler, None)
    try:
        yield handler
    finally:
        _state.stack.pop()


@contextlib.contextmanager
def frame_scope(kind: str) -> Iterator[Frame]:
    """Opens a :class:`Frame` for the inner transform being traced now (enter it inside)."""
    frame = Frame(kind)
    push(None, frame)
    try:
        yield frame
    finally:
        _state.stack.pop()


@contextlib.contextmanager
def layer_scope(prefix: str, layer: Any, n_layers: int | None = None, *,
                first_layer: int = 0, module: str | None = None) -> Iterator[None]:
    """Names hooks inside the block ``{prefix}.{layer}.{name}``.

    ``layer`` is an int (a Python loop over layers) or a traced int taking the values
    ``first_layer ... first_layer + n_layers - 1`` (then ``n_layers`` is required).
    ``module`` (a module path, for the Flax drop-ins) re-roots the bridges' names of that
    module's submodules: ``{module}.attn.hook_out`` becomes ``{prefix}.{layer}.attn.hook_out``.
    """
    if not isinstance(layer, int) and n_layers is None:
        raise JaxinterpError("layer_scope with a traced layer index needs n_layers")
    _state.scope.append(_Scope(prefix, layer, n_layers, first_layer, module))
    try:
        yield
    finally:
        _state.scope.pop()


def in_traced_scope() -> bool:
    return any(not isinstance(s.layer, int) for s in _state.scope)


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
