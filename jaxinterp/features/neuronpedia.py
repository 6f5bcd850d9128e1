"""Export a feature analysis in Neuronpedia's feature-upload layout (SAEDashboard's output).

SAEDashboard's ``neuronpedia`` runner writes, for one SAE, a folder
``{model_id}_{sae_set}_{hook_name}_{d_sae}/`` holding ``run_settings.json``,
``skipped_indexes.json`` and ``batch-{n}.json`` files; each batch is::

    {"model_id", "layer", "sae_set", "features": [feature, ...]}
    feature = {"feature_index", "pos_str", "pos_values", "neg_str", "neg_values",
               "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
               "logits_hist_data_bar_values", "logits_hist_data_bar_heights",
               "activations": [{"bin_min", "bin_max", "bin_contains", "tokens", "values"}],
               "n_prompts_total", "n_tokens_in_prompt", "dataset", ...}

Histogram bars are (bin midpoint, count) pairs. ``activations`` lists the top contexts
with ``bin_min = -1``, ``bin_max`` = the feature's max activation, ``bin_contains = -1``,
then each activation interval's sampled contexts with its bounds and the fraction of
activations in it. Numbers are rounded to 3 decimals, as SAEDashboard does. Neuron
alignment, correlated neurons and correlated features are left empty: this analysis does
not compute them in that form (co-occurrence is a Jaccard similarity, not a Pearson
correlation). Written from the published layout; the files are plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.features.result import FeatureAnalysis


def _round(values: Any) -> list[float]:
    return [round(float(v), 3) for v in np.asarray(values).reshape(-1)]


def _activation(tokens: np.ndarray, acts: np.ndarray, decode: Callable[[int], str], lo: float, hi: float,
                contains: float) -> dict[str, Any]:
    return {"bin_min": lo, "bin_max": hi, "bin_contains": contains,
            "tokens": [decode(int(t)) for t in tokens], "values": _round(acts)}


def neuronpedia_feature(a: FeatureAnalysis, i: int, decode: Callable[[int], str], *, dataset: str = "",
                        n_tokens_in_prompt: int = 0) -> dict[str, Any]:
    """One feature in SAEDashboard's ``NeuronpediaDashboardFeature`` layout."""
    i = a.index(i)
    n = a.hist_counts.shape[1]
    used = max(1, int(np.ceil(a.max_activation[i] / a.hist_range[i] * n - 1e-9)))  # bins up to the max
    width = a.hist_range[i] / n
    acts_mid = (np.arange(used) + 0.5) * width
    out: dict[str, Any] = {
        "feature_index": i,
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [], "neg_values": [], "pos_str": [], "pos_values": [],
        "frac_nonzero": float(a.density[i]),
        "freq_hist_data_bar_values": _round(acts_mid),
        "freq_hist_data_bar_heights": [int(c) for c in a.hist_counts[i, :used]],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": int(a.n_sequences), "n_tokens_in_prompt": int(n_tokens_in_prompt),
        "dataset": dataset, "decoder_weights_dist": [], "activations": [],
    }
    if a.logits is not None:
        lg = a.logits
        lo, hi = float(lg["hist_lo"][i]), float(lg["hist_hi"][i])
        m = lg["hist_counts"].shape[1]
        out.update(
            pos_str=[decode(int(t)) for t in lg["pos_index"][i]], pos_values=_round(lg["pos_values"][i]),
            neg_str=[decode(int(t)) for t in lg["neg_index"][i]], neg_values=_round(lg["neg_values"][i]),
            logits_hist_data_bar_heights=[int(c) for c in lg["hist_counts"][i]],
            logits_hist_data_bar_values=_round(lo + (np.arange(m) + 0.5) * (hi - lo) / m))
    top, acts = a.top, []
    for j in range(top["seq"].shape[1]):
        if top["seq"][i, j] >= 0:
            acts.append(_activation(top["tokens"][i, j], top["acts"][i, j], decode, -1, round(float(a.max_activation[i]), 3), -1))
    total = max(int(a.hist_counts[i].sum()), 1)
    B = a.interval_counts.shape[1]
    iv_width = a.hist_range[i] / B
    for b in range(B):
        for j in range(a.intervals["seq"].shape[2]):
            if a.intervals["seq"][i, b, j] >= 0:
                acts.append(_activation(a.intervals["tokens"][i, b, j], a.intervals["acts"][i, b, j], decode,
                                        round(float(b * iv_width), 3), round(float((b + 1) * iv_width), 3),
                                        round(float(a.interval_counts[i, b]) / total, 5)))
    out["activations"] = acts
    return out


def export_neuronpedia(a: FeatureAnalysis, folder: str | Path, decode: Callable[[int], str], *,
                       model_id: str, sae_set: str, layer: int = 0, dataset: str = "",
                       n_tokens_in_prompt: int = 0, features_per_batch: int = 128) -> Path:
    """Writes ``folder/{model_id}_{sae_set}_{site}_{d_sae}/`` with ``batch-{n}.json`` files
    (dead features are listed in ``skipped_indexes.json`` and not exported)."""
    out = Path(folder) / f"{model_id}_{sae_set}_{a.site}_{a.d_sae}".replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    alive = [i for i in range(a.d_sae) if a.density[i] > 0]
    settings = {"model_id": model_id, "layer": layer, "sae_set": sae_set, "hook_name": a.site,
                "n_prompts_total": a.n_sequences, "n_tokens_in_prompt": n_tokens_in_prompt,
                "huggingface_dataset_path": dataset, "n_features_at_a_time": features_per_batch,
                "n_quantiles": int(a.interval_counts.shape[1]), "exporter": "jaxinterp"}
    (out / "run_settings.json").write_text(json.dumps(settings, indent=2))
    skipped = sorted(set(range(a.d_sae)) - set(alive))
    (out / "skipped_indexes.json").write_text(json.dumps({"model_id": model_id, "layer": str(layer),
                                                          "sae_set": sae_set, "skipped_indexes": skipped}))
    for n, lo in enumerate(range(0, len(alive), features_per_batch)):
        batch = {"model_id": model_id, "layer": layer, "sae_set": sae_set,
                 "features": [neuronpedia_feature(a, i, decode, dataset=dataset, n_tokens_in_prompt=n_tokens_in_prompt)
                              for i in alive[lo:lo + features_per_batch]]}
        (out / f"batch-{n}.json").write_text(json.dumps(batch))
    return out
