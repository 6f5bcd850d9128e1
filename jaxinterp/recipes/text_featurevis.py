"""Feature visualisation for the main job's language model: MLP neurons by optimisation,
against their top contexts in the corpus.

1. Load the LM written by ``jaxinterp demo`` / ``jaxinterp train`` (``runs/<lm_run>/model``);
   when there is none, train a small one through :func:`jaxinterp.recipes.lm.train_lm`
   (offline, embedded corpus).
2. Dataset examples: every neuron of ``blocks.{layer}.mlp.hook_post`` over held-out corpus
   windows, every position a candidate (:func:`~jaxinterp.features.dataset_examples`,
   streaming top-k on the device); pick ``n_neurons`` live neurons at random.
3. Visualise them (:func:`~jaxinterp.features.visualize_text`): soft input embeddings,
   projected to the nearest tokens, then a gradient-guided token search, the neuron read
   at the last of ``seq_len`` tokens. Report each against its top context's activation.

Writes ``runs/<name>/``: ``config.json``, ``results.json``, ``report.md`` (a table of the
contexts and the found sequences, text escaped), ``activations.png``::

    jaxinterp experiment text_featurevis            # uses runs/demo if present
    jaxinterp experiment text_featurevis --fast

The objective is an :class:`~jaxinterp.features.Objective`, so an SAE feature plugs in as
``sae_feature(hook, W_enc[:, i], b_enc[i], threshold=..., b_dec=...)`` in place of the neuron.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path

import numpy as np

from jaxinterp.data import default_tokenizer, load_corpus, load_tokenizer, tokenize_corpus
from jaxinterp.features import dataset_examples, neuron, visualize_text
from jaxinterp.recipes import flag, is_fast
from jaxinterp.recipes.lm import LMConfig, load_model, train_lm


@dataclasses.dataclass(frozen=True)
class TextFeatureVisConfig:
    name: str = flag("text_featurevis", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed for neuron choice and optimisation")
    fast: bool = flag(False, "reduced sizes for CI (also JAXINTERP_FAST=1)")
    lm_run: str = flag("demo", "LM run under runs_dir to read (its model/ folder); trained small if absent")
    layer: int = flag(-1, "MLP layer whose neurons are visualised (-1: the last)")
    n_neurons: int = flag(8, "neurons visualised (fast: 4)")
    seq_len: int = flag(8, "tokens optimised; the neuron is read at the last")
    steps: int = flag(0, "soft-embedding steps (0: 300, fast 100)")
    search_steps: int = flag(0, "token-search steps (0: 128, fast 32)")
    n_windows: int = flag(0, "held-out corpus windows of 64 tokens searched for top contexts (0: 4000, fast 400)")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _model_and_tokenizer(config: TextFeatureVisConfig, fast: bool):
    folder = Path(config.runs_dir) / config.lm_run / "model"
    trained = None
    if not (folder / "model.safetensors").exists():
        lm = LMConfig(name=config.lm_run if config.lm_run != "demo" else "text_featurevis_lm",
                      runs_dir=config.runs_dir, n_layers=2, d_model=64, n_heads=4, d_mlp=256,
                      seq_len=64, steps=120 if fast else 400, eval_every=0, checkpoint_every=0, seed=config.seed)
        folder = lm.run_dir / "model"
        if not (folder / "model.safetensors").exists():  # a small LM trained by an earlier run is reused
            print(f"no LM at {Path(config.runs_dir) / config.lm_run}; training a small one ({lm.steps} steps) "
                  f"in {lm.run_dir}")
            trained = train_lm(lm)
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").exists() else default_tokenizer()
    return load_model(folder), tokenizer, folder, trained


def run_text_featurevis(config: TextFeatureVisConfig) -> dict:
    fast = is_fast(config)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "fast": fast}, indent=2))
    t_start = time.perf_counter()
    model, tokenizer, folder, trained = _model_and_tokenizer(config, fast)
    n_layers = model.cfg.n_layers
    layer = config.layer % n_layers if -n_layers <= config.layer < n_layers else None
    if layer is None or model.cfg.d_mlp is None:
        raise ValueError(f"layer {config.layer} is not an MLP layer of this {n_layers}-layer model")
    hook = f"blocks.{layer}.mlp.hook_post"

    # held-out windows: the end of the corpus stream, as the LM recipe's validation split
    tokens = tokenize_corpus(load_corpus("default"), tokenizer)
    n_windows = config.n_windows or (400 if fast else 4000)
    width = min(64, model.cfg.n_ctx)
    tail = np.asarray(tokens[-n_windows * width:], np.int32)
    windows = tail[: len(tail) // width * width].reshape(-1, width)
    t0 = time.perf_counter()
    d_mlp = model.cfg.d_mlp
    every = dataset_examples(model, neuron(hook, np.arange(d_mlp), -1), windows, k=4, batch_size=64,
                             per_position=True)
    t_examples = time.perf_counter() - t0
    alive = np.flatnonzero(every.top > 0.1 * every.top.max())
    rng = np.random.default_rng(config.seed)
    n = min(config.n_neurons if not fast else min(config.n_neurons, 4), len(alive))
    chosen = np.sort(rng.choice(alive, n, replace=False))

    t0 = time.perf_counter()
    vis = visualize_text(model, neuron(hook, chosen, -1), seq_len=config.seq_len,
                         steps=config.steps or (100 if fast else 300),
                         search_steps=config.search_steps or (32 if fast else 128), seed=config.seed)
    t_vis = time.perf_counter() - t0

    rows = []
    for i, u in enumerate(chosen):
        item, pos = int(every.items[u, 0]), int(every.positions[u, 0, 0])
        context = windows[item, max(0, pos - 11):pos + 1]
        top = float(every.values[u, 0])
        search = float(vis.activation.values[i])
        rows.append({
            "neuron": int(u), "top_context": tokenizer.decode(context[:-1]), "top_token": tokenizer.decode(context[-1:]),
            "top_activation": round(top, 3), "soft_activation": round(float(vis.soft_activation[i]), 3),
            "projected": tokenizer.decode(vis.projected_tokens[i]),
            "projected_activation": round(float(vis.projected_activation[i]), 3),
            "search": tokenizer.decode(vis.tokens[i]), "search_activation": round(search, 3),
            "search_over_top": round(search / top, 2) if top > 0 else None,
        })
    _plot(out, rows, hook)
    summary = {
        "lm": str(folder), "lm_trained_here": trained is not None, "hook": hook, "neurons": [int(u) for u in chosen],
        "windows": int(len(windows)), "live_neurons": int(len(alive)), "d_mlp": int(d_mlp),
        "search_beats_top_example": int(sum(r["search_activation"] > r["top_activation"] for r in rows)),
        "soft_beats_top_example": int(sum(r["soft_activation"] > r["top_activation"] for r in rows)),
        "projected_beats_top_example": int(sum(r["projected_activation"] > r["top_activation"] for r in rows)),
        "n": len(rows), "median_search_over_top": float(np.median([r["search_over_top"] for r in rows])),
        "rows": rows,
        "seconds": {"dataset_examples": round(t_examples, 1), "visualize": round(t_vis, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "fast": fast,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _report(out, summary)
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}


def _plot(out: Path, rows: list[dict], hook: str) -> None:
    from jaxinterp.viz._figure import figure, save

    fig = figure((1.2 * len(rows) + 2.5, 3.6))
    ax = fig.subplots()
    x = np.arange(len(rows))
    bars = (("top dataset context", "top_activation"), ("projected soft prompt", "projected_activation"),
            ("token search", "search_activation"), ("soft embeddings", "soft_activation"))
    for j, (label, key) in enumerate(bars):
        ax.bar(x + (j - 1.5) * 0.2, [r[key] for r in rows], 0.2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([f"neuron {r['neuron']}" for r in rows], rotation=30, fontsize=7)
    ax.set_ylabel(f"activation ({hook}, last token)")
    ax.set_title("text neurons: optimised inputs vs the corpus's best context")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    save(fig, out / "activations.png")


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "&#124;").replace("\n", "\\n")


def _report(out: Path, s: dict) -> None:
    lines = [f"# text_featurevis{' (fast)' if s['fast'] else ''}", "",
             f"Model `{s['lm']}`, neurons of `{s['hook']}` ({s['live_neurons']} of {s['d_mlp']} live over "
             f"{s['windows']} held-out windows). The token search beats the top dataset context on "
             f"{s['search_beats_top_example']} of {s['n']} neurons (median ratio {s['median_search_over_top']}); "
             f"soft embeddings on {s['soft_beats_top_example']}, their nearest tokens on {s['projected_beats_top_example']}.",
             "", "| neuron | top context [token] | top | soft | projected tokens | proj. | token search | search |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['neuron']} | {_cell(r['top_context'])}**[{_cell(r['top_token'])}]** | {r['top_activation']} | "
                     f"{r['soft_activation']} | {_cell(r['projected'])} | {r['projected_activation']} | "
                     f"{_cell(r['search'])} | {r['search_activation']} |")
    lines += ["", "![activations](activations.png)", "", f"Wall time: {s['seconds']}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
