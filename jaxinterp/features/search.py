"""Finding features: by a token they fire on, by a passage, by name.

* **By token** (:func:`features_by_token`): a feature fires on token ``t`` when ``t`` is the
  peak (max-activating) token of its top contexts; the score is the summed activation of
  those contexts, so a feature that peaks on ``t`` often and strongly ranks first.
* **By passage** (:func:`features_for_text`): run the model and the SAE on a text and rank
  features by their largest activation on it (:func:`token_features` gives each token's
  strongest features, what the browser's text box shows).
* **By name** (:func:`search_names`): a case-insensitive substring search over feature
  labels, the automatic ones of :func:`feature_labels` (peak tokens, then promoted tokens)
  or a reader's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import DataError, TokenError
from jaxinterp.features.result import FeatureAnalysis
from jaxinterp.named import NamedArray


def peak_tokens(analysis: FeatureAnalysis) -> np.ndarray:
    """``[d_sae, k]``: the token at the max activation of each top context (-1 for empty)."""
    top = analysis.top
    peak = top["acts"].argmax(-1)                                          # [s, k]
    tokens = np.take_along_axis(top["tokens"], peak[..., None], -1)[..., 0]
    return np.where(top["seq"] >= 0, tokens, -1)


def features_by_token(analysis: FeatureAnalysis, token: int, k: int = 10) -> list[tuple[int, float]]:
    """Features whose top contexts peak on ``token``, as ``(feature, summed activation)``, best first."""
    peaks = peak_tokens(analysis)
    score = np.where(peaks == int(token), analysis.top["values"], 0.0).sum(-1)
    order = np.argsort(-score, kind="stable")[:k]
    return [(int(i), float(score[i])) for i in order if score[i] > 0]


def _as_tokens(model: Any, text: str | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(text, str):
        if getattr(model, "tokenizer", None) is None:
            raise TokenError("A text needs a model with a tokenizer; pass token ids instead.")
        tokens = np.asarray(model.to_tokens(text))[0]
    else:
        tokens = np.asarray(text).reshape(-1)
    if tokens.size == 0:
        raise DataError("The passage is empty: nothing to search features on.")
    return tokens.astype(np.int32)


@eqx.filter_jit
def _encode(model: Any, sae: Any, tokens: Any) -> Any:
    from jaxinterp.features.analysis import site_input

    return sae.encode(site_input(model, tokens[None], sae.cfg.hook_name))[0].astype(jnp.float32)


def token_features(model: Any, sae: Any, text: str | Sequence[int] | np.ndarray, k: int = 5
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's ``k`` strongest features: ``(tokens [p], index [p, k], values [p, k])``
    (index -1 where fewer than ``k`` fire)."""
    tokens = _as_tokens(model, text)
    acts = np.asarray(_encode(model, sae, jnp.asarray(tokens)))             # [p, s]
    k = min(k, acts.shape[-1])
    index = np.argsort(-acts, axis=-1, kind="stable")[:, :k]
    values = np.take_along_axis(acts, index, -1)
    return tokens, np.where(values > 0, index, -1).astype(np.int32), np.maximum(values, 0.0)


@eqx.filter_jit
def _strongest(model: Any, sae: Any, tokens: Any, k: int) -> tuple[Any, Any]:
    from jaxinterp.features.analysis import site_input
    from jaxinterp.features.sparse import sparse_encode

    x = site_input(model, tokens, sae.cfg.hook_name)
    b, p, d = x.shape
    values, index, _, _ = sparse_encode(sae, x.reshape(b * p, d), k)
    return values.reshape(b, p, -1), index.reshape(b, p, -1)


def passage_features(model: Any, sae: Any, tokens: np.ndarray, k: int = 5, batch_size: int = 16
                     ) -> dict[str, np.ndarray]:
    """Each token's ``k`` strongest features over passages ``tokens [n, pos]`` (what the
    browser's text box shows): ``{"tokens", "index" [n, pos, k] (-1: none), "values"}``."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise DataError(f"passages must be a non-empty [n, pos] token array, got shape {tokens.shape}.")
    values, index = [], []
    for lo in range(0, len(tokens), batch_size):
        part = tokens[lo:lo + batch_size]
        pad = np.concatenate([part, np.repeat(part[-1:], batch_size - len(part), 0)]) if len(part) < batch_size else part
        v, i = _strongest(model, sae, jnp.asarray(pad), k)
        values.append(np.asarray(v)[:len(part)])
        index.append(np.asarray(i)[:len(part)])
    values, index = np.concatenate(values), np.concatenate(index)
    return {"tokens": tokens, "index": np.where(values > 0, index, -1).astype(np.int32),
            "values": np.maximum(values, 0.0)}


def features_for_text(model: Any, sae: Any, text: str | Sequence[int] | np.ndarray) -> NamedArray:
    """Every feature's largest activation on the passage, ``[feature]`` (``.top(10)`` ranks them)."""
    tokens = _as_tokens(model, text)
    acts = _encode(model, sae, jnp.asarray(tokens))
    return NamedArray(acts.max(0), ("feature",), attrs={"what": "max activation on the passage",
                                                        "n_tokens": int(tokens.size)})


def feature_labels(analysis: FeatureAnalysis, decode: Callable[[int], str], n: int = 3) -> list[str]:
    """Automatic names: the distinct peak tokens of the top contexts, then ``->`` the most
    promoted tokens (when logit effects were computed); ``"dead"`` for a silent feature."""
    peaks = peak_tokens(analysis)
    cache: dict[int, str] = {}

    def show(t: int) -> str:
        if t not in cache:
            cache[t] = repr(decode(int(t)))
        return cache[t]

    labels = []
    for i in range(analysis.d_sae):
        seen: list[int] = []
        for t in peaks[i]:
            if t >= 0 and t not in seen:
                seen.append(int(t))
        if not seen:
            labels.append("dead")
            continue
        label = " ".join(show(t) for t in seen[:n])
        if analysis.logits is not None:
            label += " -> " + " ".join(show(t) for t in analysis.logits["pos_index"][i, :2])
        labels.append(label)
    return labels


def search_names(names: Sequence[str] | Mapping[int, str], query: str) -> list[int]:
    """Features whose name contains ``query`` (case-insensitive), in index order."""
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    q = query.lower()
    return sorted(int(i) for i, name in items if q in str(name).lower())
