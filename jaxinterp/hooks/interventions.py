"""Interventions: what to do to an activation at a hook point, as a pytree of arrays.

Activation patching replaces an activation of one run (the *corrupted* prompt) with the
same activation from another run (the *clean* prompt) and measures how much of the clean
behaviour comes back; ablation replaces it with zero or a mean; steering adds a vector.
All three are ``x -> fn(x, params)`` at the hook points whose names match a pattern.

An :class:`Intervention` keeps the name pattern and the editing function static and
everything else (``layer``, positions, heads, source activations, scales) as arrays. A
sweep over targets is then one ``vmap`` and one compilation: build the intervention
inside the vmapped function from the arrays that vary, close over the ones that do not::

    def run(layer, pos):
        iv = ji.patch("blocks.*.hook_resid_pre", clean_resid[layer], layer=layer, pos=pos)
        return ji.run_with_hooks(model, corrupted_tokens, interventions=[iv])

    logits = jax.vmap(jax.vmap(run, (None, 0)), (0, None))(jnp.arange(n_layers), jnp.arange(n_pos))

**Where** ``pos=`` and ``head=`` select comes from the hook's layout: the model declares
each hook's axes when it tags the value (``jaxinterp.models.hook_specs``); a user's own
hook either declares them (``ji.hook(name, x, axes=("batch", "pos", "d_model"))``) or the
intervention states them (``patch(..., axes=...)``). Nothing is guessed. Axes count from
the end, so per-example ``[pos, d]`` values under a ``vmap`` select the same axes.

**Indices** follow Python: ``-1`` is the last layer, position or head. A concrete index
out of range raises :class:`~jaxinterp.errors.IndexRangeError` naming the index, its range
and the hook. A *traced* index (inside ``vmap``/``jit``) cannot be checked while tracing:
negative values still count from the end, and a value outside ``[-size, size)`` selects
nothing (the intervention does not apply there). Wrap the call in :func:`checked` to have
such an index reported as an error instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from jaxinterp.errors import ArgumentTypeError, IndexRangeError, ShapeError
from jaxinterp.hooks._checks import check_in_range, is_traced
from jaxinterp.hooks._core import Site
from jaxinterp.hooks.patterns import matches


def layer_in_name(name: str) -> int | None:
    """The layer number in a hook name: the first part before the hook's own (last) part
    that is a number (``blocks.3.attn``) or ends in ``_<number>`` (Flax's
    ``blocks_3.attn``); None if there is none."""
    for part in name.split(".")[:-1]:
        number = part.rsplit("_", 1)[-1]
        if number.isdigit():
            return int(number)
    return None


def shown_name(site: Site) -> str:
    return site.shown


def _normalize(index: Array, size: int) -> Array:
    return jnp.where(index < 0, index + size, index)


def check_index(what: str, index: Any, size: int, where: str) -> Any:
    """Validates a concrete index (int or int array) against ``[-size, size)`` and returns
    it with negatives counted from the end; a traced index is returned normalised as far
    as tracing allows (and checked under :func:`checked`)."""
    if index is None:
        return None
    if is_traced(index):
        check_in_range(index, size, f"{what} out of range for {where} (size {size})")
        return _normalize(index, size)
    host = np.asarray(index)
    if host.dtype == bool or not np.issubdtype(host.dtype, np.integer):
        raise IndexRangeError(f"{what} must be an int or int array, got {index!r} for {where}")
    bad = host[(host < -size) | (host >= size)]
    if bad.size:
        raise IndexRangeError(f"{what} {int(bad.flat[0])} is out of range for {where}: valid "
                              f"{what}s are {-size}..{size - 1} (size {size})")
    return np.where(host < 0, host + size, host)


class Intervention(eqx.Module):
    """Replaces the activation at hooks matching ``name`` by ``fn(x, params)``.

    ``name`` may be a pattern (:mod:`jaxinterp.hooks.patterns`: ``{l}`` a layer number,
    ``*`` within one part, ``**`` across parts). ``layer`` (an int array, optional)
    restricts it to one layer: the scanned or scoped layer index, or else the number in the
    name (``blocks.0.mlp.hook_out``, ``blocks_0.mlp.hook_out``, see :func:`layer_in_name`).
    Being an array it can be vmapped. ``axes`` states the hook's layout when its tag does
    not; ``n_layers`` (set by ``run_with_hooks`` from the model) lets a traced negative
    ``layer`` count from the end.
    """

    name: str = eqx.field(static=True)
    fn: Callable[..., Array] = eqx.field(static=True)
    params: Any = None
    layer: Array | None = None
    axes: tuple[str, ...] | None = eqx.field(static=True, default=None)
    n_layers: int | None = eqx.field(static=True, default=None)

    def _active(self, site: Site) -> Any:
        """True, False, or a traced boolean: does this intervention apply at ``site``?"""
        if site.dynamic:
            mask = [matches(n, self.name) for n in site.names()]
            if not any(mask):
                return False
            active = True if all(mask) else jnp.asarray(mask)[site.layer - site.first]
        else:
            if not matches(site.name(), self.name):
                return False
            active = True
        if self.layer is None:
            return active
        here = site.layer if site.prefix is not None else layer_in_name(site.name())
        if here is None:
            return False
        n = self.n_layers if self.n_layers is not None else (
            site.first + site.n_layers if site.dynamic else None)
        if not is_traced(self.layer):
            if np.ndim(self.layer) != 0:
                raise IndexRangeError(f"layer of shape {np.shape(self.layer)} on {self.name!r}: an "
                                      "intervention holding several layers must be vmapped over")
            want = int(np.asarray(self.layer))
            if want < 0 and n is not None:
                want += n
            hit = here == want
        else:
            layer = self.layer if n is None else check_index("layer", self.layer, n, repr(self.name))
            hit = here == layer
        if hit is False:
            return False
        return hit if active is True else jnp.logical_and(active, hit)

    def apply(self, site: Site, x: Array) -> tuple[Array, bool]:
        """The activation after this intervention, and whether it can have applied."""
        active = self._active(site)
        if active is False:
            return x, False
        shown = shown_name(site)
        fn = self.fn
        if isinstance(fn, Select):
            new = fn(x, self.params, Layout(shown, site.axes or self.axes))
        else:
            new = fn(x, self.params)
        if getattr(new, "shape", None) != x.shape:
            raise ShapeError(
                f"Intervention on {shown!r} returned shape {getattr(new, 'shape', type(new))}; "
                f"the activation has shape {x.shape}"
            )
        new = new.astype(x.dtype)
        return (new if active is True else jnp.where(active, new, x)), True


def _layer(layer: Any) -> Array | None:
    if layer is None:
        return None
    out = jnp.asarray(layer)
    if not jnp.issubdtype(out.dtype, jnp.integer) or out.dtype == bool:
        raise IndexRangeError(f"layer must be an int, got {layer!r}")
    return out


def _axes(axes: Any) -> tuple[str, ...] | None:
    if axes is None:
        return None
    if isinstance(axes, str) or not all(isinstance(a, str) for a in axes):
        raise ShapeError(f"axes must be a tuple of axis names like ('batch', 'pos', 'd_model'), got {axes!r}")
    return tuple(axes)


def edit(name: str, fn: Callable[[Array, Any], Array], params: Any = None, *,
         layer: ArrayLike | None = None) -> Intervention:
    """The general intervention: ``x -> fn(x, params)`` at hooks matching ``name``.

    ``fn`` is static (keep the same function object across calls to reuse compilations);
    ``params`` is a pytree of arrays and may be vmapped::

        def double_head(z, p):               # z: [batch, pos, head, d_head]
            return z.at[..., p["head"], :].multiply(2.0)

        logits = ji.run_with_hooks(model, tokens, interventions=[
            ji.edit("blocks.1.attn.hook_z", double_head, {"head": 3})])
    """
    if not callable(fn):
        raise ArgumentTypeError(f"edit needs a function fn(x, params), got {type(fn).__name__}")
    return Intervention(name, fn, params, _layer(layer))


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a built-in edit knows about the hook it runs at: its name and axes."""

    name: str
    axes: tuple[str, ...] | None

    def axis(self, what: str, ndim: int) -> int:
        """Index (from the end) of axis ``what`` (``"pos"`` or ``"head"``) in a value."""
        if self.axes is None:
            raise ShapeError(
                f"{what}= needs the layout of hook {self.name!r}, which its tag does not declare: "
                f"pass axes=('batch', 'pos', ...) to the intervention, or tag the value with "
                f"ji.hook(name, x, axes=...)")
        if what not in self.axes:
            raise ShapeError(f"hook {self.name!r} (axes {self.axes}) has no {what} axis to select")
        axis = self.axes.index(what) - len(self.axes)
        if -axis > ndim:
            raise ShapeError(f"hook {self.name!r} value of rank {ndim} cannot hold axes {self.axes}")
        return axis


