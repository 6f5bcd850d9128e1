"""Toy Models of Superposition (Elhage et al. 2022): the figures a reader checks, in one run.

Every group of models below trains as one program (see :mod:`jaxinterp.models.toy.train`)
and writes to ``runs/<name>/``:

* ``intro.png``: n=5 features in m=2 dimensions, importance 0.9^i, feature density from 1
  to 1/20; dense models keep the two most important features, sparse ones superpose more;
* ``basic_gram_{linear,relu}.png``, ``basic_norms_{linear,relu}.png``: n=20, m=5, importance
  0.7^i, sparsity 0 to 0.999; ``W W^T``, ``b`` and the feature norms coloured by
  superposition. The linear model keeps the top 5 features at every sparsity; the ReLU
  output model keeps exactly the top 5 when dense and more as features get sparse;
* ``pentagon.png``: 5 features of equal importance in 2 dimensions at density 0.03 form a
  regular pentagon (the lowest-loss of several seeds is kept, as local minima exist);
* ``dimensionality.png``: n=30, m=5, uniform importance; each feature's dimensionality
  against 1/(1-S), clustering at the sticky values 1, 3/4, 2/3, 1/2, 2/5, 3/8;
* ``phase_diagram.png``: n=2, m=1; what the second feature does as its relative importance
  and density vary (not represented / the dimension to itself / superposition), from the
  lowest-loss of 6 seeds per cell (dead-ReLU local minima are common in this model);
* ``results.json`` (every number plotted, and wall times), ``config.json``, ``report.md``;
* ``weights.npz``: every trained ``W`` (``intro``, ``basic_linear``, ``basic_relu``,
  ``pentagon``, ``dimensionality``, ``phase``; ``[model, feature, hidden]``), for analyses
  without retraining (``np.load(path)["pentagon"]``).

    jaxinterp experiment superposition            # a few minutes on 2 CPU cores
    jaxinterp experiment superposition --fast     # reduced sizes (CI)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from jaxinterp.errors import ConfigError
from jaxinterp.models import toy
from jaxinterp.recipes import flag, is_fast
from jaxinterp.viz import toy as plots

BASIC_SPARSITY = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999)


@dataclasses.dataclass(frozen=True)
class SuperpositionConfig:
    """The superposition run. Sizes of 0 mean the default (smaller with ``--fast``)."""

    name: str = flag("superposition", "run folder under runs_dir")
    runs_dir: str = flag("runs", "where run folders go")
    seed: int = flag(0, "seed of every model's initialisation and data")
    fast: bool = flag(False, "reduced sizes for CI (also JAXINTERP_FAST=1)")
    steps: int = flag(0, "AdamW steps per model (0: 10000, 2000 with --fast)")
    batch_size: int = flag(0, "fresh examples per step (0: 1024, 512 with --fast)")
    lr: float = flag(0.0, "AdamW learning rate (0: 1e-3, 3e-3 with --fast)")
    replicas: int = flag(0, "seeds per pentagon / phase-diagram cell, lowest loss kept (0: 8 and 6)")
    progress: bool = flag(True, "progress bars")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "replicas"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: the default), got {getattr(self, name)!r}.")
        if self.lr != 0:  # 0: the default; else a positive, finite learning rate (NaN too)
            toy.ToyTrainConfig(lr=self.lr)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _train(cfg, p, importance, config: SuperpositionConfig, steps: int, seed_offset: int):
    batch = config.batch_size or (512 if is_fast(config) else 1024)
    lr = config.lr or (3e-3 if is_fast(config) else 1e-3)
    train = toy.ToyTrainConfig(steps=steps, batch_size=batch, lr=lr,
                               seed=config.seed * 1000 + seed_offset, progress=config.progress,
                               log_every=min(500, steps))
    return toy.train_toys(cfg, np.asarray(p, np.float32), importance, train)


def _best(loss: np.ndarray, groups: int) -> np.ndarray:
    """Index of the lowest-loss replica in each of ``groups`` consecutive groups."""
    per = loss.reshape(groups, -1)
    return np.arange(groups) * per.shape[1] + per.argmin(1)


def run_superposition(config: SuperpositionConfig) -> dict:
    """Trains every group of toy models, draws the figures, writes ``runs/<name>/``."""
    fast = is_fast(config)
    steps = config.steps or (2000 if fast else 10_000)
    replicas = config.replicas or (4 if fast else 8)  # pentagon seeds
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    results: dict = {"steps": steps, "fast": fast, "seconds": {}}
    weights: dict[str, np.ndarray] = {}
    t_start = time.perf_counter()

    # 1. Intro: 5 features in 2 dimensions from dense to sparse.
    t = time.perf_counter()
    density = 20.0 ** -np.linspace(0, 1, 10)
    imp5 = toy.geometric_importance(5, 0.9)
    run = _train(toy.ToyConfig(5, 2), density, imp5, config, steps, 1)
    W = weights["intro"] = np.asarray(run.model.W)
    plots.vectors_2d([(W[i], f"1-S = {d:.3g}") for i, d in enumerate(density)], out / "intro.png",
                     color=imp5, suptitle="5 features in 2 dimensions (ReLU output model), dense -> sparse")
    results["intro"] = {"density": density.tolist(), "norms": _r(toy.feature_norms(W)),
                        "n_represented": np.asarray(toy.n_represented(W)).tolist()}
    results["seconds"]["intro"] = time.perf_counter() - t

    # 2. Basic results: n=20, m=5, importance 0.7^i, linear and ReLU output models.
    t = time.perf_counter()
    S = np.asarray(BASIC_SPARSITY)
    imp20 = toy.geometric_importance(20, 0.7)
    basic = {"sparsity": S.tolist()}
    for variant in ("linear", "relu"):
        run = _train(toy.ToyConfig(20, 5, variant), 1 - S, imp20, config, steps, 2)
        W, b = np.asarray(run.model.W), np.asarray(run.model.b_final)
        weights[f"basic_{variant}"] = W
        titles = [f"S = {s:g}" for s in S]
        plots.gram_and_bias(W, b, titles, out / f"basic_gram_{variant}.png",
                            suptitle=f"{variant} model, n=20, m=5, importance 0.7^i")
        sup = np.asarray(toy.superposition(W))
        plots.norm_bars(toy.feature_norms(W), sup, titles, out / f"basic_norms_{variant}.png",
                        suptitle=f"{variant} model: feature norms, coloured by superposition")
        prefix = "" if variant == "relu" else "linear_"
        basic[prefix + "norms"] = _r(toy.feature_norms(W))
        basic[prefix + "superposition"] = _r(sup)
        basic[prefix + "n_represented"] = np.asarray(toy.n_represented(W)).tolist()
        basic[prefix + "loss"] = _r(run.final_loss, 8)
    results["basic"] = basic
    results["seconds"]["basic"] = time.perf_counter() - t

    # 3. The 5-in-2 pentagon: uniform importance, sparse; keep the lowest-loss seed.
    t = time.perf_counter()
    p_pent = 0.03
    run = _train(toy.ToyConfig(5, 2), np.full(replicas, p_pent), np.ones(5), config, steps, 3)
    W = weights["pentagon"] = np.asarray(run.model.W)
    best = int(_best(run.final_loss, 1)[0])
    order, gaps = toy.neighbour_angles(W[best])
    panels = [(W[i], f"seed {i}{' (kept)' if i == best else ''}\nloss {run.final_loss[i]:.2e}")
              for i in range(replicas)]
    plots.vectors_2d(panels, out / "pentagon.png", points=True, max_cols=4,
                     suptitle=f"5 features of equal importance in 2 dimensions, 1-S = {p_pent}")
    results["pentagon"] = {
        "feature_probability": p_pent, "norms": _r(toy.feature_norms(W[best])),
        "neighbour_angles_deg": _r(gaps, 2), "angular_order": order.tolist(),
        "geometry": [g.name for g in toy.feature_geometry(W[best])],
        "replica_loss": _r(run.final_loss, 8), "kept": best,
        "replicas_forming_a_pentagon": int(sum(
            [g.name for g in toy.feature_geometry(W[i])] == ["pentagon"] for i in range(replicas))),
    }
    results["seconds"]["pentagon"] = time.perf_counter() - t

    # 4. Feature dimensionality against 1/(1-S), uniform importance.
    t = time.perf_counter()
    inv_density = np.geomspace(1, 20, 8 if fast else 24)
    run = _train(toy.ToyConfig(30, 5), 1 / inv_density, np.ones(30), config, steps, 4)
    W = weights["dimensionality"] = np.asarray(run.model.W)
    D, rep = np.asarray(toy.feature_dimensionality(W)), np.asarray(toy.feature_norms(W)) > 0.5
    dpf = np.asarray(toy.dimensions_per_feature(W))
    plots.dimensionality(inv_density, D, rep, dpf, out / "dimensionality.png",
                         title="n=30, m=5, uniform importance: feature dimensionality")
    near = {k: int(sum(int((np.abs(D[i][rep[i]] - v) < 0.02).sum()) for i in range(len(D))))
            for k, v in toy.STICKY_VALUES.items()}
    results["dimensionality"] = {
        "inv_density": _r(inv_density), "dims_per_feature": _r(dpf),
        "feature_dimensionality": [_r(D[i][rep[i]]) for i in range(len(D))],
        "features_near_sticky_value": near,
        "geometry": [sorted(g.name for g in toy.feature_geometry(W[i])) for i in range(len(W))],
    }
    results["seconds"]["dimensionality"] = time.perf_counter() - t

    # 5. Phase diagram: n=2, m=1, the second feature's importance and both densities vary.
    t = time.perf_counter()
    k, reps = (6, 2) if fast else (12, config.replicas or 6)
    rel_imp, dens = np.geomspace(0.1, 10, k), np.geomspace(1, 0.01, k)
    R, P = np.meshgrid(rel_imp, dens)
    importance = np.repeat(np.stack([np.ones(R.size), R.ravel()], 1), reps, 0)
    # Dead-ReLU local minima are common here: more seeds of half the length each.
    run = _train(toy.ToyConfig(2, 1), np.repeat(P.ravel(), reps), importance, config, steps // 2, 5)
    weights["phase"] = np.asarray(run.model.W)
    W = weights["phase"][_best(run.loss_history[-4:].mean(0), R.size), :, 0]
    phase = two_feature_phase(W).reshape(k, k)
    plots.phase_diagram(phase, rel_imp, dens, out / "phase_diagram.png",
                        title="2 features in 1 dimension (feature 1 has importance 1)")
    results["phase"] = {"relative_importance": _r(rel_imp), "density": _r(dens),
                        "phase": phase.tolist(), "labels": list(plots.PHASES)}
    results["seconds"]["phase"] = time.perf_counter() - t

    results["seconds"]["total"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    np.savez(out / "weights.npz", **weights)
    (out / "report.md").write_text(_report(results))
    return _summary(results)


def two_feature_phase(W: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """What the second of two features does in a 1-D model, from ``W [..., 2]``: 2 when
    both are kept with opposite signs (antipodal superposition), 1 when it has the
    dimension to itself, 0 when it is not represented (:data:`plots.PHASES`)."""
    kept = np.abs(W) > threshold
    antipodal = kept[..., 0] & kept[..., 1] & (W[..., 0] * W[..., 1] < 0)
    second = np.abs(W[..., 1]) > np.maximum(threshold, np.abs(W[..., 0]))
    return np.where(antipodal, 2, np.where(second, 1, 0))


def _r(a, digits: int = 4) -> list:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def _summary(results: dict) -> dict:
    b, p = results["basic"], results["pentagon"]
    out = {f"relu_represented_S={s:g}": n for s, n in zip(b["sparsity"], b["n_represented"], strict=True)}
    gaps, norms = p["neighbour_angles_deg"], p["norms"]
    return out | {"pentagon_angles_deg": f"{min(gaps):.1f}..{max(gaps):.1f}",
                  "pentagon_norms": f"{min(norms):.2f}..{max(norms):.2f}",
                  "seconds": round(results["seconds"]["total"], 1)}


def _report(results: dict) -> str:
    b, p, d = results["basic"], results["pentagon"], results["dimensionality"]
    rows = "\n".join(f"| {s:g} | {nl} | {nr} |" for s, nl, nr in
                     zip(b["sparsity"], b["linear_n_represented"], b["n_represented"], strict=True))
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
    return f"""# Toy models of superposition

{results['steps']} AdamW steps per model{' (fast mode)' if results['fast'] else ''}. Wall time: {secs}.

## Basic results (n=20, m=5, importance 0.7^i): features with norm > 0.5

| sparsity | linear | ReLU output |
|---|---|---|
{rows}

![norms](basic_norms_relu.png)
![gram](basic_gram_relu.png)

## Pentagon (5 features in 2 dimensions, 1-S = {p['feature_probability']})

Norms {p['norms']}; angles between angular neighbours {p['neighbour_angles_deg']} degrees;
geometry found: {', '.join(p['geometry'])}; {p['replicas_forming_a_pentagon']} of
{len(p['replica_loss'])} seeds formed a pentagon (the lowest-loss seed is kept).

![pentagon](pentagon.png)

## Feature dimensionality (n=30, m=5)

Represented features within 0.02 of each sticky value: {d['features_near_sticky_value']}.

![dimensionality](dimensionality.png)
![intro](intro.png)
![phase](phase_diagram.png)
"""
