"""Figures without pyplot: drawing never touches matplotlib's global backend.

``matplotlib.pyplot`` keeps a global figure manager and a backend that a notebook user
has chosen (inline, widget...). jaxinterp draws with the object API instead: a
:class:`matplotlib.figure.Figure` rendered by its own Agg canvas and written to a PNG, so
importing or plotting with jaxinterp changes nothing about the user's own plotting.
matplotlib itself is imported only when something is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(figsize: tuple[float, float], dpi: int = 120) -> Any:
    """A new ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot, no backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path, *, tight: bool = True) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (parents created) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path)
    return path
