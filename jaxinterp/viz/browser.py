"""A static feature browser: a folder that opens from disk (``file://``) with no network.

::

    browser/index.html            the page: CSS and JS inline, the index script loaded
    browser/data/index.js         every feature's summary (density, max, name, peak tokens)
    browser/data/features_NNNNN.js  full panels of ``chunk`` features each, loaded on demand
    browser/data/vocab.js         the strings of every token id the data mention
    browser/data/passages.js      corpus passages with each token's strongest features

A page opened from disk cannot ``fetch`` local files, so each data file is a script that
hands its data to the page (``JI.chunk(3, [...])``); the page adds ``<script src>``
elements when a feature is opened, and the index of 16k+ features is one small script.
Dataset text is escaped twice over: the JSON in every script escapes ``<``, ``>``, ``&``
and the line separators (so no ``</script>`` can end a script), and the page inserts
every string as text (``textContent``), never as HTML. A Content-Security-Policy allows
only the page's own script (by hash) and the data files.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.features.result import FeatureAnalysis
from jaxinterp.features.search import feature_labels, peak_tokens

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """JSON safe to place inside a ``<script>`` (``<``, ``>``, ``&`` and line separators escaped)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in _ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _asset(name: str) -> str:
    return resources.files("jaxinterp.viz").joinpath("browser_assets", name).read_text(encoding="utf-8")


def _r(x: Any, digits: int = 4) -> Any:
    """Rounded floats (plain Python) for compact JSON (arrays through ``tolist``: per-element
    numpy scalars are slow with 16k features)."""
    if isinstance(x, np.ndarray):
        if x.ndim == 1:
            return [round(v, digits) if math.isfinite(v) else 0.0 for v in x.tolist()]
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_r(v, digits) for v in x]
    x = float(x)
    return round(x, digits) if math.isfinite(x) else 0.0


def _contexts(group: Mapping[str, np.ndarray], index: tuple[int, ...], used: set[int]) -> list:
    out = []
    for j in np.ndindex(*group["seq"][index].shape):
        at = (*index, *j)
        if group["seq"][at] < 0:
            continue
        tokens = [int(t) for t in group["tokens"][at]]
        used.update(tokens)
        acts = group["acts"][at]
        peak = int(np.argmin(np.abs(acts - group["values"][at])))      # the token the context is about
        out.append([_r(group["values"][at]), int(group["seq"][at]), int(group["start"][at]), tokens,
                    _r(acts, 3), peak])
    return out


def _feature(a: FeatureAnalysis, i: int, used: set[int]) -> dict[str, Any]:
    B = a.interval_counts.shape[1]
    width = float(a.hist_range[i]) / B
    total = max(int(a.hist_counts[i].sum()), 1)
    intervals = [[_r(j * width), _r((j + 1) * width), _r(a.interval_counts[i, j] / total),
                  _contexts(a.intervals, (i, j), used)] for j in range(B)]
    out: dict[str, Any] = {
        "density": _r(a.density[i], 8), "mean": _r(a.mean_activation[i]), "max": _r(a.max_activation[i]),
        "hist": [int(c) for c in a.hist_counts[i]], "range": _r(a.hist_range[i], 8),
        "top": _contexts(a.top, (i,), used), "intervals": [g for g in intervals if g[3] or g[2] > 0]}
    if a.logits is not None:
        lg = a.logits
        used.update(int(t) for t in lg["pos_index"][i])
        used.update(int(t) for t in lg["neg_index"][i])
        out.update(pos=[[int(t), _r(v)] for t, v in zip(lg["pos_index"][i], lg["pos_values"][i], strict=True)],
                   neg=[[int(t), _r(v)] for t, v in zip(lg["neg_index"][i], lg["neg_values"][i], strict=True)],
                   lhist=[int(c) for c in lg["hist_counts"][i]], llo=_r(lg["hist_lo"][i]), lhi=_r(lg["hist_hi"][i]))
    if a.neighbours is not None:
        out["nn"] = [[int(j), _r(c, 3)] for j, c in zip(a.neighbours["index"][i], a.neighbours["cosine"][i], strict=True)]
    if a.cooccurrence is not None:
        co = a.cooccurrence
        out["co"] = [[int(j), _r(c, 3), int(n)] for j, c, n in zip(co["index"][i], co["jaccard"][i], co["count"][i],
                                                                 strict=True) if j >= 0]
    return out


