"""Attention patterns as a PNG grid: one panel per (layer, head), tokens on the axes.

``attention_patterns(patterns, tokens, path)`` draws every head of every layer given
(``patterns [layer, head, query, key]``, e.g. ``cache.stacked("blocks.*.attn.hook_pattern")[:, 0]``),
titled with the model's real layer index (pass ``layers=`` when the stack is a subset,
such as layers 17 and 18 of a 30-layer model). Rows are queries, columns keys; the
colour scale is the attention weight from 0 to 1. Token labels appear on the outer
panels only, thinned so they stay readable with many heads and long prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import ShapeError
from jaxinterp.viz._figure import figure, save

_MAX_TICKS = 24


def _tick_text(tokens: Sequence[str]) -> list[str]:
    return [repr(str(t))[1:-1][:10] for t in tokens]


def attention_patterns(patterns: Any, tokens: Sequence[str] | None, path: str | Path, *,
                       layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                       title: str | None = None, panel_size: float = 1.9) -> Path:
    """Saves a ``[layer, head, query, key]`` stack of attention patterns as a PNG grid.

    Args:
      patterns: array ``[layer, head, query, key]`` (or ``[head, query, key]`` for one layer).
      tokens: the prompt's tokens as strings (axis labels), or None.
      path: where to write the PNG.
      layers: the model layer index of each entry of the first axis (default 0, 1, ...).
      heads: which heads to draw (default all).
      title: figure title.
    """
    fig = attention_figure(patterns, tokens, layers=layers, heads=heads, title=title, panel_size=panel_size)
    return save(fig, path, tight=False)


def attention_figure(patterns: Any, tokens: Sequence[str] | None, *, layers: Sequence[int] | None = None,
                     heads: Sequence[int] | None = None, title: str | None = None,
                     panel_size: float = 1.9) -> Any:
    """The ``matplotlib.figure.Figure`` that :func:`attention_patterns` saves."""
    p = np.asarray(patterns, np.float32)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4 or p.shape[-1] != p.shape[-2]:
        raise ShapeError(f"attention patterns must be [layer, head, query, key], got shape {p.shape}")
    n_layers, n_heads, n_q, _ = p.shape
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if len(layers) != n_layers:
        raise ShapeError(f"{len(layers)} layer indices for {n_layers} layers of patterns")
    heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ShapeError(f"heads {bad} out of range for {n_heads} heads")
    if tokens is not None and len(tokens) != n_q:
        raise ShapeError(f"{len(tokens)} tokens for patterns over {n_q} positions")
    labels = _tick_text(tokens) if tokens is not None else [str(i) for i in range(n_q)]
    step = max(1, -(-n_q // _MAX_TICKS))
    ticks = list(range(0, n_q, step))
    fig = figure((panel_size * len(heads) + 1.2, panel_size * n_layers + 0.8), dpi=110)
    axes = fig.subplots(n_layers, len(heads), squeeze=False)
    im = None
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i, j]
            im = ax.imshow(p[i, head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"L{layer}H{head}", fontsize=8)
            ax.set_xticks(ticks if i == n_layers - 1 else [])
            ax.set_yticks(ticks if j == 0 else [])
            if i == n_layers - 1:
                ax.set_xticklabels([labels[t] for t in ticks], rotation=90, fontsize=5)
            if j == 0:
                ax.set_yticklabels([labels[t] for t in ticks], fontsize=5)
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    cb.set_label("attention weight (query row -> key column)", fontsize=7)
    fig.suptitle(title or "attention patterns", fontsize=9)
    return fig
