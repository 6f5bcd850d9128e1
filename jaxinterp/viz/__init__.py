"""Visualisation: PNG plots of sweeps and lenses (``plots``); training-run report pieces
live in :mod:`jaxinterp.viz.report`.

matplotlib is imported only when something is drawn, and never through pyplot, so
``import jaxinterp`` leaves a notebook's plotting backend alone.
"""

from jaxinterp.viz.attention import attention_figure, attention_patterns
from jaxinterp.viz.plots import heatmap, heatmaps, line_plot

__all__ = ["attention_figure", "attention_patterns", "heatmap", "heatmaps", "line_plot"]