def _index_mask(size: int, index: Any, what: str, where: str) -> Bool[Array, " size"]:
    """Boolean mask of length ``size``, true at ``index`` (an int or ints; negative ok)."""
    index = jnp.asarray(check_index(what, index, size, where)).reshape(1, -1)
    return jnp.any(jnp.arange(size)[:, None] == index, axis=-1)


def select_mask(layout: Layout, shape: tuple[int, ...], pos: Any, head: Any) -> Array | None:
    mask = None
    for what, index in (("pos", pos), ("head", head)):
        if index is None:
            continue
        axis = len(shape) + layout.axis(what, len(shape))
        m = _index_mask(shape[axis], index, "position" if what == "pos" else "head",
                        f"hook {layout.name!r}").reshape([-1 if a == axis else 1 for a in range(len(shape))])
        mask = m if mask is None else jnp.logical_and(mask, m)
    return mask


class Select:
    """Base of the built-in edits: hashable by value, and told the hook's layout."""

    def __call__(self, x: Array, p: dict, layout: Layout) -> Array:
        raise NotImplementedError


def _broadcast(what: str, value: Array, x: Array, name: str) -> Array:
    try:
        ok = jnp.broadcast_shapes(value.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"{what} of shape {value.shape} does not broadcast to the activation "
                         f"{name!r} of shape {x.shape}")
    return jnp.broadcast_to(value, x.shape)


