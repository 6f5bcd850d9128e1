"""Steering by clamping features (Scaling Monosemanticity), on two models.

1. **The main job's model**: the one-layer LM of ``jaxinterp demo`` and its widest SAE on
   the MLP neurons (run first when missing). 2. **SmolLM2-135M** (GGUF): an SAE trained
   here on one residual-stream layer over the embedded corpus (activations and SAE cached
   in the run folder, so a rerun reuses them).

For each, one feature is chosen (by default the one whose decoder direction raises some
token's logit most at its maximum activation, among features of moderate density), and
clamped to ``multiple`` times its maximum activation on every token, keeping the SAE's
error term (:func:`jaxinterp.features.steering.feature_steering`). Measured on prompts:
greedy continuations before and after, the mean ``KL(p_clean || p_steered)`` of the
next-token distributions, and the probability of the feature's top-10 promoted tokens
before and after. The control adds a random direction of the same norm as the clamp's
change at the same site: a specific effect raises the promoted tokens far more.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.train.runlog import write_json_atomic

MAIN_PROMPTS = ("The", "And God said unto", "def __init__(self,", "In the beginning", "import os")
SMOL_PROMPTS = ("The weather today is", "My favourite food is", "In the beginning God created",
                "The best way to learn is", "Once upon a time, there was")


@dataclasses.dataclass(frozen=True)
class SteeringConfig:
    """Feature steering on the main job's model and on SmolLM2-135M. Every field is a flag."""

    name: str = flag("steering", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed of the control direction and the SmolLM2 SAE")
    fast: bool = flag(False, "tiny sizes for CI (also JAXINTERP_FAST=1): the fast main job, no SmolLM2")
    run: str = flag("", "the main job's run folder (default: RUNS_DIR/demo, or a fast one in fast mode)")
    width: str = flag("", "which SAE of the main job (default: the widest)")
    feature: int = flag(-1, "feature to steer (-1: the strongest promoter among moderately dense features)")
    multiple: float = flag(10.0, "clamp value as a multiple of the feature's max activation")
    max_new_tokens: int = flag(20, "tokens generated per prompt")
    smollm2: bool = flag(True, "also steer SmolLM2-135M with an SAE trained on one of its residual layers")
    smol_layer: int = flag(5, "SmolLM2 layer whose hook_resid_post the SAE reads")
    smol_tokens: int = flag(32768, "corpus tokens whose activations train the SmolLM2 SAE (cached)")
    smol_d_sae: int = flag(2304, "SmolLM2 SAE width (4x d_model)")
    smol_k: int = flag(32, "SmolLM2 SAE active latents per token (TopK)")
    smol_steps: int = flag(800, "SmolLM2 SAE optimiser steps")
    progress: bool = flag(True, "progress bars")

    def __post_init__(self) -> None:
        check_config(self, positive=("max_new_tokens", "smol_tokens", "smol_d_sae", "smol_k", "smol_steps"),
                     non_negative=("smol_layer",))
        if not self.multiple > 0:
            from jaxinterp.errors import ConfigError

            raise ConfigError(f"--multiple must be > 0, got {self.multiple}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def sized(self) -> SteeringConfig:
        """Fast mode steers the fast main job, whose 60-step LM's MLP writes almost nothing to
        the residual stream (zero-ablating it moves the loss by ~1e-4 nats): it clamps 30x
        harder and generates fewer tokens, so the effect is still measurable in CI."""
        if not is_fast(self):
            return self
        return dataclasses.replace(self, multiple=self.multiple * 30, max_new_tokens=min(self.max_new_tokens, 8))


def pick_feature(analysis: Any, logits: dict[str, np.ndarray], lo: float = 1e-4, hi: float = 0.05) -> int:
    """The feature whose top promoted token gains most at its max activation
    (``max_activation * pos_values[:, 0]``), among features with density in ``[lo, hi]``."""
    score = analysis.max_activation * logits["pos_values"][:, 0]
    ok = (analysis.density >= lo) & (analysis.density <= hi)
    score = np.where(ok if ok.any() else analysis.density > 0, score, -np.inf)
    return int(np.argmax(score))


def steer_and_compare(model: Any, sae: Any, analysis: Any, prompts: tuple[str, ...], c: SteeringConfig,
                      feature: int, decode: Any) -> dict[str, Any]:
    """Clamp ``feature`` and a same-norm random direction; before/after on ``prompts``."""
    from jaxinterp.features.logit_effects import logit_effects
    from jaxinterp.features.steering import (
        compare_steering,
        direction_steering,
        feature_direction,
        feature_steering,
    )

    logits = analysis.logits if analysis.logits is not None else logit_effects(model, sae)
    i = pick_feature(analysis, logits) if feature < 0 else analysis.index(feature)
    max_act = float(analysis.max_activation[i])
    promoted = [int(t) for t in logits["pos_index"][i]]
    clamp = feature_steering(sae, i, multiple=c.multiple, max_activation=max_act, site=sae.cfg.hook_name)
    steered = compare_steering(model, list(prompts), clamp, tokens_of_interest=promoted,
                               max_new_tokens=c.max_new_tokens)
    direction = feature_direction(sae, i)
    rng = jax.random.normal(jax.random.key(c.seed), direction.shape)
    rng = rng / jnp.linalg.norm(rng) * jnp.linalg.norm(direction) * c.multiple * max_act
    control = compare_steering(model, list(prompts), direction_steering(sae.cfg.hook_name, rng),
                               tokens_of_interest=promoted, max_new_tokens=c.max_new_tokens)
    return {"feature": i, "site": sae.cfg.hook_name, "d_sae": sae.cfg.d_sae, "density": float(analysis.density[i]),
            "max_activation": max_act, "clamp_value": c.multiple * max_act,
            "promoted_tokens": [decode(t) for t in promoted], "prompts": list(prompts),
            "steered": steered.to_dict(), "random_direction_control": control.to_dict()}


def _main_job(c: SteeringConfig) -> tuple[Any, Any, Any, Any, Path]:
    from jaxinterp.data import load_tokenizer
    from jaxinterp.recipes.monosemanticity import (
        MonosemanticityConfig,
        load_monosemanticity,
        run_monosemanticity,
    )

    run = Path(c.run) if c.run else Path(c.runs_dir) / ("demo" if not is_fast(c) else "steering_lm")
    if not (run / "saes" / "metrics.json").is_file():
        if c.run or not is_fast(c):       # only fast mode trains a (tiny) main job of its own
            from jaxinterp.errors import CheckpointError

            raise CheckpointError(f"{run} holds no finished main job (saes/metrics.json); run `jaxinterp demo` "
                                  "first, or pass --run with a finished one.")
        run_monosemanticity(MonosemanticityConfig(name=run.name, runs_dir=str(run.parent), fast=c.fast, widths="4",
                                                  browser=False, progress=c.progress))
    job = load_monosemanticity(run)
    width = c.width or job["metrics"][-1]["name"]
    if width not in job["saes"]:
        from jaxinterp.errors import ConfigError

        raise ConfigError(f"No SAE {width!r} in {run}; it has {', '.join(job['saes'])}.")
    tokenizer = load_tokenizer(run / "lm" / "model")
    return job["model"].with_tokenizer(tokenizer), job["saes"][width], job["eval_tokens"], tokenizer, run / "browser" / width


def _analysis(model: Any, sae: Any, windows: Any, saved: Path) -> Any:
    """The main job's saved feature analysis of this SAE (its browser data, over the same
    evaluation windows) when there is one, else a fresh one."""
    from jaxinterp.features.analysis import AnalysisSettings, analyze_features
    from jaxinterp.features.result import load_analysis

    if (saved / "analysis.npz").is_file():
        analysis = load_analysis(saved)
        if (analysis.d_sae, analysis.site, analysis.n_sequences) == (sae.cfg.d_sae, sae.cfg.hook_name, len(windows)):
            return analysis
    return analyze_features(model, sae, windows, settings=AnalysisSettings(cooccurrence=False), neighbours=0)


def _smollm2_sae(c: SteeringConfig, out: Path) -> tuple[Any, Any, np.ndarray]:
    """SmolLM2, an SAE on ``blocks.L.hook_resid_post`` (trained once, cached), held-out windows."""
    import jaxinterp as ji
    from jaxinterp.features.analysis import site_input
    from jaxinterp.io.gguf import find_smollm2_gguf
    from jaxinterp.recipes.train_sae import token_stream
    from jaxinterp.sae import SAEConfig, TrainSAEConfig, load_saelens, save_saelens, train_sae

    smol = ji.from_pretrained(find_smollm2_gguf())
    site = f"blocks.{c.smol_layer}.hook_resid_post"
    seq = 64
    stream = token_stream("default", smol.tokenizer)
    rng = np.random.default_rng(c.seed)
    n_train = max(c.smol_tokens // seq, 8)
    starts = np.sort(rng.choice(len(stream) - seq - 1, n_train + 64, replace=False))
    windows = np.stack([stream[s:s + seq] for s in starts]).astype(np.int32)
    train_windows, held_out = windows[:n_train], windows[n_train:]
    folder = out / "smollm2"
    key = {"layer": c.smol_layer, "tokens": c.smol_tokens, "d_sae": c.smol_d_sae, "k": c.smol_k,
           "steps": c.smol_steps, "seed": c.seed}
    if (folder / "key.json").is_file() and json.loads((folder / "key.json").read_text()) == key:
        return smol, load_saelens(folder / "sae"), held_out
    read = jax.jit(lambda m, t: site_input(m, t, site)[:, 1:])   # position 0 is an attention sink: left out
    acts = np.concatenate([np.asarray(read(smol, jnp.asarray(train_windows[i:i + 16])))
                           .reshape(-1, smol.cfg.d_model) for i in range(0, n_train - n_train % 16, 16)])
    cfg = SAEConfig(d_in=smol.cfg.d_model, d_sae=c.smol_d_sae, architecture="topk", k=c.smol_k, hook_name=site,
                    normalize_activations="expected_average_only_in")
    result = train_sae(cfg, acts, TrainSAEConfig(
        steps=c.smol_steps, batch_size=512, lr=1e-3, lr_warmup_steps=c.smol_steps // 20,
        lr_decay_steps=c.smol_steps // 5, dead_after_tokens=512 * 100, seed=c.seed,
        name=f"{c.name}/smollm2/train", runs_dir=c.runs_dir, progress=c.progress))
    save_saelens(result.sae, folder / "sae", model_name="SmolLM2-135M-Instruct.Q4_1.gguf")
    (folder / "key.json").write_text(json.dumps(key))
    return smol, result.sae, held_out


def _plot(results: dict[str, dict], path: Path) -> Path:
    from jaxinterp.viz._figure import figure, save

    fig = figure((9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    names = list(results)
    x = np.arange(len(names))
    for j, (label, get) in enumerate((
            ("clean", lambda r: r["steered"]["token_prob_before"]),
            ("feature clamped", lambda r: r["steered"]["token_prob_after"]),
            ("random direction, same norm", lambda r: r["random_direction_control"]["token_prob_after"]))):
        ax1.bar(x + (j - 1) * 0.27, [get(results[n]) for n in names], 0.27, label=label)
    ax1.set_xticks(x, names)
    ax1.set_yscale("log")
    ax1.set_ylabel("P(feature's top-10 promoted tokens)")
    ax1.set_title("next-token probability of the promoted tokens", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.bar(x - 0.2, [results[n]["steered"]["kl"] for n in names], 0.4, color="C1", label="feature clamped")
    ax2.bar(x + 0.2, [results[n]["random_direction_control"]["kl"] for n in names], 0.4, color="C2",
            label="random direction, same norm")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("mean KL(clean || steered), nats")
    ax2.set_title("change of the next-token distribution", fontsize=9)
    ax2.legend(fontsize=7)
    return save(fig, path)


def run_steering(config: SteeringConfig) -> dict:
    """Steers both models and writes ``results.json``, ``steering.png`` and ``report.md``."""
    from jaxinterp.features.analysis import AnalysisSettings, analyze_features

    c = config.sized()

    start = time.perf_counter()
    model, sae, windows, tokenizer, saved = _main_job(c)       # errors before anything is written
    out = c.run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", dataclasses.asdict(c))
    results: dict[str, dict] = {}
    analysis = _analysis(model, sae, windows, saved)
    results["main job LM"] = steer_and_compare(model, sae, analysis, MAIN_PROMPTS, c, c.feature,
                                                lambda t: tokenizer.decode([int(t)]))
    if c.smollm2 and not is_fast(c):
        smol, smol_sae, held_out = _smollm2_sae(c, out)
        smol_analysis = analyze_features(smol, smol_sae, held_out, batch_size=16, neighbours=0,
                                         settings=AnalysisSettings(cooccurrence=False, skip_first=1))
        results["SmolLM2-135M"] = steer_and_compare(smol, smol_sae, smol_analysis, SMOL_PROMPTS, c, -1,
                                                    lambda t: smol.tokenizer.decode([int(t)]))
    _plot(results, out / "steering.png")
    summary = {"models": results, "multiple": c.multiple, "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(out / "results.json", summary)
    _report(summary, out / "report.md")
    return {name: {"feature": r["feature"], "kl": r["steered"]["kl"],
                   "promoted_prob_before": r["steered"]["token_prob_before"],
                   "promoted_prob_after": r["steered"]["token_prob_after"],
                   "control_prob_after": r["random_direction_control"]["token_prob_after"]}
            for name, r in results.items()} | {"seconds": summary["seconds"]}


def _report(summary: dict, path: Path) -> None:
    lines = ["# Steering by clamping features", "",
             f"Each feature is clamped to {summary['multiple']}x its maximum activation on every token, keeping "
             "the SAE's error term; the control adds a random direction of the same norm at the same site.", "",
             "| model | site | feature | density | clamp | KL clamped | KL control | P(promoted) clean | clamped | control |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["models"].items():
        s, ctl = r["steered"], r["random_direction_control"]
        lines.append(f"| {name} | `{r['site']}` | {r['feature']} | {r['density']:.2e} | {r['clamp_value']:.2f} | "
                     f"{s['kl']:.3f} | {ctl['kl']:.3f} | {s['token_prob_before']:.2e} | {s['token_prob_after']:.2e} | "
                     f"{ctl['token_prob_after']:.2e} |")
    lines += ["", "![steering](steering.png)", ""]
    for name, r in summary["models"].items():
        lines += [f"## {name}: feature {r['feature']}", "",
                  "Top promoted tokens (W_dec . W_U): "
                  + ", ".join(html.escape(json.dumps(t)) for t in r["promoted_tokens"]),
                  "", "| prompt | clean | clamped |", "|---|---|---|"]
        for p, b, a in zip(r["prompts"], r["steered"]["before"], r["steered"]["after"], strict=True):
            cell = lambda t: html.escape(json.dumps(t)[1:-1]).replace("|", "&#124;")  # noqa: E731
            lines.append(f"| {cell(p)} | {cell(b)} | {cell(a)} |")
        lines.append("")
    lines.append(f"Wall time {summary['seconds']} s.")
    path.write_text("\n".join(lines) + "\n")
