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
    def __getitem__(self, name: str | tuple) -> jax.Array:
        """By full name (``"blocks.0.hook_resid_pre"``) or TransformerLens-style
        ``(short name, layer[, layer type])``: ``cache["resid_pre", 0]``,
        ``cache["pattern", -1]``, ``cache["scale", 2, "ln1"]``, ``cache["embed"]``."""
        if isinstance(name, tuple):
            name = self.resolve(*name)
        if name not in self._index:
            if isinstance(name, str) and "." not in name:
                try:
                    name = self.resolve(name)
                except KeyError:
                    raise self._missing(name) from None
            else:
                raise self._missing(name)
        key, pos, ndim = self._index[name]
        value = self._store[key]
        if pos is None:
            return value
        return jax.lax.index_in_dim(value, pos, axis=value.ndim - ndim - 1, keepdims=False)

    def get(self, name: Any, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def _missing(self, name: Any) -> KeyError:
        from jaxinterp.errors import HookNameError, unknown_name_message

        if not isinstance(name, str):
            return HookNameError(f"cache keys are hook names or (name, layer) tuples, got {name!r}")
        msg = unknown_name_message("cache entry", name, list(self._index))
        return HookNameError(msg + " (only the names asked for in run_with_cache(names=...) are kept)")

    def resolve(self, short: str, layer: int | None = None, layer_type: str | None = None) -> str:
        """The full name in this cache of a short name (see :meth:`__getitem__`).

        ``layer`` may be negative (counted from the last layer present in the cache).
        """
        from jaxinterp.errors import HookNameError, IndexRangeError

        if short.startswith("hook_") or "." in short:
            tail = short.rsplit(".", 1)[-1]
        else:
            tail = "hook_" + {"attn": "pattern", "attn_logits": "attn_scores"}.get(short, short)
        if layer_type is not None:
            tail = f"{layer_type}.{tail}"
        if layer is None:
            hits = [n for n in self._index if n == tail or (n.endswith("." + tail) and not n.startswith("blocks."))]
        else:
            layers = sorted({int(n.split(".")[1]) for n in self._index
                             if n.startswith("blocks.") and n.split(".")[1].isdigit()})
            if not layers:
                raise HookNameError(f"the cache holds no per-layer activations; it has {list(self._index)[:6]}")
            n = layers[-1] + 1
            if not isinstance(layer, int) or not -n <= layer < n:
                raise IndexRangeError(f"layer {layer!r} is out of range for this cache (layers 0..{n - 1})")
            layer %= n
            hits = [k for k in self._index if k.startswith(f"blocks.{layer}.")
                    and (k.endswith("." + tail) or k == f"blocks.{layer}.{tail}")]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            where = "" if layer is None else f" at layer {layer}"
            raise HookNameError(f"no cached activation {short!r}{where}; the cache has "
                                f"{', '.join(list(self._index)[:8])}{' ...' if len(self) > 8 else ''}")
        raise HookNameError(f"{short!r} is ambiguous in this cache ({hits}); pass the layer type, "
                            f"e.g. cache[{short!r}, layer, 'ln1'], or the full name")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, tuple):
            try:
                name = self.resolve(*name)
            except (KeyError, IndexError):
                return False
        return name in self._index

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n!r}: {tuple(self[n].shape)}" for n in list(self)[:6])
        more = f", ... ({len(self)} names)" if len(self) > 6 else ""
        return f"Cache({{{shapes}{more}}})"

    # Stacked access ----------------------------------------------------------------
    def stacked(self, pattern: str) -> jax.Array:
        """All layers of one hook, stacked on a new leading layer axis:
        ``cache.stacked("blocks.*.hook_resid_post")`` (or ``"blocks.{l}.hook_resid_post"``,
        or just ``"hook_resid_post"``) is ``[n_layers, batch, pos, d_model]``. A scanned
        model's stack is returned as stored (no copy); layers run in a Python loop are
        stacked here. Its layer axis holds :meth:`layers` ``(pattern)``."""
        names = self.layers(pattern)
        key, _, _ = self._index[names[0]]
        stored = [self._index[n] for n in names]
        if all(k == key and pos == i for i, (k, pos, _) in enumerate(stored)) and \
                self._store[key].shape[self._store[key].ndim - stored[0][2] - 1] == len(names):
            return self._store[key]
        values = [self[n] for n in names]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            from jaxinterp.errors import ShapeError

            detail = ", ".join(f"{n}: {tuple(v.shape)}" for n, v in zip(names, values, strict=True))
            raise ShapeError(f"cannot stack {pattern!r}: its layers have different shapes ({detail})")
        axis = values[0].ndim - stored[0][2]  # vmapped caches keep their leading axes first
        return jax.numpy.stack(values, axis=axis)

    def layers(self, pattern: str) -> list[str]:
        """The names, in layer order, along the layer axis of :meth:`stacked`."""
        from jaxinterp.errors import HookNameError, unknown_name_message
        from jaxinterp.hooks.interventions import layer_in_name
        from jaxinterp.hooks.patterns import matches

        hits = [n for n in self._index if matches(n, pattern)]
        if not hits and "." not in pattern:
            hits = [n for n in self._index if n.endswith("." + pattern)]
        if not hits:
            sites = sorted({_template(n) for n in self._index if layer_in_name(n) is not None})
            raise HookNameError(unknown_name_message("stacked hook", pattern, sites))
        flat = [n for n in hits if layer_in_name(n) is None]
        if flat:
            raise HookNameError(f"cannot stack {pattern!r}: {flat[0]!r} is not inside a layer (its "
                                "name has no layer number like blocks.3.…)")
        groups = sorted({_template(n) for n in hits})
        if len(groups) > 1:
            raise HookNameError(f"{pattern!r} matches several per-layer hooks: {groups}; name one")
        return sorted(hits, key=layer_in_name)

    # Pytree ------------------------------------------------------------------------
    def tree_flatten_with_keys(self):
        keys = tuple(sorted(self._store))
        children = [(jax.tree_util.DictKey(k), self._store[k]) for k in keys]
        return children, _Aux(tuple(self._index.items()), keys)

    @classmethod
    def tree_unflatten(cls, aux: _Aux, children):
        return cls(dict(zip(aux.keys, children, strict=True)), dict(aux.index))


def _template(name: str) -> str:
    """The per-layer hook a name belongs to: its layer number replaced by ``*``
    (``blocks.3.attn.hook_z`` -> ``blocks.*.attn.hook_z``, ``blocks_3.hook_out`` -> ``blocks_*.hook_out``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        head, _, number = part.rpartition("_")
        if number.isdigit():
            parts[i] = f"{head}_*" if head else "*"
            return ".".join(parts)
    return name
