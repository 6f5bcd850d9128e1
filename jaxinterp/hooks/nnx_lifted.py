"""Drop-in ``nnx.scan`` and ``nnx.remat`` for Flax NNX, with hooks that work inside.

NNX stacks layers by creating them under ``nnx.vmap`` and running them with
``nnx.scan``; it rematerialises with ``nnx.remat``. Both trace their function into a
program of its own, so hooks inside could not hand values out. These take the same
arguments and run the same computation through Flax, on the machinery of
:func:`~jaxinterp.hooks.scan_layers`: the layer index is scanned alongside the inputs, so
hooks inside are named per layer, captured values leave as stacked outputs (one row per
layer), and interventions apply inside with ``jnp.where(l == layer, new, old)``::

    # before                                         # after (2 lines changed)
    from flax import nnx                             from flax import nnx
                                                     from jaxinterp.hooks import nnx_lifted as jnnx
    @nnx.scan(in_axes=(nnx.Carry, 0),                @jnnx.scan(in_axes=(nnx.Carry, 0),
              out_axes=nnx.Carry)                               out_axes=nnx.Carry)
    def forward(x, block): ...                       def forward(x, block): ...

Names. Hooks tagged by :func:`~jaxinterp.hooks.nnx_bridge.tag_nnx_submodules` inside the
scanned module ``blocks`` read ``blocks.{l}.attn.hook_out``; the module's own output is
``blocks.{l}.hook_out``. ``ji.hook`` tags written in the layer's code read
``{prefix}.{l}.{name}``, with ``prefix`` the scanned module's path when the bridge tagged
it, else the ``prefix=`` argument (default ``"blocks"``).

Outside a jaxinterp transform these are ``nnx.scan`` / ``nnx.remat`` themselves.
``in_axes=nnx.Carry`` (the whole argument list as the carry) is not supported; write the
carry's position in a tuple.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxinterp.errors import ConfigError
from jaxinterp.hooks._carry import Receivers, collecting, deliver
from jaxinterp.hooks._core import active, layer_scope


def _scanned(in_axes: Any, args: tuple) -> list[tuple[int, Any]]:
    """(axis, argument) of every argument scanned over."""
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    return [(a, x) for a, x in zip(axes, args, strict=False) if isinstance(a, int)]


def _leaves(x: Any) -> list:
    return jax.tree.leaves(nnx.state(x) if isinstance(x, nnx.Module) else x)


def _module_path(scanned: list[tuple[int, Any]]) -> str | None:
    """The graph path of a scanned module, read from the bridge's tags inside it."""
    for _, arg in scanned:
        if not isinstance(arg, nnx.Module):
            continue
        for rel, module in nnx.iter_modules(arg):
            tag = type(module).__dict__.get("_jaxinterp_tag")
            if tag is None:
                continue
            path, tail = tag[1], ".".join(str(p) for p in rel)
            return path[: len(path) - len(tail) - 1] if tail else path
    return None


def _with_emitted(out: Any, emitted: dict, out_axes: Any) -> Any:
    return (*out, emitted) if isinstance(out_axes, tuple) else (out, emitted)


def _split_emitted(out: Any, out_axes: Any) -> tuple[Any, dict]:
    return (tuple(out[:-1]), out[-1]) if isinstance(out_axes, tuple) else (out[0], out[1])


def _added_axes(out_axes: Any) -> Any:
    return (*out_axes, 0) if isinstance(out_axes, tuple) else (out_axes, 0)


def scan(f: Callable | None = None, *, length: int | None = None, reverse: bool = False,
         in_axes: Any = (nnx.Carry, 0), out_axes: Any = (nnx.Carry, 0),
         prefix: str = "blocks", **kwargs: Any) -> Callable:
    """``nnx.scan(f, ...)`` whose hooks work (see the module docstring). Use it as
    ``nnx.scan``: a decorator with keyword arguments, or ``scan(f, ...)``."""
    if f is None:
        return functools.partial(scan, length=length, reverse=reverse, in_axes=in_axes,
                                 out_axes=out_axes, prefix=prefix, **kwargs)
    if in_axes is nnx.Carry:
        raise ConfigError("jaxinterp's nnx scan needs the carry's position: write "
                          "in_axes=(nnx.Carry, 0) rather than in_axes=nnx.Carry")
    flax_scan = functools.partial(nnx.scan, length=length, reverse=reverse, **kwargs)

    @functools.wraps(f)
    def call(*args: Any) -> Any:
        if not active():
            return flax_scan(f, in_axes=in_axes, out_axes=out_axes)(*args)
        scanned = _scanned(in_axes, args)
        n = length
        for axis, arg in scanned:
            leaves = _leaves(arg)
            if n is None and leaves:
                n = int(jnp.shape(leaves[0])[axis])
        if n is None:
            raise ConfigError("scan: pass length= (no scanned argument to read it from)")
        module = _module_path(scanned)
        receivers: Receivers = {}

        def body(*a: Any) -> Any:
            *a, index = a
            with collecting("scan", receivers) as frame, \
                    layer_scope(module or prefix, index, n, module=module):
                out = f(*a)
            return _with_emitted(out, frame.emitted, out_axes)

        axes = (*in_axes, 0) if isinstance(in_axes, tuple) else (in_axes,) * len(args) + (0,)
        out = flax_scan(body, in_axes=axes, out_axes=_added_axes(out_axes))(
            *args, jnp.arange(n, dtype=jnp.int32))
        out, emitted = _split_emitted(out, out_axes)
        deliver(receivers, emitted, stacked=True)
        return out

    return call


def remat(f: Callable | None = None, *, prevent_cse: bool = True,
          static_argnums: int | tuple[int, ...] = (), policy: Callable | None = None,
          **kwargs: Any) -> Callable:
    """``nnx.remat(f, ...)`` whose hooks work: captured values are carried out of the
    rematerialised call, interventions apply inside it. ``f`` may be a module
    (``remat(layer)(x)``) or a function of modules."""
    if f is None:
        return functools.partial(remat, prevent_cse=prevent_cse, static_argnums=static_argnums,
                                 policy=policy, **kwargs)
    statics = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    flax_remat = functools.partial(nnx.remat, prevent_cse=prevent_cse, policy=policy, **kwargs)

    @functools.wraps(f)
    def call(*args: Any, **kw: Any) -> Any:
        target, lead = f, ()
        if isinstance(f, nnx.Module):  # pass the module as an argument, so NNX lifts its state
            target, lead = (lambda m, *a, **k: m(*a, **k)), (f,)
        shift = tuple(i + len(lead) for i in statics)
        if not active():
            return flax_remat(target, static_argnums=shift)(*lead, *args, **kw)
        receivers: Receivers = {}

        def body(*a: Any, **k: Any) -> Any:
            with collecting("remat", receivers) as frame:
                out = target(*a, **k)
            return out, frame.emitted

        out, emitted = flax_remat(body, static_argnums=shift)(*lead, *args, **kw)
        deliver(receivers, emitted, stacked=False)
        return out

    return call


__all__ = ["remat", "scan"]
