"""Arrays with named axes: what every sweep, lens and attribution here returns.

A patching sweep over layers and positions is a ``[n_layers, pos]`` array whose axes a
plot, a table or a reader must know. :class:`NamedArray` carries them: ``values`` (a JAX
array), ``axes`` (``("layer", "pos")``), optional tick ``labels`` per axis (the prompt's
tokens for ``pos``) and ``attrs`` (what was measured: the component, the clean and
corrupted metric). ``np.asarray(result)`` gives the plain array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxinterp.errors import ShapeError


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

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in self.sizes().items())
        extra = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return f"NamedArray({dims}; {extra})"
