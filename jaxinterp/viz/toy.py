"""Plots of toy models of superposition (PNG): the figures a reader of the papers checks.

* :func:`vectors_2d`: feature (or data-point) directions in a 2-D hidden space, one panel
  per model, coloured by importance (the intro figure, the pentagon, double descent);
* :func:`gram_and_bias`: ``W W^T`` and ``b`` per model (the basic results);
* :func:`norm_bars`: ``||W_i||`` per feature, coloured by its superposition;
* :func:`dimensionality`: feature dimensionality against ``1/(1-S)`` with the sticky values;
* :func:`phase_diagram`: what happens to an extra feature (not represented, dedicated
  dimension, superposition) over relative importance x feature density;
* :func:`test_loss_curve`: test (and train) loss against training-set size.

All draw through :mod:`jaxinterp.viz._figure` (no pyplot). Signed data (``W W^T``, ``b``)
uses a diverging map centred on 0, non-negative data a sequential one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.viz._figure import figure, save

STICKY_LABELS = (("1", 1.0), ("3/4", 0.75), ("2/3", 2 / 3), ("1/2", 0.5), ("2/5", 0.4), ("3/8", 0.375))


def _figure(figsize: tuple[float, float]):
    """A figure with constrained layout (titles, suptitles and colour bars never overlap)."""
    fig = figure(figsize)
    fig.set_layout_engine("constrained")
    return fig


def _grid_shape(k: int, max_cols: int) -> tuple[int, int]:
    cols = min(k, max_cols)
    return -(-k // cols), cols


def vectors_2d(panels: Sequence[tuple[Any, str]], path: str | Path, *, color: Any = None,
               color_label: str = "importance", suptitle: str | None = None,
               max_cols: int = 5, points: bool = False) -> Path:
    """One panel per ``(vectors [k, 2], title)``: a line from the origin to each vector.

    ``color`` (``[k]``, non-negative, shared by the panels) colours the lines on a
    sequential map with a labelled colour bar; ``points`` adds a dot at each tip.
    """
    from matplotlib import cm, colormaps, colors

    rows, cols = _grid_shape(len(panels), max_cols)
    fig = _figure((2.4 * cols + (0.9 if color is not None else 0), 2.5 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    lim = max(1.2, 1.1 * max(float(np.abs(np.asarray(v)).max(initial=0)) for v, _ in panels))
    norm = colors.Normalize(0, float(np.max(color)) if color is not None else 1)
    cmap = colormaps["viridis"]
    for ax, (vectors, title) in zip(axes, panels, strict=False):
        v = np.asarray(vectors, np.float64)
        for i, (x, y) in enumerate(v):
            c = cmap(norm(color[i])) if color is not None else "C0"
            ax.plot([0, x], [0, y], color=c, lw=1.6)
            if points:
                ax.plot([x], [y], "o", color=c, ms=3)
        ax.add_patch(_circle())
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    for ax in axes[len(panels):]:
        ax.axis("off")
    if color is not None:
        sm = cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes), fraction=0.03, pad=0.02).set_label(color_label)
    if suptitle:
        fig.suptitle(suptitle)
    return save(fig, path, tight=False)


def _circle():
    from matplotlib.patches import Circle

    return Circle((0, 0), 1.0, fill=False, ls=":", color="0.6", lw=0.8)


def gram_and_bias(Ws: Sequence[Any], bs: Sequence[Any], titles: Sequence[str], path: str | Path,
                  *, suptitle: str | None = None) -> Path:
    """``W W^T`` (feature x feature) and ``b`` beside it for each model, one shared
    zero-centred diverging scale."""
    k = len(Ws)
    grams = [np.asarray(W) @ np.asarray(W).T for W in Ws]
    vmax = max(1e-6, max(float(np.abs(g).max()) for g in grams), max(float(np.abs(b).max()) for b in bs))
    fig = _figure((2.3 * k + 1.2, 3.2))
    axes = fig.subplots(1, 2 * k, gridspec_kw={"width_ratios": [10, 1] * k}, squeeze=False)[0]
    im = None
    for j in range(k):
        im = axes[2 * j].imshow(grams[j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        axes[2 * j].set_title(titles[j], fontsize=8)
        axes[2 * j].set_xticks([])
        axes[2 * j].set_yticks([] if j else [0, len(grams[j]) - 1])
        axes[2 * j + 1].imshow(np.asarray(bs[j])[:, None], cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                               aspect="auto", interpolation="nearest")
        axes[2 * j + 1].set_xticks([])
        axes[2 * j + 1].set_yticks([])
    axes[0].set_ylabel("feature")
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01).set_label("W W^T (left), b (right)")
    if suptitle:
        fig.suptitle(suptitle)
    return save(fig, path, tight=False)


def norm_bars(norms: Any, superposition: Any, titles: Sequence[str], path: str | Path, *,
              suptitle: str | None = None) -> Path:
    """Horizontal bars of ``||W_i||`` (feature 0 on top) for each model, coloured by the
    feature's superposition ``sum_{j!=i} (W_i_hat . W_j)^2`` (0 = its own dimension)."""
    from matplotlib import cm, colormaps, colors

    norms, sup = np.asarray(norms), np.asarray(superposition)
    k, n = norms.shape
    fig = _figure((1.7 * k + 1.2, 0.16 * n + 1.4))
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    cmap, norm = colormaps["plasma"], colors.Normalize(0, 1)
    for j in range(k):
        axes[j].barh(np.arange(n), norms[j], color=cmap(norm(np.clip(sup[j], 0, 1))))
        axes[j].set_xlim(0, max(1.3, float(norms.max()) * 1.05))
        axes[j].axvline(1.0, color="0.5", lw=0.6, ls=":")
        axes[j].set_title(titles[j], fontsize=8)
        axes[j].set_xlabel("||W_i||", fontsize=8)
    axes[0].set_yticks(range(0, n, max(1, n // 10)))
    axes[0].invert_yaxis()
    axes[0].set_ylabel("feature (importance order)")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), fraction=0.02,
                 pad=0.01).set_label("superposition sum_j (W_i_hat . W_j)^2")
    if suptitle:
        fig.suptitle(suptitle)
    return save(fig, path, tight=False)


def dimensionality(inv_density: Any, feature_dims: Any, represented: Any, dims_per_feature: Any,
                   path: str | Path, *, title: str | None = None) -> Path:
    """Each represented feature's dimensionality ``D_i`` (dots) and ``m / ||W||_F^2`` (line)
    against ``1/(1-S)``, with the sticky values marked."""
    x = np.asarray(inv_density, np.float64)
    D, rep = np.asarray(feature_dims), np.asarray(represented, bool)
    fig = _figure((7.0, 4.2))
    ax = fig.subplots()
    for label, y in STICKY_LABELS:
        ax.axhline(y, color="0.75", lw=0.7, ls="--", zorder=0)
        ax.text(x.max() * 1.08, y, label, va="center", fontsize=8, color="0.35")
    rng = np.random.default_rng(0)
    for i in range(len(x)):
        d = D[i][rep[i]]
        jitter = x[i] * np.exp(rng.uniform(-0.02, 0.02, d.size))
        ax.scatter(jitter, d, s=9, color="C0", alpha=0.55, lw=0,
                   label="feature dimensionality D_i" if i == 0 else None)
    ax.plot(x, np.asarray(dims_per_feature), color="C3", lw=1.8, label="dimensions per feature m/||W||_F^2")
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 - S)  (inverse feature density)")
    ax.set_ylabel("dimensions")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(0.92, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path, tight=False)


