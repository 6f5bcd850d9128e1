"""Superposition, Memorization, and Double Descent (Henighan et al. 2023), scaled to a CPU.

The ReLU output model ``x' = ReLU(W^T W x + b)`` with m=2 hidden dimensions and n=100
features of uniform importance, sparsity 0.97 (``--fast``: n=40, sparsity 0.925), trains full-batch (AdamW with weight decay,
linear warm-up then cosine decay) on a fixed training set of ``T`` examples, for ``T``
over more than two orders of magnitude and several seeds per ``T``; every run trains in
one program (sets of different sizes run as separate groups inside it, unpadded). Then:

* small ``T``: the model memorises. The hidden vectors ``h_t`` of the training examples are
  long and spread round the circle (a polygon of ``T`` data points) while the features
  stay short;
* large ``T``: it generalises. A few features take clean polygon directions and the
  training examples' hidden vectors are whatever their features make them;
* in between, the test loss peaks: the double-descent bump.

Writes ``runs/<name>/``: ``double_descent.png`` (test and train loss against ``T``),
``hidden_vs_features.png`` (training-example hidden vectors and feature vectors of every
seed at the smallest and the largest ``T``), ``results.json`` (``T``, ``test_loss``: the mean over seeds,
and per-seed values), ``config.json``, ``report.md``.

    jaxinterp experiment double_descent           # a few minutes on 2 CPU cores
    jaxinterp experiment double_descent --fast    # reduced sizes (CI)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxinterp.errors import ConfigError
from jaxinterp.models import toy
from jaxinterp.recipes import flag, is_fast
from jaxinterp.viz import toy as plots

SIZES = (3, 5, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
# The defaults, and the --fast ones (a smaller model that shows the same curve in seconds).
DEFAULTS = dict(n_features=100, sparsity=0.97, lr=1e-3, steps=10_000, replicas=5, sizes=SIZES)
FAST = dict(n_features=40, sparsity=0.925, lr=1e-2, steps=3000, replicas=3,
            sizes=(3, 6, 12, 24, 48, 96, 384))


@dataclasses.dataclass(frozen=True)
class DoubleDescentConfig:
    """The double-descent run. Sizes of 0 (or "") mean the default (smaller with ``--fast``)."""

    name: str = flag("double_descent", "run folder under runs_dir")
    runs_dir: str = flag("runs", "where run folders go")
    seed: int = flag(0, "seed of the training sets, initialisations and test sets")
    fast: bool = flag(False, "reduced sizes for CI (also JAXINTERP_FAST=1)")
    n_features: int = flag(0, "features n (0: 100, 40 with --fast)")
    n_hidden: int = flag(2, "hidden dimensions m")
    sparsity: float = flag(-1.0, "probability that a feature is absent (-1: 0.97, 0.925 with --fast)")
    sizes: str = flag("", "training-set sizes T, comma separated (default 3 ... 1024; 3 ... 384 with --fast)")
    replicas: int = flag(0, "seeds per T, averaged (0: 5, 3 with --fast)")
    steps: int = flag(0, "full-batch AdamW steps (0: 10000, 3000 with --fast)")
    lr: float = flag(0.0, "peak learning rate (0: 1e-3, 1e-2 with --fast)")
    weight_decay: float = flag(1e-2, "AdamW weight decay")
    warmup: float = flag(0.05, "fraction of steps of linear warm-up before the cosine decay")
    test_examples: int = flag(20_000, "fresh examples for each test loss")
    progress: bool = flag(True, "progress bars")

    def __post_init__(self) -> None:
        for name in ("n_features", "replicas", "steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: the default), got {getattr(self, name)!r}.")
        toy.ToyConfig(self.n_features or 1, self.n_hidden)  # a positive number of hidden dimensions
        if self.sparsity != -1.0:
            toy.check_probabilities(self.sparsity, "sparsity")
        toy.ToyTrainConfig(lr=self.lr or 1.0, weight_decay=self.weight_decay)  # finite, >= 0
        if not 0 <= self.warmup <= 1:  # NaN fails too
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1], got {self.warmup!r}.")
        if self.test_examples <= 0:
            raise ConfigError(f"test_examples must be positive, got {self.test_examples!r}.")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _sizes(config: DoubleDescentConfig, default: tuple[int, ...]) -> np.ndarray:
    if not config.sizes:
        return np.asarray(default)
    try:
        sizes = np.asarray([int(s) for s in config.sizes.split(",")])
    except ValueError:
        raise ConfigError(f"sizes must be comma-separated integers, got {config.sizes!r}.") from None
    if (sizes <= 0).any() or len(sizes) < 3:
        raise ConfigError(f"sizes needs at least 3 positive training-set sizes, got {config.sizes!r}.")
    return np.sort(sizes)


def run_double_descent(config: DoubleDescentConfig) -> dict:
    """Trains every (T, seed) model as one program, measures test loss, draws, writes."""
    fast = is_fast(config)
    d = FAST if fast else DEFAULTS
    config = dataclasses.replace(
        config, n_features=config.n_features or d["n_features"], lr=config.lr or d["lr"],
        sparsity=d["sparsity"] if config.sparsity == -1.0 else config.sparsity,
        steps=config.steps or d["steps"], replicas=config.replicas or d["replicas"])
    T = _sizes(config, d["sizes"])
    reps, steps = config.replicas, config.steps
    cfg = toy.ToyConfig(config.n_features, config.n_hidden, "relu")
    p = np.full(T.size * reps, 1 - toy.check_probabilities(config.sparsity, "sparsity"))
    sizes = np.repeat(T, reps)
    importance = np.ones(cfg.n_features, np.float32)
    train = toy.ToyTrainConfig(steps=steps, lr=config.lr, weight_decay=config.weight_decay,
                               warmup_steps=int(config.warmup * steps), schedule="cosine",
                               seed=config.seed, log_every=min(500, steps), progress=config.progress)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config) | {"sizes": T.tolist()}, indent=1))

    t0 = time.perf_counter()
    key = jax.random.key(config.seed)
    data = toy.fixed_datasets(jax.random.fold_in(key, 1), p, sizes, cfg.n_features)
    run = toy.train_toys(cfg, p, importance, train, data=data)
    test = toy.evaluate_toys(cfg, run.model, p, importance, jax.random.fold_in(key, 2),
                             config.test_examples).reshape(T.size, reps)
    seconds = time.perf_counter() - t0
    train_loss = run.final_loss.reshape(T.size, reps)
    test_loss = test.mean(1)
    baseline = float(p[0] / 3)  # outputting 0: E[x_i^2] = p E[u^2] = p / 3 per feature
    peak = int(np.argmax(test_loss))

    plots.test_loss_curve(T, test_loss, out / "double_descent.png", train_loss=train_loss.mean(1),
                          replicas=test, baseline=baseline,
                          title=f"n={cfg.n_features}, m={cfg.n_hidden}, S={config.sparsity}: "
                                f"{reps} seeds per T")
    W = np.asarray(run.model.W)
    panels = []
    for j in (0, T.size - 1):  # the smallest and the largest training set, every seed
        for what in ("h", "W"):
            for r in range(reps):
                i = j * reps + r
                x = np.asarray(data.x[i, : T[j]])
                vectors = x[:200] @ W[i] if what == "h" else W[i]
                label = "training examples' h" if what == "h" else "features W_i"
                panels.append((vectors, f"T={T[j]}, seed {r}: {label}"))
    plots.vectors_2d(panels, out / "hidden_vs_features.png", max_cols=reps, points=True,
                     suptitle=f"memorising (T={T[0]}, rows 1-2) vs generalising (T={T[-1]}, rows 3-4)")
    norms = np.asarray(toy.feature_norms(W)).reshape(T.size, reps, -1)
    results = {
        "T": T.tolist(), "test_loss": _r(test_loss), "test_loss_replicas": _r(test),
        "train_loss": _r(train_loss.mean(1)), "baseline_loss": baseline, "peak_T": int(T[peak]),
        "interior_peak": bool(0 < peak < T.size - 1),
        "n_features_represented": _r((norms > 0.5).sum(-1).mean(1), 2),
        "steps": steps, "replicas": reps, "fast": fast,
        "seconds": {"total": seconds, "compile": run.compile_seconds, "train": run.train_seconds},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(_report(results, config))
    return {k: results[k] for k in ("peak_T", "interior_peak", "baseline_loss")} | {
        "seconds": round(seconds, 1)}


def _r(a, digits: int = 6) -> list:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def _report(results: dict, config: DoubleDescentConfig) -> str:
    rows = "\n".join(f"| {t} | {te:.5f} | {tr:.5f} | {nr:g} |" for t, te, tr, nr in zip(
        results["T"], results["test_loss"], results["train_loss"], results["n_features_represented"],
        strict=True))
    return f"""# Superposition, memorisation and double descent

n={config.n_features}, m={config.n_hidden}, S={config.sparsity}, {results['steps']} full-batch
AdamW steps, {results['replicas']} seeds per T; wall time {results['seconds']['total']:.0f} s.
Outputting 0 scores {results['baseline_loss']:.5f}. Test loss peaks at T={results['peak_T']}.

| T | test loss (mean) | train loss | features with norm > 0.5 |
|---|---|---|---|
{rows}

![double descent](double_descent.png)
![hidden vs features](hidden_vs_features.png)
"""
