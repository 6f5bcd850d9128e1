"""Arrays with named axes: what every sweep, lens, score and feature statistic returns.

A patching sweep over layers and positions is a ``[n_layers, pos]`` array whose axes a
plot, a table or a reader must know. :class:`NamedArray` carries them: ``values`` (a JAX
array), ``axes`` (``("layer", "pos")``), optional tick ``labels`` per axis (the prompt's
tokens for ``pos``) and ``attrs`` (what was measured: the component, the clean and
corrupted metric). ``np.asarray(result)`` gives the plain array; ``result.top(5)`` the
five largest entries with readable labels (``L3H7``, ``pos 10 ' John'``)::

    >>> heads = ji.activation_patching(model, clean, corrupted, metric, "z")
    >>> print(heads.normalized().top(3))
    rank  entry   value
       1  L2H1    0.8123
       2  L1H3    0.2010
       3  L0H0   -0.0442

This module sits below every layer that produces results (``interp``, ``circuits``,
``sae``, ``features``, ``viz``), so they all share one result type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxinterp.errors import IndexRangeError, ShapeError


class Entry(NamedTuple):
    """One element of a :class:`NamedArray`: a readable ``label``, its ``value`` and the
    ``index`` by axis name (``{"layer": 2, "head": 1}``)."""

    label: str
    value: float
    index: dict[str, int]


class Entries(list):
    """A list of :class:`Entry` that prints as a table."""

    def __str__(self) -> str:
        width = max([len("entry")] + [len(e.label) for e in self])
        rows = [f"rank  {'entry':<{width}}  value"]
        rows += [f"{i + 1:>4}  {e.label:<{width}}  {e.value: .4g}" for i, e in enumerate(self)]
        return "\n".join(rows)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows the table
        p.text(str(self))


_ORDERS = ("abs", "largest", "smallest")


@dataclasses.dataclass(frozen=True)
class NamedArray:
    """``values`` with one name per axis, optional tick labels and free-form ``attrs``."""

    values: jax.Array
    axes: tuple[str, ...]
    labels: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.axes) != np.ndim(self.values):
            raise ShapeError(f"NamedArray with axes {self.axes} needs {len(self.axes)} dims, "
                             f"got shape {np.shape(self.values)}")
        for axis, ticks in self.labels.items():
            if axis not in self.axes:
                raise ShapeError(f"labels for unknown axis {axis!r}; axes are {self.axes}")
            if len(ticks) != np.shape(self.values)[self.axes.index(axis)]:
                raise ShapeError(f"{len(ticks)} labels for axis {axis!r} of size "
                                 f"{np.shape(self.values)[self.axes.index(axis)]}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.values))

    @property
    def ndim(self) -> int:
        return len(self.axes)

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.values)
        return out if dtype is None else out.astype(dtype)

    def sizes(self) -> dict[str, int]:
        return dict(zip(self.axes, self.shape, strict=True))

    def sel(self, **index: int) -> NamedArray:
        """Index axes by name: ``result.sel(layer=3)`` drops the ``layer`` axis."""
        unknown = set(index) - set(self.axes)
        if unknown:
            raise ShapeError(f"unknown axes {sorted(unknown)}; axes are {self.axes}")
        for axis, i in index.items():
            n = self.sizes()[axis]
            if not isinstance(i, int | np.integer) or not -n <= int(i) < n:
                raise IndexRangeError(f"index {i!r} is out of range for axis {axis!r} of size {n}")
        key = tuple(index.get(a, slice(None)) for a in self.axes)
        kept = tuple(a for a in self.axes if a not in index)
        return NamedArray(self.values[key], kept,
                          {a: t for a, t in self.labels.items() if a in kept}, dict(self.attrs))

    def normalized(self) -> NamedArray:
        """``(x - corrupted) / (clean - corrupted)``: 0 = corrupted behaviour, 1 = clean.

        Needs ``attrs["clean"]`` and ``attrs["corrupted"]`` (set by the patching sweeps).
        """
        if "clean" not in self.attrs or "corrupted" not in self.attrs:
            raise ShapeError("normalized() needs attrs 'clean' and 'corrupted' (metric baselines)")
        clean, corrupted = self.attrs["clean"], self.attrs["corrupted"]
        values = (self.values - corrupted) / (clean - corrupted)
        return dataclasses.replace(self, values=values, attrs={**self.attrs, "normalized": True})

    # Reading the largest entries --------------------------------------------------
    def label(self, index: Mapping[str, int]) -> str:
        """A readable name for one element: ``L3H7`` for (layer, head), ``L3 pos 5 ' John'``
        for (layer, pos) with token labels, ``axis=i`` (or its tick label) otherwise."""
        parts, rest = [], dict(index)
        if "layer" in rest:
            layer = rest.pop("layer")
            ticks = self.labels.get("layer")
            lay = f"L{layer}" if ticks is None else str(ticks[layer])
            if "head" in rest:
                parts.append(f"{lay}H{rest.pop('head')}")
            else:
                parts.append(lay)
        for axis, i in rest.items():
            ticks = self.labels.get(axis)
            name = "pos" if axis == "pos" else axis
            tick = f" {str(ticks[i])!r}" if ticks is not None else ""
            parts.append(f"{name} {i}{tick}" if axis in ("pos", "head") else
                         (f"{axis}={i}" if ticks is None else str(ticks[i])))
        return " ".join(parts)

    def top(self, k: int = 10, *, order: str = "abs") -> Entries:
        """The ``k`` entries with the largest ``|value|`` (``order="abs"``), the largest
        (``"largest"``) or the smallest (``"smallest"``) values, as labelled
        :class:`Entry` tuples; ``print`` the result for a table. NaNs come last."""
        if order not in _ORDERS:
            raise ShapeError(f"order must be one of {_ORDERS}, got {order!r}")
        if not isinstance(k, int) or k < 1:
            raise ShapeError(f"k must be a positive int, got {k!r}")
        flat = np.asarray(self.values, np.float64).ravel()
        key = {"abs": -np.abs(flat), "largest": -flat, "smallest": flat}[order]
        key = np.where(np.isnan(key), np.inf, key)
        picked = np.argsort(key, kind="stable")[:k]
        out = Entries()
        for i in picked:
            index = dict(zip(self.axes, (int(j) for j in np.unravel_index(i, self.shape)), strict=True))
            out.append(Entry(self.label(index), float(flat[i]), index))
        return out

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in self.sizes().items())
        extra = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return f"NamedArray({dims}; {extra})"
