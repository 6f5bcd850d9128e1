"""The monosemanticity run's outputs for readers: feature-browser data, plots, report.md.

* :func:`top_contexts_npz`: each feature's top activating contexts, from the feature
  analysis (:mod:`jaxinterp.features.analysis`; the browser lives in ``browser/``), saved as
  ``top_contexts.npz`` (``values``, ``ids`` ``[d_sae, k]``; an id is ``window * seq_len +
  pos`` in ``saes/eval_tokens.npy``; -1 marks an empty slot).
* :func:`write_report`: ``report.md`` with the per-width table, the metrics-vs-width and
  density plots, the SAE training curves, and example features with their contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.viz._figure import figure, save


def top_contexts_npz(analysis: Any, folder: Path) -> Path:
    """Each feature's top contexts from the feature analysis as ``top_contexts.npz``:
    ``values`` and flat ``ids`` ``[d_sae, k]`` (``sequence * seq_len + position`` of the
    max-activating token in ``saes/eval_tokens.npy``; -1 for an empty slot)."""
    top = analysis.top
    seq_len = analysis.n_tokens // max(analysis.n_sequences, 1)
    peak = top["start"] + top["acts"].argmax(-1)
    ids = np.where(top["seq"] >= 0, top["seq"].astype(np.int64) * seq_len + peak, -1)
    path = folder / "top_contexts.npz"
    np.savez(path, values=top["values"].astype(np.float32), ids=ids.astype(np.int64))
    return path


def _width_plot(per_width: list[dict], path: Path) -> Path:
    fig = figure((10, 3.2))
    axes = fig.subplots(1, 3)
    d = [m["d_sae"] for m in per_width]
    panels = (("l0", "L0 (active latents per token)"), ("fve", "fraction of variance explained"),
              ("ce_loss_recovered", "CE loss recovered"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [m[key] for m in per_width]
        ax.plot(d, values, "o-")
        if key == "l0":  # a count from zero (TopK's is k at every width: a flat line, not noise)
            ax.set_ylim(0, 1.25 * max(max(values), 1.0))
        ax.ticklabel_format(axis="y", useOffset=False)
        if key == "ce_loss_recovered":
            ax.plot(d, [m["ce_loss_recovered_mean"] for m in per_width], "s--", label="vs mean-ablation")
            ax.legend(fontsize=7, labels=["vs zero-ablation", "vs mean-ablation"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dictionary size d_sae")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("SAEs on blocks.0.mlp.hook_post, by width", fontsize=10)
    return save(fig, path)


def _density_plot(densities: dict[str, np.ndarray], path: Path) -> Path:
    fig = figure((6.5, 3.6))
    ax = fig.subplots()
    bins = np.linspace(-6, 0, 49)
    for name, dens in densities.items():
        alive = dens[dens > 0]
        ax.hist(np.log10(alive), bins=bins, histtype="step", lw=1.4,
                label=f"{name}: {int((dens == 0).sum())}/{dens.size} dead")
    ax.set_xlabel("log10 feature density (fraction of held-out tokens)")
    ax.set_ylabel("latents")
    ax.set_title("feature density by dictionary width")
    ax.legend(fontsize=7)
    return save(fig, path)


def _training_plot(metrics: list[dict], names: list[str], path: Path) -> Path:
    fig = figure((9, 3.2))
    axes = fig.subplots(1, 2)
    for name in names:
        rows = [m for m in metrics if f"{name}/mse" in m]
        steps = [m["step"] for m in rows]
        axes[0].plot(steps, [m[f"{name}/fve"] for m in rows], label=name)
        axes[1].plot(steps, [m[f"{name}/dead_frac"] for m in rows], label=name)
    for ax, title in zip(axes, ("training FVE (per batch)", "dead fraction"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


def _context(tokenizer, windows: np.ndarray, flat_id: int, before: int = 12, after: int = 3) -> str:
    row, pos = divmod(int(flat_id), windows.shape[1])
    seq = windows[row]
    left = tokenizer.decode([int(t) for t in seq[max(0, pos - before):pos]])
    mid = tokenizer.decode([int(seq[pos])])
    right = tokenizer.decode([int(t) for t in seq[pos + 1:pos + 1 + after]])
    text = f"{left}[[{mid}]]{right}"
    return text.replace("```", "'''").replace("\n", "⏎")


def example_features(top: dict[str, np.ndarray], density: np.ndarray, n: int = 8) -> list[int]:
    """Features with a moderate density (1e-3 .. 5e-2), spread over that range."""
    ok = np.flatnonzero((density > 1e-3) & (density < 5e-2) & (top["ids"][:, 0] >= 0))
    if len(ok) == 0:
        ok = np.flatnonzero(top["ids"][:, 0] >= 0)
    ordered = ok[np.argsort(-density[ok])]
    return [int(i) for i in ordered[np.linspace(0, len(ordered) - 1, min(n, len(ordered))).astype(int)]]


def write_report(c, summary: dict, train_metrics: list[dict], tokenizer, windows: np.ndarray,
                 out: Path) -> Path:
    saes_dir = out / "saes"
    per_width = summary["saes"]
    names = [m["name"] for m in per_width]
    densities = {m["name"]: np.load(saes_dir / m["name"] / "density.npy") for m in per_width}
    _width_plot(per_width, saes_dir / "metrics_vs_width.png")
    _density_plot(densities, saes_dir / "density.png")
    _training_plot(train_metrics, names, saes_dir / "training.png")
    lm = summary["lm"]
    lines = [
        f"# {c.name}: towards monosemanticity", "",
        f"A one-layer transformer (d_model {c.d_model}, {c.d_mlp} MLP neurons, vocab {c.vocab_size}) "
        f"trained for {c.lm_steps} steps on the embedded corpus: held-out loss "
        f"{lm.get('final_eval_loss', float('nan')):.3f} nats (unigram entropy "
        f"{lm.get('unigram_entropy_nats', float('nan')):.3f}); its report is in `lm/report.md`.", "",
        f"{c.architecture} SAEs on `{summary['site']}`, trained together from one activation stream "
        f"({c.sae_steps} steps of {c.sae_batch} activations = {summary['sae_tokens']:,} tokens; "
        f"activation store {summary['activation_tokens_per_s']:,.0f} tokens/s). Metrics on "
        f"{per_width[0]['n_tokens']:,} held-out tokens:", "",
        "| SAE | d_sae | L0 | FVE | MSE | cosine | shrinkage | CE recovered (zero abl.) | "
        "CE recovered (mean abl.) | KL | dead | dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in per_width:
        lines.append(
            f"| {m['name']} | {m['d_sae']} | {m['l0']:.1f} | {m['fve']:.3f} | {m['mse']:.4g} | "
            f"{m['cosine']:.3f} | {m['shrinkage']:.3f} | {m['ce_loss_recovered']:.3f} | "
            f"{m['ce_loss_recovered_mean']:.3f} | {m['kl']:.4f} | {m['dead_frac']:.3f} | "
            f"{m['dense_frac']:.3f} |")
    ce = per_width[0]
    lines += ["", f"Clean CE {ce['ce_clean']:.3f}; zero-ablating the MLP gives {ce['ce_zero_ablation']:.3f}, "
              f"mean-ablating it {ce['ce_mean_ablation']:.3f}.", "",
              "![metrics by width](saes/metrics_vs_width.png)", "", "![density](saes/density.png)", "",
              "![training](saes/training.png)", ""]
    widest = per_width[-1]["name"]
    with np.load(saes_dir / widest / "top_contexts.npz") as f:
        top = {k: f[k] for k in f.files}
    lines += [f"## Example features ({widest})", "",
              "Features of moderate density with their top activating contexts (the max-activating "
              "token in [[ ]]; ⏎ is a newline). Browser data: `saes/<width>/top_contexts.npz`.", ""]
    for i in example_features(top, densities[widest]):
        lines.append(f"**feature {i}** (density {densities[widest][i]:.2e}, max {top['values'][i, 0]:.2f})")
        lines.append("```")
        lines += [f"{top['values'][i, j]:6.2f}  {_context(tokenizer, windows, top['ids'][i, j])}"
                  for j in range(min(4, top["ids"].shape[1])) if top["ids"][i, j] >= 0]
        lines += ["```", ""]
    browser = summary.get("browser") or {}
    if browser.get("index"):
        lines += ["## Feature browser", "",
                  "`browser/index.html` opens from disk (no server, no network): every feature of every width "
                  "with its density, activation histogram, top contexts coloured by activation, samples per "
                  "activation interval, logit effects, nearest and co-occurring features, and a text box over "
                  "corpus passages. `browser/<width>/neuronpedia/` holds the same in Neuronpedia's upload layout.", "",
                  "| SAE | features | alive | analysis (s) | tokens/s |", "|---|---|---|---|---|"]
        shots = []
        for name, b in browser.items():
            if isinstance(b, dict):
                lines.append(f"| {name} | {b['d_sae']} | {b['alive']} | {b['analysis_seconds']} | "
                             f"{b['tokens_per_second']:,.0f} |")
                s = b.get("screenshots") or {}
                if s.get("index_png"):
                    shots += [f"![{name} browser index](browser/{name}/browser_index.png)",
                              f"![{name} feature page](browser/{name}/browser_feature.png)"]
        lines += [""] + shots + [""]
    secs = summary["seconds"]
    lines.append(f"Wall time: LM {secs['lm']} s, SAEs {secs['saes']} s, evaluation {secs['eval']} s, "
                 f"total {secs['total']} s.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
