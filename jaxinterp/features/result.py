"""What a feature analysis returns: :class:`FeatureAnalysis`, host arrays for every feature.

Every field is a numpy array with a leading ``d_sae`` axis (or a dict of them), so a
statistic of feature ``i`` is ``field[i]`` and the whole thing saves as one ``.npz`` plus a
JSON file of settings (:meth:`FeatureAnalysis.save`, :func:`load_analysis`; no pickle).
:meth:`FeatureAnalysis.feature` gathers one feature's panels (what the browser and the
Neuronpedia export show).

Contexts: ``top`` holds ``values [s, k]`` (the feature's max activation in the context),
``seq`` (sequence id in the token stream, -1 for an empty slot), ``start`` (window start
position) and ``acts``/``tokens [s, k, ctx]``. ``intervals`` holds the same per activation
interval, ``[s, n_intervals, per_interval]``, interval ``j`` covering
``[j, j + 1) * hist_range / n_intervals``; ``interval_counts [s, n_intervals]`` are the
feature's non-zero token activations in each interval (from the histogram).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import CheckpointError, IndexRangeError

_GROUPS = ("top", "intervals", "cooccurrence", "neighbours", "logits")


@dataclasses.dataclass(frozen=True)
class FeatureAnalysis:
    """Per-feature statistics of one SAE over one token stream (see the module docstring)."""

    d_sae: int
    site: str
    n_tokens: int
    n_sequences: int
    density: np.ndarray           # [s] fraction of tokens where the feature is active
    mean_activation: np.ndarray   # [s] mean activation where active
    max_activation: np.ndarray    # [s]
    hist_counts: np.ndarray       # [s, n_bins] non-zero activations per bin of [0, hist_range)
    hist_range: np.ndarray        # [s]
    top: dict[str, np.ndarray]
    intervals: dict[str, np.ndarray]
    interval_counts: np.ndarray   # [s, n_intervals]
    cooccurrence: dict[str, np.ndarray] | None = None   # index, jaccard, count [s, m]
    neighbours: dict[str, np.ndarray] | None = None     # index, cosine [s, m]
    logits: dict[str, np.ndarray] | None = None         # see logit_effects
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def with_fields(self, **fields: Any) -> FeatureAnalysis:
        return dataclasses.replace(self, **fields)

    def index(self, i: int) -> int:
        """Feature ``i`` as a non-negative index (negative counts from the end; out of range raises)."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise IndexRangeError(f"A feature index must be an int, got {type(i).__name__}.")
        if not -self.d_sae <= i < self.d_sae:
            raise IndexRangeError(f"feature {i} is out of range: this SAE has {self.d_sae} features "
                                  f"(valid indices {-self.d_sae}..{self.d_sae - 1}).")
        return int(i) % self.d_sae

    @property
    def hist_edges(self) -> np.ndarray:
        """``[s, n_bins + 1]`` bin edges of each feature's histogram."""
        n = self.hist_counts.shape[1]
        return self.hist_range[:, None] * np.arange(n + 1)[None, :] / n

    def feature(self, i: int) -> dict[str, Any]:
        """One feature's panels as plain Python values (contexts, histograms, effects, neighbours)."""
        i = self.index(i)

        def contexts(group: dict[str, np.ndarray], rows: tuple[int, ...]) -> list[dict[str, Any]]:
            out = []
            for j in np.ndindex(*group["seq"][rows].shape):
                idx = (*rows, *j)
                if group["seq"][idx] < 0:
                    continue
                out.append({"value": float(group["values"][idx]), "seq": int(group["seq"][idx]),
                            "start": int(group["start"][idx]), "tokens": group["tokens"][idx].tolist(),
                            "acts": group["acts"][idx].tolist()})
            return out

        n_int = self.interval_counts.shape[1]
        width = float(self.hist_range[i]) / n_int
        total = max(int(self.hist_counts[i].sum()), 1)
        intervals = [{"lo": j * width, "hi": (j + 1) * width,
                      "fraction": float(self.interval_counts[i, j]) / total,
                      "contexts": contexts(self.intervals, (i, j))} for j in range(n_int)]
        out = {"index": i, "density": float(self.density[i]), "mean": float(self.mean_activation[i]),
               "max": float(self.max_activation[i]), "hist_counts": self.hist_counts[i].tolist(),
               "hist_range": float(self.hist_range[i]), "top": contexts(self.top, (i,)),
               "intervals": [iv for iv in intervals if iv["contexts"] or iv["fraction"] > 0]}
        for name in ("cooccurrence", "neighbours", "logits"):
            group = getattr(self, name)
            if group is not None:
                out[name] = {k: v[i].tolist() for k, v in group.items()}
        return out

    # Files ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``analysis.npz`` (arrays) and ``analysis.json`` (sizes, settings, meta) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ("density", "mean_activation", "max_activation",
                                                "hist_counts", "hist_range", "interval_counts")}
        for group in _GROUPS:
            for k, v in (getattr(self, group) or {}).items():
                arrays[f"{group}/{k}"] = v
        np.savez(folder / "analysis.npz", **arrays)
        meta = {"d_sae": self.d_sae, "site": self.site, "n_tokens": self.n_tokens,
                "n_sequences": self.n_sequences, "settings": self.settings, "meta": self.meta}
        (folder / "analysis.json").write_text(json.dumps(meta, indent=2, default=float))
        return folder


