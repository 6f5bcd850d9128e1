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

(Vmapping an ``Intervention`` itself also works when every one of its arrays has the
batch axis.) ``pos`` and ``head`` select along the activation's position and head axes,
counted from the end (see :func:`hook_axes`), so they hold for batched ``[batch, pos, d]``
and per-example ``[pos, d]`` activations alike.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int

from jaxinterp.errors import ShapeError
from jaxinterp.hooks._core import Site

_HEADED = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k")
_HEADED_NORMS = ("q_norm", "k_norm")  # RMSNorm over d_head: [batch, pos, head, d_head or 1]
_PATTERNS = ("hook_attn_scores", "hook_pattern")


def _is_headed(name: str) -> bool:
    parts = name.rsplit(".", 2)
    return parts[-1] in _HEADED or (len(parts) > 1 and parts[-2] in _HEADED_NORMS)


def hook_axes(name: str) -> tuple[int | None, int | None]:
    """(pos_axis, head_axis) of a hook's activation, batch first, TransformerLens layout.

    ``[batch, head, query_pos, key_pos]`` for attention scores and patterns, ``[batch,
    pos, head, d]`` for q/k/v/z/result and the q/k norms' hooks, ``[batch, pos, ...]``
    otherwise.
    """
    tail = name.rsplit(".", 1)[-1]
    if tail in _PATTERNS:
        return 2, 1
    if _is_headed(name):
        return 1, 2
    return 1, None


def _axes_from_end(name: str) -> tuple[int, int | None]:
    """The same axes counted from the end, valid with or without a batch axis."""
    tail = name.rsplit(".", 1)[-1]
    if tail in _PATTERNS:
        return -2, -3
    if _is_headed(name):
        return -3, -2
    return -2, None


def layer_in_name(name: str) -> int | None:
    """The layer number in a hook name: the first part that is a number (``blocks.3.attn``)
    or ends in ``_<number>`` (Flax's ``blocks_3.attn``); None if there is none."""
    for part in name.split("."):
        number = part.rsplit("_", 1)[-1]
        if number.isdigit():
            return int(number)
    return None


class Intervention(eqx.Module):
    """Replaces the activation at hooks matching ``name`` by ``fn(x, params)``.

    ``name`` may hold wildcards (``*`` matches any characters, dots included;
    ``blocks.?.hook_out`` matches one character). ``layer`` (an int array, optional)
    restricts it to one layer: the scanned or scoped layer index, or else the number in the
    name (``blocks.0.mlp.hook_out``, ``blocks_0.mlp.hook_out``, see :func:`layer_in_name`).
    Being an array it can be vmapped.
    """

    name: str = eqx.field(static=True)
    fn: Callable[[Array, Any], Array] = eqx.field(static=True)
    params: Any = None
    layer: Array | None = None

    def _active(self, site: Site) -> Any:
        """True, False, or a traced boolean: does this intervention apply at ``site``?"""
        if site.dynamic:
            mask = [fnmatch.fnmatchcase(n, self.name) for n in site.names()]
            if not any(mask):
                return False
            active = True if all(mask) else jnp.asarray(mask)[site.layer - site.first]
        else:
            if not fnmatch.fnmatchcase(site.name(), self.name):
                return False
            active = True
        if self.layer is not None:
            layer = site.layer if site.prefix is not None else layer_in_name(site.name())
            if layer is None:
                return False
            hit = layer == self.layer
            active = hit if active is True else jnp.logical_and(active, hit)
        return active

    def apply(self, site: Site, x: Array) -> Array:
        active = self._active(site)
        if active is False:
            return x
        shown = site.name() if not site.dynamic else site.name("{l}")
        fn = self.fn
        new = fn(x, self.params, site.suffix) if isinstance(fn, _Select) else fn(x, self.params)
        if getattr(new, "shape", None) != x.shape:
            raise ShapeError(
                f"Intervention on {shown!r} returned shape {getattr(new, 'shape', type(new))}; "
                f"the activation has shape {x.shape}"
            )
        new = new.astype(x.dtype)
        return new if active is True else jnp.where(active, new, x)


