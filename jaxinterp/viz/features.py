"""Plots for features in vision models: image grids, weight grids, tuning curves (PNG).

* :func:`image_grid`: rows of images (a unit's visualisations beside its dataset
  examples), greyscale on a sequential map fixed to [0, 1], with a labelled colour bar.
* :func:`weight_grid`: the ``[dst, src, y, x]`` kernels between two conv blocks
  (:func:`jaxinterp.features.conv_circuits.channel_weights`), one small map per
  (source row, destination column), on one zero-centred diverging scale: red excites,
  blue inhibits.
* :func:`tuning_plot`: response against a stimulus parameter, one curve per unit.

Drawn without pyplot (:mod:`jaxinterp.viz._figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxinterp.errors import ShapeError
from jaxinterp.viz._figure import figure, save


def image_grid(images, path: str | Path, *, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cell_titles: Sequence[Sequence[str]] | None = None,
               title: str | None = None, cell: float = 1.3) -> Path:
    """``images [rows, cols, y, x, c]`` (c = 1 or 3, values in [0, 1]) as a grid."""
    images = np.asarray(images, np.float32)
    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5 or images.shape[-1] not in (1, 3):
        raise ShapeError(f"image_grid needs [rows, cols, y, x, 1 or 3], got shape {images.shape}")
    rows, cols = images.shape[:2]
    fig = figure((cols * cell + 1.6, rows * cell + (0.5 if title else 0.2)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            img = images[r, c]
            img = img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1)
            im = ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if cell_titles is not None:
                ax.set_title(str(cell_titles[r][c]), fontsize=6)
            elif r == 0 and col_labels is not None:
                ax.set_title(str(col_labels[c]), fontsize=7)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[r]), fontsize=7)
    if images.shape[-1] == 1:
        cb = fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02)
        cb.set_label("pixel intensity")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, tight=False)


def weight_grid(weights, path: str | Path, *, title: str | None = None, cell: float = 1.0) -> Path:
    """A ``[dst, src, y, x]`` NamedArray (or array) of kernels: rows are sources, columns
    destinations; one diverging scale centred on zero, with a labelled colour bar."""
    values = np.asarray(weights, np.float32)
    if values.ndim != 4:
        raise ShapeError(f"weight_grid needs [dst, src, y, x], got shape {values.shape}")
    labels = dict(getattr(weights, "labels", {}) or {})
    n_dst, n_src = values.shape[:2]
    vmax = float(np.abs(values).max()) or 1.0
    fig = figure((n_dst * cell + 1.8, n_src * cell + (0.6 if title else 0.3)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(n_src, n_dst, squeeze=False)
    im = None
    for s in range(n_src):
        for d in range(n_dst):
            ax = axes[s, d]
            im = ax.imshow(values[d, s], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0:
                ax.set_title(f"to {labels.get('dst', range(n_dst))[d]}", fontsize=7)
            if d == 0:
                ax.set_ylabel(f"from {labels.get('src', range(n_src))[s]}", fontsize=7)
    cb = fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02)
    cb.set_label("weight (red excites, blue inhibits)")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, tight=False)


def tuning_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], x: Sequence[float] | Mapping[str, Sequence[float]],
                path: str | Path, *,
                xlabel: str = "orientation (degrees)", ylabel: str = "response", title: str | None = None,
                sharey: bool = False) -> Path:
    """Small multiples: ``{panel title: {curve label: responses over x}}`` (one y scale
    for all panels with ``sharey``); ``x`` is shared, or ``{panel title: x}``."""
    if not panels:
        raise ShapeError("tuning_plot needs at least one panel")
    fig = figure((3.6 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=sharey)[0]
    for ax, (name, curves) in zip(axes, panels.items(), strict=True):
        for label, ys in curves.items():
            xs = x[name] if isinstance(x, Mapping) else x
            ax.plot(np.asarray(xs), np.asarray(ys, np.float64), marker=".", label=str(label))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)
