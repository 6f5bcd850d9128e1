"""Transforms over hook points: capture activations, and intervene on them.

``run_with_cache(fn, *args, names=...)`` runs ``fn`` and returns ``(output, cache)`` where
``cache`` is a plain ``dict`` from TransformerLens-style names to arrays, holding only the
names asked for. ``run_with_hooks(fn, *args, interventions=[...])`` runs ``fn`` with
activations replaced. Both are pure functions of their inputs: call them inside
``jax.jit``, ``jax.grad`` or ``jax.vmap``.

An :class:`Intervention` is a pytree: the hook-name pattern and the editing function are
static, and its parameters (``layer``, positions, heads, source activations, scales) are
arrays. A batch of interventions that differ only in those arrays is therefore one
``vmap`` and one compilation::

    ivs = ji.patch("blocks.*.hook_resid_pre", source=clean_resid, layer=jnp.arange(4), pos=2)
    out = jax.vmap(lambda iv: ji.run_with_hooks(model, tokens, interventions=[iv]))(ivs)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxinterp.errors import HookNameError, ShapeError, unknown_name_message
from jaxinterp.hooks._core import Handler, Site, handler_scope

NameSpec = str | Sequence[str] | Callable[[str], bool] | None


def _matcher(spec: NameSpec) -> Callable[[str], bool]:
    if spec is None:
        return lambda name: True
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else list(spec)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _patterns(spec: NameSpec) -> list[str]:
    if spec is None or callable(spec):
        return []
    return [spec] if isinstance(spec, str) else list(spec)


# Axis layout of the standard hooks: which axis is the (query) position, which the head.
def hook_axes(name: str) -> tuple[int | None, int | None]:
    """(pos_axis, head_axis) of a hook's activation, batch first, TransformerLens layout."""
    tail = name.rsplit(".", 1)[-1]
    if tail in ("hook_attn_scores", "hook_pattern"):
        return 2, 1  # [batch, head, query_pos, key_pos]
    if tail in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k"):
        return 1, 2  # [batch, pos, head, d]
    return 1, None  # [batch, pos, ...]


class Intervention(eqx.Module):
    """Replaces the activation at hooks matching ``name`` by ``fn(x, params)``.

    ``name`` may hold wildcards (``blocks.*.hook_resid_pre``). ``layer`` (an int array,
    optional) restricts a layered hook to one layer; being an array it can be vmapped.
    """

    name: str = eqx.field(static=True)
    fn: Callable[[jax.Array, Any], jax.Array] = eqx.field(static=True)
    params: Any = None
    layer: jax.Array | None = None

    def _active(self, site: Site) -> Any:
        """True, False, or a traced boolean: does this intervention apply at ``site``?"""
        if site.dynamic:
            mask = [fnmatch.fnmatchcase(n, self.name) for n in site.names()]
            if not any(mask):
                return False
            active = True if all(mask) else jnp.asarray(mask)[site.layer]
        else:
            if not fnmatch.fnmatchcase(site.name(), self.name):
                return False
            active = True
        if self.layer is not None:
            if site.layer is None:
                return False
            hit = site.layer == self.layer
            active = hit if active is True else jnp.logical_and(active, hit)
        return active

    def apply(self, site: Site, x: jax.Array) -> jax.Array:
        active = self._active(site)
        if active is False:
            return x
        new = self.fn(x, self.params)
        if new.shape != x.shape:
            raise ShapeError(
                f"Intervention on {site.name() if not site.dynamic else site.name('{l}')!r} "
                f"returned shape {new.shape}; the activation has shape {x.shape}"
            )
        new = new.astype(x.dtype)
        return new if active is True else jnp.where(active, new, x)


def edit(name: str, fn: Callable[[jax.Array, Any], jax.Array], params: Any = None, *,
         layer: Any = None) -> Intervention:
    """The general intervention: ``x -> fn(x, params)`` at hooks matching ``name``."""
    return Intervention(name, fn, params, None if layer is None else jnp.asarray(layer))


def _index_mask(size: int, index: Any) -> jax.Array:
    """Boolean mask of length ``size`` true at ``index`` (an int, or an array of ints)."""
    index = jnp.asarray(index)
    return jnp.any(jnp.arange(size)[:, None] == index.reshape(1, -1), axis=-1)


def _select_mask(name: str, shape: tuple[int, ...], pos: Any, head: Any) -> jax.Array | None:
    pos_axis, head_axis = hook_axes(name)
    mask = None
    for index, axis in ((pos, pos_axis), (head, head_axis)):
        if index is None:
            continue
        if axis is None or axis >= len(shape):
            raise ShapeError(f"Hook {name!r} (shape {shape}) has no axis for that selection")
        m = _index_mask(shape[axis], index).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        mask = m if mask is None else jnp.logical_and(mask, m)
    return mask


def _patch_fn(name: str) -> Callable:
    def fn(x, p):
        source = jnp.broadcast_to(p["source"], x.shape)
        mask = _select_mask(name, x.shape, p.get("pos"), p.get("head"))
        return source if mask is None else jnp.where(mask, source, x)

    return fn


def patch(name: str, source: Any, *, pos: Any = None, head: Any = None, layer: Any = None) -> Intervention:
    """Replaces the activation at ``name`` with ``source``, optionally only at ``pos``/``head``.

    ``source`` broadcasts to the activation's shape (a scalar 0.0 zero-ablates). ``pos``
    and ``head`` select along the hook's position and head axes (see :func:`hook_axes`);
    with ``layer`` they may be arrays with a leading batch axis for ``vmap``.
    """
    params = {"source": jnp.asarray(source)}
    if pos is not None:
        params["pos"] = jnp.asarray(pos)
    if head is not None:
        params["head"] = jnp.asarray(head)
    return Intervention(name, _patch_fn(name), params, None if layer is None else jnp.asarray(layer))


