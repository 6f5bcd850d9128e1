"""The activation cache: TransformerLens names over stacked per-layer arrays.

A scanned model produces each layered activation once, stacked over layers. The cache
keeps it that way (one array per hook site, not one per layer per site, so a jitted
``run_with_cache`` over every hook of a 12-layer model has as many outputs as a 1-layer
one) and presents per-layer names on access::

    cache["blocks.3.hook_resid_post"]          # [batch, pos, d_model], sliced on access
    cache.stacked("blocks.*.hook_resid_post")  # [n_layers, batch, pos, d_model], no copy
    list(cache)                                # names in execution order, blocks.0.* first

It is a read-only ``Mapping`` and a pytree whose leaves are the stored arrays, so it
leaves ``jit`` and ``vmap`` intact. After ``vmap`` the stored arrays gain leading axes;
per-layer access still finds the layer axis, since it counts from the end.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

import jax

# name -> (storage key, index along the layer axis or None, ndim of one layer's value)
_Entry = tuple[str, int | None, int]


class _Aux:
    """Static part of a Cache's pytree: compares by content, keeps the order."""

    def __init__(self, index: tuple[tuple[str, _Entry], ...], keys: tuple[str, ...]):
        self.index, self.keys = index, keys
        self._sorted = tuple(sorted(index))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Aux) and self._sorted == other._sorted and self.keys == other.keys

    def __hash__(self) -> int:
        return hash((self._sorted, self.keys))


@jax.tree_util.register_pytree_with_keys_class
class Cache(Mapping):
    """Activations by hook name, in execution order (see the module docstring)."""

    def __init__(self, store: Mapping[str, Any] | None = None,
                 index: Mapping[str, _Entry] | None = None):
        store = dict(store or {})
        if index is None:  # a plain {name: array} mapping
            index = {name: (name, None, getattr(value, "ndim", 0)) for name, value in store.items()}
        self._store = store
        self._index = dict(index)

    # Mapping -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> jax.Array:
        key, pos, ndim = self._index[name]
        value = self._store[key]
        if pos is None:
            return value
        return jax.lax.index_in_dim(value, pos, axis=value.ndim - ndim - 1, keepdims=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n!r}: {tuple(self[n].shape)}" for n in list(self)[:6])
        more = f", ... ({len(self)} names)" if len(self) > 6 else ""
        return f"Cache({{{shapes}{more}}})"

    # Stacked access ----------------------------------------------------------------
    def stacked(self, pattern: str) -> jax.Array:
        """The stored per-layer stack of a layered hook, e.g. ``"blocks.*.hook_resid_post"``
        or just ``"hook_resid_post"``; its layer axis holds :meth:`layers` ``(pattern)``."""
        key = self._stack_key(pattern)
        return self._store[key]

    def layers(self, pattern: str) -> list[str]:
        """The names, in layer order, along the layer axis of :meth:`stacked`."""
        key = self._stack_key(pattern)
        entries = [(pos, n) for n, (k, pos, _) in self._index.items() if k == key]
        return [n for _, n in sorted(entries)]

    def _stack_key(self, pattern: str) -> str:
        keys = {k for k, pos, _ in self._index.values() if pos is not None}
        hits = [k for k in keys if fnmatch.fnmatchcase(k, pattern) or k.endswith("." + pattern)]
        if len(hits) != 1:
            from jaxinterp.errors import HookNameError, unknown_name_message

            if hits:
                raise HookNameError(f"{pattern!r} matches several stacked hooks: {sorted(hits)}")
            raise HookNameError(unknown_name_message("stacked hook", pattern, sorted(keys)))
        return hits[0]

    # Pytree ------------------------------------------------------------------------
    def tree_flatten_with_keys(self):
        keys = tuple(sorted(self._store))
        children = [(jax.tree_util.DictKey(k), self._store[k]) for k in keys]
        return children, _Aux(tuple(self._index.items()), keys)

    @classmethod
    def tree_unflatten(cls, aux: _Aux, children):
        return cls(dict(zip(aux.keys, children, strict=True)), dict(aux.index))