@dataclasses.dataclass(frozen=True)
class _Patch(Select):
    def __call__(self, x, p, layout):
        source = _broadcast("patch source", p["source"], x, layout.name).astype(x.dtype)
        mask = select_mask(layout, x.shape, p.get("pos"), p.get("head"))
        return source if mask is None else jnp.where(mask, source, x)


@dataclasses.dataclass(frozen=True)
class _Add(Select):
    def __call__(self, x, p, layout):
        delta = (p["scale"] * _broadcast("add vector", p["vector"], x, layout.name)).astype(x.dtype)
        mask = select_mask(layout, x.shape, p.get("pos"), p.get("head"))
        return x + (delta if mask is None else jnp.where(mask, delta, 0))


def _index_param(what: str, index: Any) -> Array | None:
    if index is None:
        return None
    if is_traced(index):
        return index
    host = np.asarray(index)
    if host.dtype == bool or not np.issubdtype(host.dtype, np.integer):
        raise IndexRangeError(f"{what} must be an int or int array, got {index!r}")
    return jnp.asarray(host, jnp.int32)


def patch(name: str, source: ArrayLike, *, pos: Int[ArrayLike, "..."] | None = None,
          head: Int[ArrayLike, "..."] | None = None, layer: ArrayLike | None = None,
          axes: tuple[str, ...] | None = None) -> Intervention:
    """Replaces the activation at ``name`` with ``source``, optionally only at ``pos``/``head``.

    ``source`` broadcasts to the activation's shape (a scalar 0.0 zero-ablates). ``pos``
    and ``head`` are ints or int arrays (several positions at once; negative counts from
    the end) selecting along the hook's position and head axes. ``axes`` gives the layout
    of a hook whose tag does not declare it.
    """
    params = {"source": jnp.asarray(source), "pos": _index_param("pos", pos),
              "head": _index_param("head", head)}
    params = {k: v for k, v in params.items() if v is not None}
    return Intervention(name, _Patch(), params, _layer(layer), _axes(axes))


def add(name: str, vector: ArrayLike, *, scale: ArrayLike = 1.0, pos: ArrayLike | None = None,
        head: ArrayLike | None = None, layer: ArrayLike | None = None,
        axes: tuple[str, ...] | None = None) -> Intervention:
    """Adds ``scale * vector`` to the activation (steering); ``vector`` broadcasts to it.

    With ``head=`` on a per-head hook (``attn.hook_z``: ``[batch, pos, head, d_head]``),
    ``vector`` is a ``[d_head]`` direction added to that head only.
    """
    params = {"vector": jnp.asarray(vector), "scale": jnp.asarray(scale),
              "pos": _index_param("pos", pos), "head": _index_param("head", head)}
    params = {k: v for k, v in params.items() if v is not None}
    return Intervention(name, _Add(), params, _layer(layer), _axes(axes))


def with_layer_count(iv: Intervention, n_layers: int) -> Intervention:
    """``iv`` with its layer checked against ``n_layers`` (negatives resolved when concrete)."""
    layer = iv.layer
    if layer is not None and not is_traced(layer):
        layer = jnp.asarray(check_index("layer", np.asarray(layer), n_layers, f"hook {iv.name!r}"))
    return dataclasses.replace(iv, layer=layer, n_layers=n_layers)


def concrete_layer(iv: Intervention) -> int | None:
    """The intervention's layer when it is one concrete int (not traced, not a batch)."""
    if iv.layer is None or is_traced(iv.layer) or np.ndim(iv.layer) != 0:
        return None
    return int(np.asarray(iv.layer))

