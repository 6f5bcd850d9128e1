"""Circuits: sets of edges chosen from edge scores, and how faithful they are.

A circuit is a subset of the graph's edges. It is evaluated by exact edge patching: run
the clean prompt with every edge *outside* the circuit reading the corrupted run
(:func:`~jaxinterp.circuits.eap.patch_edges`), and report

    faithfulness = (metric(circuit) - metric(corrupted)) / (metric(clean) - metric(corrupted))

(1: the circuit alone restores the clean behaviour; 0: no better than corrupting
everything). Selection, as in Hanna et al.'s EAP-IG library:

* :func:`top_n`: the ``n`` edges with the largest ``|score|``;
* :func:`greedy`: grow from the logits: repeatedly add the best-scoring edge into a node
  already in the circuit, so every edge lies on a path to the logits.

:meth:`Circuit.pruned` drops edges that cannot matter (their source gets no in-circuit
input from the embedding, or their destination reaches no logit); patching them changes
nothing, so they only inflate the count. :func:`faithfulness_curve` evaluates many sizes
in one compiled program.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Int

from jaxinterp.circuits.eap import patch_edges
from jaxinterp.circuits.graph import Graph
from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.interp.metrics import Metric
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray


@dataclasses.dataclass(frozen=True, eq=False)
class Circuit:
    """A set of edges of ``graph``: ``keep[u, v]`` (bool ``[n_src, n_dst]``), with the scores
    they were chosen by (``[n_src, n_dst]``, optional)."""

    graph: Graph
    keep: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self):
        keep = np.asarray(self.keep, bool)
        if keep.shape != self.graph.valid.shape:
            raise ShapeError(f"keep must be [{self.graph.n_src}, {self.graph.n_dst}], got {keep.shape}")
        if (keep & ~self.graph.valid).any():
            u, v = np.argwhere(keep & ~self.graph.valid)[0]
            self.graph.edge_index(self.graph.src_names[u], self.graph.dst_names[v])  # raises
        object.__setattr__(self, "keep", keep)

    @classmethod
    def from_edges(cls, graph: Graph, edges: Sequence[tuple[str, str]]) -> Circuit:
        """A circuit from ``(source, destination)`` names, e.g. ``[("a0.h1", "a1.h2<k>")]``."""
        keep = np.zeros(graph.valid.shape, bool)
        for src, dst in edges:
            keep[graph.edge_index(src, dst)] = True
        return cls(graph, keep)

    @property
    def n_edges(self) -> int:
        return int(self.keep.sum())

    def edges(self) -> list[tuple[str, str, float | None]]:
        """``(source, destination, score)`` of every edge, strongest ``|score|`` first."""
        us, vs = np.nonzero(self.keep)
        score = None if self.scores is None else np.asarray(self.scores)[us, vs]
        order = np.argsort(-np.abs(score), kind="stable") if score is not None else np.arange(len(us))
        g = self.graph
        return [(g.src_names[us[i]], g.dst_names[vs[i]], None if score is None else float(score[i]))
                for i in order]

    def nodes(self) -> list[str]:
        """Source and destination nodes touched by an edge of the circuit."""
        us, vs = np.nonzero(self.keep)
        names = {self.graph.src_names[u] for u in us} | {self.graph.dst_names[v] for v in vs}
        return sorted(names)

    def pruned(self) -> Circuit:
        """The same circuit without edges that cannot change the metric (see the module docstring)."""
        g, keep = self.graph, self.keep.copy()
        feeds = g.feeds  # [dst, src]
        while True:
            alive_src = np.zeros(g.n_src, bool)  # forward: reachable from the input
            alive_src[0] = True
            for u in range(g.n_src):  # sources are in execution order
                if u > 0:
                    alive_src[u] = (keep[:, feeds[:, u]] & alive_src[:, None]).any()
            alive_dst = np.zeros(g.n_dst, bool)  # backward: reaches the logits
            alive_dst[-1] = True
            for v in range(g.n_dst - 2, -1, -1):
                outs = feeds[v]
                alive_dst[v] = (keep[outs] & alive_dst[None]).any()
            new = keep & alive_src[:, None] & alive_dst[None, :]
            if (new == keep).all():
                return Circuit(g, new, self.scores)
            keep = new

    def to_dict(self) -> dict:
        return {"graph": self.graph.to_dict(), "n_edges": self.n_edges,
                "edges": [{"src": s, "dst": d, "score": sc} for s, d, sc in self.edges()]}

    def to_json(self, path: str | Path) -> Path:
        """Writes the graph settings and the edges (with scores) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Circuit:
        data = json.loads(Path(path).read_text())
        graph = Graph(**data["graph"])
        circuit = cls.from_edges(graph, [(e["src"], e["dst"]) for e in data["edges"]])
        scores = np.zeros(graph.valid.shape, np.float32)
        for e in data["edges"]:
            if e.get("score") is not None:
                scores[graph.edge_index(e["src"], e["dst"])] = e["score"]
        return cls(graph, circuit.keep, scores)