def load_analysis(folder: str | Path) -> FeatureAnalysis:
    """Reads what :meth:`FeatureAnalysis.save` wrote."""
    folder = Path(folder)
    if not (folder / "analysis.npz").is_file() or not (folder / "analysis.json").is_file():
        raise CheckpointError(f"{folder} holds no feature analysis (analysis.npz + analysis.json).")
    meta = json.loads((folder / "analysis.json").read_text())
    groups: dict[str, dict[str, np.ndarray]] = {}
    plain = {}
    with np.load(folder / "analysis.npz", allow_pickle=False) as f:
        for key in f.files:
            if "/" in key:
                g, k = key.split("/", 1)
                groups.setdefault(g, {})[k] = f[key]
            else:
                plain[key] = f[key]
    return FeatureAnalysis(d_sae=meta["d_sae"], site=meta["site"], n_tokens=meta["n_tokens"],
                           n_sequences=meta["n_sequences"], **plain,
                           **{g: groups.get(g) for g in _GROUPS}, settings=meta["settings"], meta=meta["meta"])


def finalize(state: Any, sae: Any, settings: Any, n_sequences: int) -> FeatureAnalysis:
    """The device state of :func:`~jaxinterp.features.analysis.analyze_features` as host arrays."""
    import jax

    from jaxinterp.features.cooccurrence import top_cooccurring
    from jaxinterp.features.histogram import interval_counts

    host = jax.device_get({"fires": state.fires, "act_sum": state.act_sum, "n": state.n_tokens,
                           "truncated": state.truncated, "counts": state.hist.counts,
                           "range": state.hist.range, "top": state.top, "intervals": state.intervals})
    n = max(int(host["n"]), 1)
    fires = host["fires"].astype(np.int64)

    def fields(w: Any) -> dict[str, np.ndarray]:
        seq = np.where(np.isfinite(w.values) & (w.values > 0), w.seq, -1)
        return {"values": np.where(seq >= 0, w.values, 0.0).astype(np.float32), "seq": seq.astype(np.int32),
                "start": w.start.astype(np.int32), "acts": w.acts.astype(np.float32),
                "tokens": w.tokens.astype(np.int32), "priority": np.where(seq >= 0, w.priority, -np.inf)}

    def take(group: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.take_along_axis(v, order.reshape(*order.shape, *([1] * (v.ndim - 2))), 1)
                for k, v in group.items()}

    s = sae.cfg.d_sae
    top = fields(host["top"])                      # slots are unordered: best first, ties by sequence
    top = take(top, np.lexsort((np.where(top["seq"] >= 0, top["seq"], 2**31 - 1),
                                np.where(top["seq"] >= 0, -top["values"], np.inf))))
    top.pop("priority")
    B, per = settings.n_intervals, settings.per_interval
    iv = fields(host["intervals"])
    width = host["range"][:, None] / B
    interval = np.where(iv["seq"] >= 0, np.minimum(np.floor(iv["values"] / width), B - 1), B).astype(np.int64)
    iv = take(iv, np.lexsort((-iv["priority"], interval)))
    interval = np.sort(interval, axis=1)
    rank = np.arange(interval.shape[1])[None, :] - np.argmax(interval[:, :, None] == interval[:, None, :], axis=2)
    rows, cols = np.nonzero(interval < B)
    intervals = {k: np.zeros((s, B, per, *v.shape[2:]), v.dtype) for k, v in iv.items() if k != "priority"}
    intervals["seq"][:] = -1
    for k in intervals:
        intervals[k][rows, interval[rows, cols], rank[rows, cols]] = iv[k][rows, cols]
    counts = host["counts"].astype(np.int64)
    cooc = top_cooccurring(state.cooc) if state.cooc is not None else None
    return FeatureAnalysis(
        d_sae=s, site=sae.cfg.hook_name, n_tokens=int(host["n"]), n_sequences=int(n_sequences),
        density=(fires / n).astype(np.float64), mean_activation=(host["act_sum"] / np.maximum(fires, 1)),
        max_activation=top["values"][:, 0].copy(), hist_counts=counts, hist_range=host["range"].astype(np.float64),
        top=top, intervals=intervals, interval_counts=np.asarray(interval_counts(counts, settings.n_intervals)),
        cooccurrence=cooc, settings=dataclasses.asdict(settings),
        meta={"tokens_truncated": int(host["truncated"])})
