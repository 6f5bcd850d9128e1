"""Drop-in ``nn.scan`` and ``nn.remat`` for Flax linen, with hooks that work inside.

Large linen codebases stack their layers with ``nn.scan(nn.remat(Block), ...)``: one
traced layer, parameters stacked on a leading axis, activations recomputed in the
backward pass. Both are JAX transforms with traces of their own, so a value computed
inside cannot be handed to a jaxinterp transform outside. These two functions take the
same arguments and build the same modules (same class names, same parameter tree, same
numerics), on the machinery of :func:`~jaxinterp.hooks.scan_layers`: the layer index is
carried through the scan, so hooks inside are named per layer (``layers.{l}.attn.hook_out``
for a scanned module named ``layers``), captured values leave the scan as stacked outputs,
and interventions apply inside with ``jnp.where(l == layer, new, old)`` (so a layer sweep is
one ``vmap``)::

    # before                                       # after (2 lines changed)
    import flax.linen as nn                        import flax.linen as nn
                                                   from jaxinterp.hooks import flax_lifted as jl
    Stack = nn.scan(nn.remat(Block), ...)          Stack = jl.scan(jl.remat(Block), ...)

Everything else (``variable_axes``, ``split_rngs``, ``in_axes``, ``length``, ``reverse``,
``metadata_params``, remat's ``policy`` and ``static_argnums``...) is passed to Flax
unchanged, and checkpoints of the model before the change load after it. Outside a
jaxinterp transform the modules run exactly as Flax's. Limits: the target must be a
module class (not a function), and only ``__call__`` is hooked.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.errors import ConfigError
from jaxinterp.hooks._carry import Receivers, collecting, deliver
from jaxinterp.hooks._core import active, layer_scope


@dataclasses.dataclass
class _Call:
    """One outer call of a lifted module: who receives the values, and the scan length."""

    receivers: Receivers
    n_layers: int = 0


class _Pending(threading.local):
    def __init__(self):
        self.calls: list[_Call] = []


_pending = _Pending()


def _module_class(target: Any, what: str) -> type[nn.Module]:
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ConfigError(f"jaxinterp's {what} takes a linen Module class (as in {what}(Block, ...)), "
                          f"got {target!r}; the functional form is not supported")
    return target


def _named(cls: type, like: type) -> type:
    cls.__name__, cls.__qualname__, cls.__module__ = like.__name__, like.__qualname__, like.__module__
    return cls


def remat(target: type[nn.Module], **kwargs: Any) -> type[nn.Module]:
    """``nn.remat(target, **kwargs)`` whose hooks work: captured values are carried out of
    the rematerialised call, interventions apply inside it."""
    target = _module_class(target, "remat")

    class Emitting(target):  # runs inside jax.checkpoint
        @nn.nowrap
        def __call__(self, *args: Any, **kw: Any) -> Any:
            if not active() or not _pending.calls:
                return super().__call__(*args, **kw), {}
            with collecting("remat", _pending.calls[-1].receivers) as frame:
                out = super().__call__(*args, **kw)
            return out, frame.emitted

    lifted = nn.remat(_named(Emitting, target), **kwargs)

    class Remat(lifted):
        @nn.nowrap
        def __call__(self, *args: Any, **kw: Any) -> Any:
            call = _Call({})
            _pending.calls.append(call)
            try:
                out, emitted = super().__call__(*args, **kw)
            finally:
                _pending.calls.pop()
            deliver(call.receivers, emitted, stacked=False)
            return out

    return _named(Remat, lifted)


def _length(in_axes: Any, args: tuple) -> int | None:
    """The scan length Flax would infer from the scanned arguments (None if there are none)."""
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    for axis, arg in zip(axes, args, strict=False):
        if axis is nn.broadcast or axis is None:
            continue
        leaves = jax.tree.leaves(arg)
        if leaves:
            return int(jnp.shape(leaves[0])[axis])
    return None


def scan(target: type[nn.Module], *, length: int | None = None, reverse: bool = False,
         in_axes: Any = 0, out_axes: Any = 0, **kwargs: Any) -> type[nn.Module]:
    """``nn.scan(target, ...)`` whose hooks work, named ``{module path}.{l}.{name}``.

    Takes ``nn.scan``'s arguments. ``target(carry, *xs) -> (carry, ys)`` as for Flax; the
    layer index travels in the carry, and what hooks inside capture comes back stacked over
    the scan (one row per layer), like :func:`~jaxinterp.hooks.scan_layers`.
    """
    target = _module_class(target, "scan")
    step = -1 if reverse else 1

    class Body(target):  # runs inside lax.scan
        @nn.nowrap
        def __call__(self, carry: Any, *args: Any, **kw: Any) -> Any:
            carry, index = carry
            if not active() or not _pending.calls:
                carry, y = super().__call__(carry, *args, **kw)
                return (carry, index + step), (y, {})
            call = _pending.calls[-1]
            path = ".".join(str(p) for p in self.path)
            with collecting("scan", call.receivers) as frame, \
                    layer_scope(path, index, call.n_layers, module=path):
                carry, y = super().__call__(carry, *args, **kw)
            return (carry, index + step), (y, frame.emitted)

    lifted = nn.scan(_named(Body, target), length=length, reverse=reverse, in_axes=in_axes,
                     out_axes=(out_axes, 0), **kwargs)

    class Scan(lifted):
        @nn.nowrap
        def __call__(self, carry: Any, *args: Any, **kw: Any) -> Any:
            n = length if length is not None else _length(in_axes, args)
            if n is None:
                raise ConfigError("scan: pass length= (no scanned argument to read it from)")
            call = _Call({}, n)
            _pending.calls.append(call)
            try:
                start = jnp.asarray(n - 1 if reverse else 0, jnp.int32)
                (carry, _), (ys, emitted) = super().__call__((carry, start), *args, **kw)
            finally:
                _pending.calls.pop()
            deliver(call.receivers, emitted, stacked=True)
            return carry, ys

    return _named(Scan, lifted)


__all__ = ["remat", "scan"]