def _scores(scores: NamedArray) -> tuple[Graph, np.ndarray]:
    graph = scores.attrs.get("graph") if isinstance(scores, NamedArray) else None
    if not isinstance(graph, Graph):
        raise ConfigError("expected edge scores from edge_attribution / exact_edge_scores (a NamedArray "
                          "[src, dst] whose attrs hold the graph)")
    return graph, np.asarray(scores, np.float64)


def _check_n(n: int, graph: Graph) -> None:
    if not isinstance(n, int | np.integer) or not 0 <= n <= graph.n_edges:
        raise ConfigError(f"n must be an int in 0..{graph.n_edges} (the graph's edges), got {n!r}")


def top_n(scores: NamedArray, n: int, *, absolute: bool = True) -> Circuit:
    """The ``n`` edges with the largest ``|score|`` (or largest score, ``absolute=False``)."""
    graph, s = _scores(scores)
    _check_n(n, graph)
    key = np.where(graph.valid, np.abs(s) if absolute else s, -np.inf).ravel()
    keep = np.zeros(key.size, bool)
    keep[np.argsort(-key, kind="stable")[:n]] = True
    return Circuit(graph, keep.reshape(s.shape), s)


def greedy(scores: NamedArray, n: int, *, absolute: bool = True) -> Circuit:
    """``n`` edges grown backwards from the logits, best ``|score|`` first among the edges
    into nodes already in the circuit."""
    graph, s = _scores(scores)
    _check_n(n, graph)
    value = np.abs(s) if absolute else s
    feeds = graph.feeds
    keep = np.zeros(s.shape, bool)
    heap: list[tuple[float, int, int]] = []
    seen_src = np.zeros(graph.n_src, bool)

    def push_into(dst: int) -> None:
        for u in np.nonzero(graph.valid[:, dst])[0]:
            heapq.heappush(heap, (-value[u, dst], int(u), dst))

    push_into(graph.n_dst - 1)
    while heap and keep.sum() < n:
        _, u, v = heapq.heappop(heap)
        keep[u, v] = True
        if not seen_src[u]:
            seen_src[u] = True
            for dst in np.nonzero(feeds[:, u])[0]:
                push_into(int(dst))
    return Circuit(graph, keep, s)


def faithfulness(model: HookedTransformer, clean_tokens: Int[ArrayLike, "batch pos"],
                 corrupted_tokens: Int[ArrayLike, "batch pos"], metric: Metric,
                 circuits: Circuit | Sequence[Circuit], *, chunk: int = 16) -> np.ndarray:
    """Normalised metric of each circuit under exact edge patching (1 = clean, 0 = corrupted);
    all circuits in one compiled program."""
    single = isinstance(circuits, Circuit)
    circuits = [circuits] if single else list(circuits)
    if not circuits:
        raise ConfigError("faithfulness needs at least one circuit")
    graph = circuits[0].graph
    if any(c.graph != graph for c in circuits):
        raise ConfigError("all circuits must come from the same graph")
    keep = np.stack([c.keep for c in circuits] + [graph.valid, np.zeros_like(graph.valid)])
    values = np.asarray(patch_edges(model, clean_tokens, corrupted_tokens, metric, keep, graph, chunk=chunk))
    m_clean, m_corrupt = values[-2], values[-1]
    out = (values[:-2] - m_corrupt) / (m_clean - m_corrupt)
    return out[0] if single else out


def faithfulness_curve(model: HookedTransformer, clean_tokens: Int[ArrayLike, "batch pos"],
                       corrupted_tokens: Int[ArrayLike, "batch pos"], metric: Metric,
                       scores: NamedArray, sizes: Sequence[int], *, selection: str = "top_n",
                       chunk: int = 16) -> NamedArray:
    """Faithfulness of the circuits of each size in ``sizes`` chosen from ``scores`` by
    ``selection`` (``"top_n"`` or ``"greedy"``): ``NamedArray [n_edges]``; ``attrs`` hold
    the sizes and the edge counts after pruning."""
    choose = {"top_n": top_n, "greedy": greedy}.get(selection)
    if choose is None:
        raise ConfigError(f"selection must be 'top_n' or 'greedy', got {selection!r}")
    circuits = [choose(scores, int(n)) for n in sizes]
    values = faithfulness(model, clean_tokens, corrupted_tokens, metric, circuits, chunk=chunk)
    return NamedArray(np.asarray(values), ("n_edges",), {"n_edges": [str(int(n)) for n in sizes]},
                      {"sizes": [int(n) for n in sizes], "pruned": [c.pruned().n_edges for c in circuits],
                       "selection": selection, "method": scores.attrs.get("method")})