PHASES = ("not represented", "dedicated dimension", "superposition")


def phase_diagram(phases: Any, importance: Any, density: Any, path: str | Path, *,
                  title: str | None = None) -> Path:
    """``phases[density, importance]`` in {0, 1, 2} (:data:`PHASES`) as coloured cells over
    log-spaced relative importance (x) and feature density (y, dense at the top)."""
    from matplotlib import colors
    from matplotlib.patches import Patch

    ph = np.asarray(phases)
    palette = ["#9ecae1", "#bdbdbd", "#de2d26"]
    fig = _figure((5.6, 4.4))
    ax = fig.subplots()
    imp, den = np.asarray(importance, np.float64), np.asarray(density, np.float64)
    edges = lambda v: np.exp(np.concatenate([[1.5 * np.log(v[0]) - 0.5 * np.log(v[1])],  # noqa: E731
                                             (np.log(v[1:]) + np.log(v[:-1])) / 2,
                                             [1.5 * np.log(v[-1]) - 0.5 * np.log(v[-2])]]))
    ax.pcolormesh(edges(imp), edges(den), ph, cmap=colors.ListedColormap(palette), vmin=-0.5, vmax=2.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("relative importance of the extra feature")
    ax.set_ylabel("feature density 1 - S")
    ax.legend(handles=[Patch(color=c, label=f"extra feature: {p}") for c, p in zip(palette, PHASES, strict=True)],
              fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path, tight=False)


def test_loss_curve(sizes: Any, test_loss: Any, path: str | Path, *, train_loss: Any = None,
                    replicas: Any = None, baseline: float | None = None, title: str | None = None) -> Path:
    """Test loss against training-set size ``T`` (log x; ``replicas`` ``[len(sizes), r]`` as
    faint dots; the peak marked), and beside it the train loss on a log scale."""
    T, y = np.asarray(sizes, np.float64), np.asarray(test_loss, np.float64)
    fig = _figure((10.5, 3.9))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    if replicas is not None:
        r = np.asarray(replicas, np.float64)
        ax.scatter(np.repeat(T, r.shape[1]), r.ravel(), s=9, color="C0", alpha=0.35, lw=0,
                   label="each seed")
    ax.plot(T, y, "o-", color="C0", label="test loss (mean over seeds)")
    if baseline is not None:
        for a in (ax, ax2):
            a.axhline(baseline, color="0.5", ls=":", lw=1, label="output 0 (no features)")
    peak = int(np.argmax(y))
    ax.annotate(f"peak T={int(T[peak])}", (T[peak], y[peak]), textcoords="offset points",
                xytext=(8, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")  # one overfitting seed can be 10x the others
    ax.set_xlabel("training-set size T")
    ax.set_ylabel("test loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if train_loss is not None:
        ax2.plot(T, np.maximum(np.asarray(train_loss, np.float64), 1e-8), "s--", color="C2", ms=4,
                 label="train loss")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training-set size T")
    ax2.set_ylabel("train loss")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, tight=False)
