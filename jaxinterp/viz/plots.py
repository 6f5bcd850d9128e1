"""Static plots (PNG) for interpretability results: sweep heatmaps and per-layer curves.

``heatmap`` draws a 2-D :class:`~jaxinterp.named.NamedArray` (a patching sweep over
``layer x pos`` or ``layer x head``) with its axis names and tick labels (the prompt's
tokens). Signed data get a diverging colour map centred on zero, so "restores" and
"breaks" read at a glance; non-negative data (induction scores, probabilities) a
sequential one from zero, so no half of the scale is wasted. The colour bar is labelled
with what was measured. ``heatmaps`` puts several side by side on one colour scale (exact
patching beside its attribution estimate). ``line_plot`` draws curves over layers.
Figures are drawn without pyplot (see :mod:`jaxinterp.viz._figure`), so they render
headless and never change a notebook's plotting backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import ShapeError
from jaxinterp.viz._figure import figure, save


def _grid(data: Any) -> tuple[np.ndarray, tuple[str, str], dict]:
    values = np.asarray(data, dtype=np.float64)
    if values.ndim != 2:
        raise ShapeError(f"a heatmap needs a 2-D array, got shape {values.shape}; "
                         "select or average the other axes first (NamedArray.sel)")
    axes = tuple(getattr(data, "axes", ("row", "column")))
    return values, axes, dict(getattr(data, "labels", {}) or {})


def _ticks(ax, n: int, labels: Sequence[str] | None, axis: str) -> None:
    if n > 64:
        return
    text = [str(t).replace("\n", "\\n")[:12] for t in (labels if labels is not None else range(n))]
    if axis == "x":
        ax.set_xticks(range(n))
        ax.set_xticklabels(text, rotation=90 if labels is not None else 0, fontsize=7)
    else:
        ax.set_yticks(range(n))
        ax.set_yticklabels(text, fontsize=7)


def _signed(arrays: Sequence[Any]) -> bool:
    return any(float(np.nanmin(np.asarray(a, np.float64))) < 0 for a in arrays)


def _cmap(cmap: str | None, signed: bool) -> str:
    return cmap or ("RdBu_r" if signed else "viridis")


def _label(data: Any, given: str | None) -> str:
    """The colour-bar label: given, else what the NamedArray's attrs say was measured."""
    if given:
        return given
    attrs = dict(getattr(data, "attrs", {}) or {})
    if attrs.get("normalized"):
        return "normalised metric (0 = corrupted, 1 = clean)"
    for key in ("label", "metric", "method"):
        if isinstance(attrs.get(key), str):
            return attrs[key]
    return "value"


def _draw(ax, data: Any, vmax: float, cmap: str, title: str | None,
          xlabels: Sequence[str] | None, ylabels: Sequence[str] | None, signed: bool = True):
    values, (ylab, xlab), labels = _grid(data)
    vmin = -vmax if signed else 0.0
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlab)
    ax.set_ylabel(ylab)
    _ticks(ax, values.shape[1], xlabels if xlabels is not None else labels.get(xlab), "x")
    _ticks(ax, values.shape[0], ylabels if ylabels is not None else labels.get(ylab), "y")
    if title:
        ax.set_title(title, fontsize=10)
    return im


def _vmax(arrays: Sequence[Any]) -> float:
    m = max(float(np.nanmax(np.abs(np.asarray(a, np.float64)))) for a in arrays)
    return m if m > 0 else 1.0


def heatmap(data: Any, path: str | Path, *, title: str | None = None, cmap: str | None = None,
            xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None,
            colorbar_label: str | None = None) -> Path:
    """Saves a 2-D array or NamedArray as a heatmap PNG; returns the path.

    Axis names and tick labels come from the NamedArray (``xlabels``/``ylabels`` override).
    The colour map is diverging around zero for signed data and sequential from zero for
    non-negative data, unless ``cmap`` is given.
    """
    values, _, _ = _grid(data)
    h, w = values.shape
    signed = _signed([values])
    fig = figure((min(3.0 + 0.32 * w, 16), min(1.8 + 0.3 * h, 12)))
    ax = fig.subplots()
    im = _draw(ax, data, _vmax([values]), _cmap(cmap, signed), title, xlabels, ylabels, signed)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(_label(data, colorbar_label), fontsize=8)
    return save(fig, path)


def heatmaps(panels: Mapping[str, Any], path: str | Path, *, cmap: str | None = None,
             xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None,
             suptitle: str | None = None, shared_scale: bool = True,
             colorbar_label: str | None = None) -> Path:
    """Several 2-D arrays side by side (``{title: array}``), on one colour scale by default."""
    if not panels:
        raise ShapeError("heatmaps needs at least one panel")
    items = list(panels.items())
    h, w = _grid(items[0][1])[0].shape
    fig = figure((min(len(items) * (3.0 + 0.32 * w), 24), min(2.2 + 0.3 * h, 12)))
    axes = fig.subplots(1, len(items), squeeze=False)
    vmax, signed = _vmax([v for _, v in items]), _signed([v for _, v in items])
    for ax, (title, data) in zip(axes[0], items, strict=True):
        one_signed = signed if shared_scale else _signed([data])
        im = _draw(ax, data, vmax if shared_scale else _vmax([data]), _cmap(cmap, one_signed), title,
                   xlabels, ylabels, one_signed)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label(_label(data, colorbar_label), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return save(fig, path)


def line_plot(curves: Mapping[str, Sequence[float]], path: str | Path, *, xlabels: Sequence[str] | None = None,
              xlabel: str = "layer", ylabel: str = "", title: str | None = None) -> Path:
    """Curves over a shared x axis (e.g. a token's logit-lens probability per layer)."""
    fig = figure((6.5, 3.8))
    ax = fig.subplots()
    n = 0
    for name, ys in curves.items():
        ys = np.asarray(ys, np.float64)
        n = max(n, len(ys))
        ax.plot(np.arange(len(ys)), ys, marker="o", label=name)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels([str(t) for t in xlabels], rotation=45, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return save(fig, path)