def _layer(layer: Any) -> Array | None:
    return None if layer is None else jnp.asarray(layer)


def edit(name: str, fn: Callable[[Array, Any], Array], params: Any = None, *,
         layer: ArrayLike | None = None) -> Intervention:
    """The general intervention: ``x -> fn(x, params)`` at hooks matching ``name``.

    ``fn`` is static (keep the same function object across calls to reuse compilations);
    ``params`` is a pytree of arrays and may be vmapped.
    """
    return Intervention(name, fn, params, _layer(layer))


def _index_mask(size: int, index: ArrayLike) -> Bool[Array, " size"]:
    """Boolean mask of length ``size``, true at ``index`` (an int or ints; negative ok)."""
    index = jnp.asarray(index).reshape(1, -1) % size
    return jnp.any(jnp.arange(size)[:, None] == index, axis=-1)


def _select_mask(suffix: str, shape: tuple[int, ...], pos: Any, head: Any) -> Array | None:
    pos_axis, head_axis = _axes_from_end(suffix)
    mask = None
    for what, index, axis in (("position", pos, pos_axis), ("head", head, head_axis)):
        if index is None:
            continue
        if axis is None or -axis > len(shape):
            raise ShapeError(f"Hook {suffix!r} (shape {shape}) has no {what} axis to select")
        axis = len(shape) + axis
        m = _index_mask(shape[axis], index).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        mask = m if mask is None else jnp.logical_and(mask, m)
    return mask


@dataclasses.dataclass(frozen=True)
class _Select:
    """Base of the built-in edits: hashable by value, and told the hook's name."""

    def __call__(self, x: Array, p: dict, suffix: str) -> Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Patch(_Select):
    def __call__(self, x, p, suffix):
        source = p["source"]
        try:
            ok = jnp.broadcast_shapes(source.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ShapeError(
                f"patch source of shape {source.shape} does not broadcast to the activation "
                f"{suffix!r} of shape {x.shape}"
            )
        source = jnp.broadcast_to(source, x.shape).astype(x.dtype)
        mask = _select_mask(suffix, x.shape, p.get("pos"), p.get("head"))
        return source if mask is None else jnp.where(mask, source, x)


@dataclasses.dataclass(frozen=True)
class _Add(_Select):
    def __call__(self, x, p, suffix):
        delta = (p["scale"] * jnp.broadcast_to(p["vector"], x.shape)).astype(x.dtype)
        mask = _select_mask(suffix, x.shape, p.get("pos"), p.get("head"))
        return x + (delta if mask is None else jnp.where(mask, delta, 0))


def _params(**kw: Any) -> dict[str, Array]:
    return {k: jnp.asarray(v) for k, v in kw.items() if v is not None}


def patch(name: str, source: ArrayLike, *, pos: Int[ArrayLike, "..."] | None = None,
          head: Int[ArrayLike, "..."] | None = None, layer: ArrayLike | None = None) -> Intervention:
    """Replaces the activation at ``name`` with ``source``, optionally only at ``pos``/``head``.

    ``source`` broadcasts to the activation's shape (a scalar 0.0 zero-ablates). ``pos``
    and ``head`` are ints or int arrays (several positions at once; negative counts from
    the end) selecting along the hook's position and head axes.
    """
    return Intervention(name, _Patch(), _params(source=source, pos=pos, head=head), _layer(layer))


def add(name: str, vector: ArrayLike, *, scale: ArrayLike = 1.0, pos: ArrayLike | None = None,
        head: ArrayLike | None = None, layer: ArrayLike | None = None) -> Intervention:
    """Adds ``scale * vector`` to the activation (steering); ``vector`` broadcasts."""
    params = _params(vector=vector, scale=scale, pos=pos, head=head)
    return Intervention(name, _Add(), params, _layer(layer))
