"""Towards Monosemanticity, small: a one-layer transformer, then SAEs on its MLP neurons.

Bricken et al. (2023) trained a one-layer transformer with a 512-neuron MLP and found
that a sparse dictionary over the MLP activations turns polysemantic neurons into
features that each mean one thing, more of them as the dictionary grows (1x to 256x).
This recipe does the same on the embedded corpus, at a size a laptop runs in minutes:

1. the LM: ``jaxinterp.recipes.lm`` with one layer (checkpoints, resume, report) in
   ``runs/<name>/lm/``;
2. SAEs at every width in ``widths`` (multiples of ``d_mlp``) trained together from one
   activation stream of ``blocks.0.mlp.hook_post`` (``runs/<name>/saes/train/``);
3. per width, on held-out tokens: L0, fraction of variance explained, MSE, cosine,
   shrinkage, CE loss recovered when spliced in (zero- and mean-ablation baselines), KL,
   dead and dense fractions, and the log10 feature-density histogram;
4. each SAE in SAELens format with its densities and top-activating contexts
   (``runs/<name>/saes/<width>/``), plus the held-out tokens;
5. every feature of every SAE analysed over the held-out tokens
   (:func:`jaxinterp.features.analyze_features`) and an offline feature browser,
   ``runs/<name>/browser/index.html`` (one site per width, a Neuronpedia export beside
   each, screenshots of the widest's index and of one feature page);
6. ``runs/<name>/saes/metrics.json`` (one entry per width), ``results.json``, plots and a
   ``report.md`` with the table and example features.

Run again and every stage resumes from its checkpoints (a finished stage costs seconds).
``jaxinterp demo`` runs it at the default size; larger: ``--d-mlp 512 --sae-steps 20000``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxinterp.data import TokenWindows
from jaxinterp.errors import ConfigError
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.recipes import lm as lm_recipe
from jaxinterp.sae import SAEConfig
from jaxinterp.sae.formats import load_saelens, save_saelens
from jaxinterp.sae.metrics import density_histogram_png, evaluate_sae, spliced_loss
from jaxinterp.sae.store import ActivationStore, site_activations
from jaxinterp.sae.trainer import TrainSAEConfig, train_sae
from jaxinterp.train.runlog import write_json_atomic

SITE = "blocks.0.mlp.hook_post"


@dataclasses.dataclass(frozen=True)
class MonosemanticityConfig:
    """The main job. Every field is a CLI flag (``--d-mlp 512``)."""

    name: str = flag("monosemanticity", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed of the LM, the SAEs and the data order")
    fast: bool = flag(False, "tiny sizes for CI (also JAXINTERP_FAST=1)")
    # the language model
    d_model: int = flag(128, "residual stream width of the one-layer LM")
    d_mlp: int = flag(256, "MLP neurons (the SAEs' input width)")
    n_heads: int = flag(4, "attention heads")
    seq_len: int = flag(128, "tokens per training window")
    lm_steps: int = flag(800, "LM optimiser steps (batches of 16 windows)")
    vocab_size: int = flag(4096, "BPE vocabulary trained on the corpus")
    # the SAEs
    widths: str = flag("1,2,4,8,16", "dictionary sizes as multiples of d_mlp")
    architecture: str = flag("topk", "SAE architecture (standard/relu, topk, batchtopk, "
                             "matryoshka_batchtopk, jumprelu, gated)")
    k: int = flag(16, "active latents per token (TopK family)")
    l1_coefficient: float = flag(5.0, "L1 coefficient (standard, gated)")
    l0_coefficient: float = flag(0.05, "L0 coefficient (jumprelu)")
    sae_steps: int = flag(3000, "SAE optimiser steps")
    sae_batch: int = flag(1024, "activations per SAE step")
    sae_lr: float = flag(1e-3, "SAE learning rate (Adam)")
    buffer_tokens: int = flag(65536, "activation store's shuffling buffer (rows)")
    mesh: str = flag("", "device mesh for SAE training, e.g. data=4,model=2")
    # evaluation and browser data
    eval_tokens: int = flag(32768, "held-out tokens for the metrics and densities")
    top_k_contexts: int = flag(20, "top activating contexts kept per feature")
    browser: bool = flag(True, "analyse every feature and write the offline browser (runs/<name>/browser/)")
    screenshots: bool = flag(True, "screenshots of the browser (needs chromium; skipped without it)")
    checkpoint_every: int = flag(500, "SAE checkpoint interval (steps)")
    progress: bool = flag(True, "progress bars")

    def __post_init__(self) -> None:
        check_config(self, positive=("d_model", "d_mlp", "n_heads", "seq_len", "lm_steps", "vocab_size",
                                     "k", "sae_steps", "sae_batch", "buffer_tokens", "eval_tokens",
                                     "top_k_contexts"), non_negative=("checkpoint_every",))
        check_sae_flags(self.architecture, self.sae_lr, self.l1_coefficient, self.l0_coefficient)
        if self.d_model % self.n_heads:
            raise ConfigError(f"--n-heads ({self.n_heads}) must divide --d-model ({self.d_model})")
        widths = self.widths.split(",")
        if not all(w.strip().isdigit() and int(w) > 0 for w in widths):
            raise ConfigError(f"--widths must be positive ints separated by commas (multiples of "
                              f"--d-mlp), got {self.widths!r}")
        if self.sae_batch > self.buffer_tokens:
            raise ConfigError(f"--buffer-tokens ({self.buffer_tokens}) must hold at least one "
                              f"--sae-batch ({self.sae_batch})")
        if self.mesh:
            from jaxinterp.sae.sharding import parse_mesh

            parse_mesh(self.mesh)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def sized(self) -> MonosemanticityConfig:
        """The config with CI sizes when fast mode is on."""
        if not is_fast(self):
            return self
        return dataclasses.replace(
            self, d_model=32, d_mlp=64, n_heads=2, seq_len=32, lm_steps=60, vocab_size=512,
            widths="1,4", sae_steps=120, sae_batch=256, buffer_tokens=4096, k=8,
            eval_tokens=4096, checkpoint_every=50, top_k_contexts=8)


def check_sae_flags(architecture: str, lr: float, l1: float, l0: float, lr_flag: str = "sae-lr") -> None:
    """Raises ``ConfigError`` naming the flag for an unknown architecture or a bad coefficient."""
    from jaxinterp.sae.config import _ALIASES, ARCHITECTURES

    if architecture not in ARCHITECTURES and architecture not in _ALIASES:
        raise ConfigError(f"--architecture must be one of {', '.join(ARCHITECTURES)} (or relu), "
                          f"got {architecture!r}")
    for name, value, positive in ((lr_flag, lr, True), ("l1-coefficient", l1, False),
                                  ("l0-coefficient", l0, False)):
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ConfigError(f"--{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")


def _lm_config(c: MonosemanticityConfig) -> lm_recipe.LMConfig:
    return lm_recipe.LMConfig(
        name=f"{c.name}/lm", runs_dir=c.runs_dir, vocab_size=c.vocab_size, seq_len=c.seq_len,
        n_layers=1, d_model=c.d_model, n_heads=c.n_heads, d_mlp=c.d_mlp, steps=c.lm_steps,
        seed=c.seed, eval_every=max(c.lm_steps // 4, 1), checkpoint_every=max(c.lm_steps // 4, 1),
        log_every=max(c.lm_steps // 40, 1), progress=c.progress)


def _sae_configs(c: MonosemanticityConfig) -> dict[str, SAEConfig]:
    widths = [int(w) for w in c.widths.split(",") if w.strip()]
    return {f"{w}x": SAEConfig(d_in=c.d_mlp, d_sae=w * c.d_mlp, architecture=c.architecture,
                               k=min(c.k, w * c.d_mlp), l1_coefficient=c.l1_coefficient,
                               l0_coefficient=c.l0_coefficient, hook_name=SITE,
                               normalize_activations="expected_average_only_in")
            for w in widths}


def run_monosemanticity(config: MonosemanticityConfig) -> dict:
    """Runs (or resumes) the pipeline; returns the summary written to ``results.json``."""
    c = config.sized()
    start = time.perf_counter()
    out = c.run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", dataclasses.asdict(c))
    lm_cfg = _lm_config(c)
    lm_summary = lm_recipe.train_lm(lm_cfg)
    lm_seconds = time.perf_counter() - start
    model = lm_recipe.load_model(lm_cfg.run_dir / "model")
    tokenizer, _, train_tokens, val_tokens = lm_recipe.corpus_splits(lm_cfg)

    store = ActivationStore(model, TokenWindows(train_tokens, c.seq_len, 32, seed=c.seed + 1), SITE,
                            batch_size=c.sae_batch, buffer_tokens=c.buffer_tokens, seed=c.seed)
    schedule = TrainSAEConfig(
        steps=c.sae_steps, batch_size=c.sae_batch, lr=c.sae_lr, lr_warmup_steps=min(100, c.sae_steps // 10),
        lr_decay_steps=c.sae_steps // 5, sparsity_warmup_steps=c.sae_steps // 20,
        dead_after_tokens=50 * c.sae_batch, resample_steps=_resample_steps(c), mesh=c.mesh,
        seed=c.seed, name=f"{c.name}/saes/train", runs_dir=c.runs_dir,
        log_every=max(c.sae_steps // 60, 1), checkpoint_every=c.checkpoint_every, progress=c.progress)
    t_sae = time.perf_counter()
    trained = train_sae(_sae_configs(c), store, schedule)
    sae_seconds = time.perf_counter() - t_sae

    from jaxinterp.recipes.browse import browse_sae, write_landing
    from jaxinterp.recipes.monosemanticity_report import top_contexts_npz, write_report

    n_eval = max(c.eval_tokens // c.seq_len, 1)
    windows = TokenWindows(val_tokens, c.seq_len, n_eval, shuffle=False).batch(0)  # [n, seq_len]
    saes_dir = out / "saes"
    np.save(saes_dir / "eval_tokens.npy", windows)
    acts = site_activations(model, windows, SITE)[SITE]
    per_width, browsers, t_eval = [], {}, time.perf_counter()
    by_width = sorted(trained.saes.items(), key=lambda kv: kv[1].cfg.d_sae)
    widest = by_width[-1][0]
    for name, sae in by_width:
        folder = saes_dir / name
        save_saelens(sae, folder, model_name=f"{c.name}/lm")
        stats = evaluate_sae(sae, np.array_split(acts, max(len(acts) // 4096, 1)))
        spliced = spliced_loss(model, np.array_split(windows, max(len(windows) // 16, 1)), sae)
        density = stats.pop("density")
        np.save(folder / "density.npy", density)
        density_histogram_png(density, folder / "density.png", title=f"{name} ({sae.cfg.d_sae} latents)")
        analysis, browsers[name] = browse_sae(
            model, sae, windows, lambda i: tokenizer.decode([int(i)]), out / "browser" / name,
            title=f"{c.name}: {name} SAE on {SITE}", k=c.top_k_contexts, passages=min(64, len(windows)),
            neuronpedia=f"{c.name}-lm" if c.browser else None, browser=c.browser,
            screenshots=c.browser and c.screenshots and name == widest)
        top_contexts_npz(analysis, folder)
        per_width.append({"name": name, "d_sae": sae.cfg.d_sae, **stats, **spliced})
    write_json_atomic(saes_dir / "metrics.json", per_width)
    if c.browser:
        write_landing(out / "browser", list(browsers), browsers, f"{c.name}: feature browsers")
    summary = {
        "lm": {k: v for k, v in lm_summary.items() if k != "samples"},
        "saes": per_width, "site": SITE, "architecture": c.architecture,
        "sae_tokens": c.sae_steps * c.sae_batch, "activation_tokens_per_s": store.tokens_per_second(),
        "seconds": {"lm": round(lm_seconds, 1), "saes": round(sae_seconds, 1),
                    "eval": round(time.perf_counter() - t_eval, 1),
                    "total": round(time.perf_counter() - start, 1)},
        "resumed_from": trained.resumed_from,
        "browser": {"index": str(out / "browser" / "index.html") if c.browser else None, **browsers},
    }
    write_json_atomic(out / "results.json", summary)
    write_report(c, summary, trained.metrics, tokenizer, windows, out)
    return {k: v for k, v in summary.items() if k != "lm"} | {"lm_eval_loss": lm_summary.get("final_eval_loss")}


def _resample_steps(c: MonosemanticityConfig) -> tuple[int, ...]:
    if c.architecture not in ("standard", "relu", "gated"):
        return ()
    return tuple(int(c.sae_steps * f) for f in (0.25, 0.5, 0.75))


def load_monosemanticity(run_dir: str | Path) -> dict:
    """A finished run's pieces: ``model``, ``saes`` (by width), ``metrics``, ``eval_tokens``
    ``[n, seq_len]``, and per width ``density`` and ``top`` (values and flat token ids of
    the top-activating positions in ``eval_tokens``)."""
    run_dir = Path(run_dir)
    saes_dir = run_dir / "saes"
    metrics = json.loads((saes_dir / "metrics.json").read_text())
    out = {"model": lm_recipe.load_model(run_dir / "lm" / "model"), "metrics": metrics,
           "eval_tokens": np.load(saes_dir / "eval_tokens.npy"), "saes": {}, "density": {}, "top": {}}
    for entry in metrics:
        folder = saes_dir / entry["name"]
        out["saes"][entry["name"]] = load_saelens(folder)
        out["density"][entry["name"]] = np.load(folder / "density.npy")
        with np.load(folder / "top_contexts.npz") as top:
            out["top"][entry["name"]] = {k: top[k] for k in top.files}
    return out


def feature_contexts(run: dict, width: str, feature: int, n: int = 10, before: int = 16,
                     after: int = 4) -> list[dict]:
    """The top ``n`` contexts of one feature with its activation on every token.

    Args:
        run: :func:`load_monosemanticity`'s result.
        width: which SAE (``"4x"``).
        feature: the latent's index.

    Returns:
        One dict per context, strongest first: ``tokens`` (ids), ``acts`` (the feature's
        activation on each of them), ``max_pos`` (the top token's index in the window)
        and ``value``.
    """
    from jaxinterp.errors import ShapeError

    sae, top, windows = run["saes"][width], run["top"][width], run["eval_tokens"]
    if not 0 <= feature < sae.cfg.d_sae:
        raise ShapeError(f"feature {feature} is out of range for d_sae={sae.cfg.d_sae}.")
    ids = [int(i) for i in top["ids"][feature, :n] if i >= 0]
    if not ids:
        return []
    rows = np.asarray([i // windows.shape[1] for i in ids])
    acts = site_activations(run["model"], windows[rows], SITE)[SITE]
    feat = np.asarray(sae.encode(acts))[:, feature].reshape(len(ids), windows.shape[1])
    out = []
    for j, flat in enumerate(ids):
        pos = flat % windows.shape[1]
        lo, hi = max(0, pos - before), min(windows.shape[1], pos + after + 1)
        out.append({"tokens": windows[rows[j], lo:hi].tolist(), "acts": feat[j, lo:hi].tolist(),
                    "max_pos": pos - lo, "value": float(top["values"][feature, j])})
    return out
