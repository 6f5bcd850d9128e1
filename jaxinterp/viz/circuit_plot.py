"""A circuit as a picture: nodes by layer, edges drawn with width by |score|.

The embedding sits at the bottom, each layer's heads (and MLP) in a row above it, the
logits on top. An edge into a head's query, key or value input is drawn solid, dashed or
dotted; blue edges have negative scores (patching them lowers the metric: they carry the
clean behaviour), red positive. Drawn without pyplot (see :mod:`jaxinterp.viz._figure`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.viz._figure import figure, save

_STYLE = {"q": "-", "k": "--", "v": ":"}


def _positions(graph: Any) -> tuple[dict[str, tuple[float, float]], float]:
    """x, y of every source node (the destination ``a{l}.h{h}<q>`` sits at its head)."""
    width = graph.n_heads + int(graph.has_mlp)
    pos = {"input": ((width - 1) / 2, 0.0)}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            pos[f"a{layer}.h{h}"] = (float(h), 1.0 + layer)
        if graph.has_mlp:
            pos[f"m{layer}"] = (float(graph.n_heads) + 0.3, 1.0 + layer + 0.45)
    pos["logits"] = ((width - 1) / 2, graph.n_layers + 1.0)
    return pos, width


def _target(name: str, graph: Any) -> tuple[str, str | None]:
    """The node a destination belongs to, and its q/k/v letter."""
    if name.endswith(">"):
        node, letter = name[:-3], name[-2]
        if ".kv" in node:  # a grouped key/value input: draw it at the group's first head
            layer, g = node[1:].split(".kv")
            node = f"a{layer}.h{int(g) * (graph.n_heads // graph.n_kv_heads)}"
        return node, letter
    return name, None


def plot_circuit(circuit: Any, path: str | Path, *, title: str | None = None, max_width: float = 6.0) -> Path:
    """Draws a :class:`~jaxinterp.circuits.Circuit` and saves it as a PNG."""
    graph = circuit.graph
    pos, width = _positions(graph)
    fig = figure((max(5.0, 1.1 * width + 2), 1.3 * graph.n_layers + 2.6))
    ax = fig.subplots()
    edges = circuit.edges()
    biggest = max([abs(s) for _, _, s in edges if s is not None] or [1.0]) or 1.0
    used = {"input", "logits"}
    for src, dst, score in reversed(edges):  # strongest drawn last, on top
        node, letter = _target(dst, graph)
        (x0, y0), (x1, y1) = pos[src], pos[node]
        s = 0.0 if score is None else score
        w = 0.4 + max_width * abs(s) / biggest
        colour = "#2166ac" if s <= 0 else "#b2182b"
        ax.annotate("", xy=(x1, y1 - 0.12), xytext=(x0, y0 + 0.12),
                    arrowprops={"arrowstyle": "-|>", "lw": w, "color": colour, "alpha": 0.75,
                                "linestyle": _STYLE.get(letter, "-"), "shrinkA": 0, "shrinkB": 0,
                                "mutation_scale": 6 + w, "connectionstyle": "arc3,rad=0.08"})
        used.update((src, node))
    for name, (x, y) in pos.items():
        on = name in used
        ax.scatter([x], [y], s=520 if on else 180, c="#fdd49e" if on else "#eeeeee",
                   edgecolors="#555555" if on else "#cccccc", zorder=3)
        ax.text(x, y, name, ha="center", va="center", fontsize=7 if on else 5,
                color="black" if on else "#999999", zorder=4)
    ax.set_xlim(-0.8, width - 0.2 + 0.6)
    ax.set_ylim(-0.6, graph.n_layers + 1.6)
    ax.axis("off")
    legend = "edge width: |score|; blue: negative (carries the clean behaviour), red: positive"
    if graph.qkv:
        legend += "\ninto a head: solid = query, dashed = key, dotted = value"
    ax.text(0.0, -0.02, legend, transform=ax.transAxes, fontsize=7, va="top", color="#444444")
    ax.set_title(title or f"circuit: {circuit.n_edges} edges", fontsize=10)
    return save(fig, path)


def plot_faithfulness(curves: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Faithfulness (1 = clean metric recovered) against circuit size, one curve per method."""
    fig = figure((6.5, 4.0))
    ax = fig.subplots()
    for name, curve in curves.items():
        sizes = curve.attrs["sizes"] if hasattr(curve, "attrs") else range(len(curve))
        ax.plot(sizes, np.asarray(curve, np.float64), marker="o", ms=3, label=name)
    ax.axhline(1.0, color="#888888", lw=0.8, ls="--")
    ax.axhline(0.0, color="#888888", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("edges in the circuit (log scale)")
    ax.set_ylabel("faithfulness (exact edge patching)")
    ax.set_title(title or "faithfulness against circuit size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
