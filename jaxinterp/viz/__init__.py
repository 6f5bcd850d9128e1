"""Visualisation: PNG plots of sweeps and lenses (``plots``), circuits (``circuit_plot``),
and self-contained HTML pages of attention patterns and token values (``attention_html``);
training-run report pieces live in :mod:`jaxinterp.viz.report`.

matplotlib is imported only when something is drawn, and never through pyplot, so
``import jaxinterp`` leaves a notebook's plotting backend alone.
"""

from jaxinterp.viz.attention import attention_figure, attention_patterns
from jaxinterp.viz.attention_html import HTML, attention_html, tokens_html
from jaxinterp.viz.circuit_plot import plot_circuit, plot_faithfulness
from jaxinterp.viz.plots import heatmap, heatmaps, line_plot

__all__ = ["HTML", "attention_figure", "attention_html", "attention_patterns", "heatmap", "heatmaps", "line_plot",
           "plot_circuit", "plot_faithfulness", "tokens_html"]