def _write_script(path: Path, call: str, *args: Any) -> None:
    path.write_text(f"{call}({','.join(script_json(a) for a in args)});\n", encoding="utf-8")


def write_browser(analysis: FeatureAnalysis, folder: str | Path, decode: Callable[[int], str], *,
                  names: Sequence[str] | Mapping[int, str] | None = None,
                  passages: Mapping[str, np.ndarray] | None = None, title: str = "feature browser",
                  chunk: int = 128) -> Path:
    """Writes the browser for ``analysis`` into ``folder`` and returns ``folder/index.html``.

    Args:
        analysis: from :func:`jaxinterp.features.analyze_features`.
        folder: output folder (its ``data/`` is replaced).
        decode: token id -> its string (``tokenizer.decode([i])``).
        names: feature names (default: :func:`~jaxinterp.features.search.feature_labels`).
        passages: ``{"tokens" [n, pos], "index" [n, pos, k], "values" [n, pos, k]}`` for
            the text box (from :func:`~jaxinterp.features.search.passage_features`).
        title: page title (escaped).
        chunk: features per data file.
    """
    folder = Path(folder)
    data = folder / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    labels = feature_labels(analysis, decode) if names is None else [
        str(names.get(i, "") if isinstance(names, Mapping) else names[i]) for i in range(analysis.d_sae)]
    peaks = peak_tokens(analysis)
    strings: dict[int, str] = {}

    def text(t: int) -> str:
        if t not in strings:
            strings[t] = decode(int(t))
        return strings[t]

    tokens = []
    for i in range(analysis.d_sae):
        seen: list[str] = []
        for t in peaks[i]:
            if t >= 0 and text(int(t)) not in seen:
                seen.append(text(int(t)))
        tokens.append(seen[:5])
    index = {"title": title, "site": analysis.site, "n_tokens": analysis.n_tokens, "chunk": chunk,
             "alive": int((analysis.density > 0).sum()), "density": _r(analysis.density, 8),
             "max": _r(analysis.max_activation), "mean": _r(analysis.mean_activation), "label": labels,
             "tokens": tokens, "passages": passages is not None}
    _write_script(data / "index.js", "JI.index", index)
    used: set[int] = set()
    for c, lo in enumerate(range(0, analysis.d_sae, chunk)):
        feats = [_feature(analysis, i, used) for i in range(lo, min(lo + chunk, analysis.d_sae))]
        _write_script(data / f"features_{c:05d}.js", "JI.chunk", c, feats)
    if passages is not None:
        rows = []
        for n in range(len(passages["tokens"])):
            toks = [int(t) for t in passages["tokens"][n]]
            used.update(toks)
            top = [[[int(j), _r(v, 3)] for j, v in zip(passages["index"][n, p], passages["values"][n, p], strict=True)
                    if j >= 0] for p in range(len(toks))]
            rows.append({"tokens": toks, "top": top})
        _write_script(data / "passages.js", "JI.passages", rows)
    _write_script(data / "vocab.js", "JI.vocab", {str(t): text(t) for t in sorted(used)})
    js = _asset("browser.js")
    if "</script" in js.lower():
        raise AssertionError("browser.js must not contain '</script'")
    digest = base64.b64encode(hashlib.sha256(f"\n{js}\n".encode()).digest()).decode()  # the inline script
    page = (_asset("index.html").replace("'unsafe-inline' file:", f"'sha256-{digest}' file:")
            .replace("__CSS__", _asset("browser.css")).replace("__JS__", js)
            .replace("__TITLE__", html.escape(title)))
    out = folder / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