def _add_fn(name: str) -> Callable:
    def fn(x, p):
        delta = p["scale"] * jnp.broadcast_to(p["vector"], x.shape)
        mask = _select_mask(name, x.shape, p.get("pos"), None)
        return x + (delta if mask is None else jnp.where(mask, delta, 0))

    return fn


def add(name: str, vector: Any, *, scale: Any = 1.0, pos: Any = None, layer: Any = None) -> Intervention:
    """Adds ``scale * vector`` to the activation (steering); ``vector`` broadcasts."""
    params = {"vector": jnp.asarray(vector), "scale": jnp.asarray(scale)}
    if pos is not None:
        params["pos"] = jnp.asarray(pos)
    return Intervention(name, _add_fn(name), params, None if layer is None else jnp.asarray(layer))


# Handlers -----------------------------------------------------------------------------


class _Recorder(Handler):
    """Tracks which hook names were reached (in order), for validation and ordering."""

    def __init__(self):
        self.seen: dict[str, None] = {}

    def note(self, site: Site) -> None:
        for n in site.names():
            self.seen.setdefault(n, None)


class _Capture(_Recorder):
    def __init__(self, spec: NameSpec):
        super().__init__()
        self.match = _matcher(spec)
        self.cache: dict[str, jax.Array] = {}

    def wants(self, name: str) -> bool:
        return self.match(name)

    def handle(self, site, x, frames_above):
        self.note(site)
        if not site.dynamic:
            if self.match(site.name()):
                self.cache[site.name()] = x
            return x
        layers = [i for i, n in enumerate(site.names()) if self.match(n)]
        if layers:
            frames_above[-1].emit(self, site, layers, x)
        return x

    def receive(self, name, value):
        self.cache[name] = value


class _Intervene(_Recorder):
    def __init__(self, interventions: Sequence[Intervention]):
        super().__init__()
        self.interventions = list(interventions)

    def wants(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, iv.name) for iv in self.interventions)

    def handle(self, site, x, frames_above):
        self.note(site)
        for iv in self.interventions:
            x = iv.apply(site, x)
        return x


def _known_names(fn: Any) -> list[str] | None:
    names = getattr(fn, "hook_names", None)
    return list(names()) if callable(names) else None


def _validate(patterns: Iterable[str], valid: Iterable[str], after_run: bool = False) -> None:
    valid = list(valid)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(v, p) for v in valid):
            msg = unknown_name_message("hook name", p, valid)
            if after_run:
                msg += " (no hook with that name was reached while running the function)"
            raise HookNameError(msg)


def _ordered(cache: dict[str, jax.Array], seen: dict[str, None]) -> dict[str, jax.Array]:
    """Cache in execution order, layered names grouped by layer (blocks.0.*, blocks.1.*...)."""
    order = {n: i for i, n in enumerate(seen)}

    def layer_of(name: str) -> int | None:
        return next((int(p) for p in name.split(".") if p.isdigit()), None)

    layered = [order[n] for n in cache if layer_of(n) is not None and n in order]
    group = min(layered, default=0)

    def key(name: str):
        i = order.get(name, len(order))
        layer = layer_of(name)
        return (i, 0, 0) if layer is None else (group, layer, i)

    return {n: cache[n] for n in sorted(cache, key=key)}


def run_with_hooks(fn: Callable, *args: Any, interventions: Sequence[Intervention] = (),
                   names: NameSpec = False, **kwargs: Any) -> Any:
    """Calls ``fn(*args, **kwargs)`` with ``interventions`` applied at their hook points.

    With ``names`` (anything but ``False``) also captures those activations, after the
    interventions, and returns ``(output, cache)``.
    """
    interventions = list(interventions)
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"interventions must be ji.Intervention objects, got {type(iv).__name__}")
    capture = names is not False
    known = _known_names(fn)
    wanted = [iv.name for iv in interventions] + (_patterns(names) if capture else [])
    if known is not None:
        _validate(wanted, known)
    inner, outer = _Intervene(interventions), _Capture(names if capture else (lambda n: False))
    with handler_scope(outer), handler_scope(inner):
        out = fn(*args, **kwargs)
    if known is None:
        _validate(wanted, outer.seen, after_run=True)
    if not capture:
        return out
    return out, _ordered(outer.cache, outer.seen)


def run_with_cache(fn: Callable, *args: Any, names: NameSpec = None, **kwargs: Any) -> tuple[Any, dict]:
    """Calls ``fn(*args, **kwargs)`` and returns ``(output, cache)``.

    ``names``: a hook name, a list of names or wildcard patterns (``blocks.*.hook_z``), a
    predicate on names, or ``None`` for every hook. Only the names asked for are kept.
    """
    return run_with_hooks(fn, *args, interventions=(), names=names, **kwargs)


def hook_names(fn: Callable, *args: Any, **kwargs: Any) -> list[str]:
    """Every hook name ``fn(*args)`` reaches, in order, found by an abstract trace (no FLOPs)."""
    known = _known_names(fn)
    if known is not None:
        return known
    seen: list[str] = []

    def probe(*a):
        rec = _Capture(lambda n: False)
        with handler_scope(rec):
            out = fn(*a, **kwargs)
        seen.extend(rec.seen)
        return out

    jax.eval_shape(probe, *args)
    return list(_ordered(dict.fromkeys(seen), dict.fromkeys(seen)))
