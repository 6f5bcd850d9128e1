"""Visualisation: PNG plots of sweeps and lenses (``plots``); training-run report pieces
live in :mod:`jaxinterp.viz.report`."""

from jaxinterp.viz.plots import heatmap, heatmaps, line_plot

__all__ = ["heatmap", "heatmaps", "line_plot"]
