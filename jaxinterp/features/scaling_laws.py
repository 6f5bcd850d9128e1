"""Scaling laws of dictionary learning: power laws in compute, with bootstrap intervals.

An SAE of ``N = d_sae`` latents trained for ``S`` steps of ``B`` activations of width
``d_in`` costs about ``C = 6 B d_in N S`` FLOPs (forward and backward of the encoder and
decoder matmuls). Scaling Monosemanticity (Templeton et al. 2024) reports that the loss
at the compute-optimal allocation falls as a power law in ``C``, and that the optimal
number of features and of steps both grow as power laws, features faster. Here, for a
sweep of ``(C, N)`` runs with a held-out loss ``L`` each:

    at each budget C:  fit  log L = a (log N)^2 + b log N + c  over its widths; the minimum
                       gives N*(C) (clipped to the widths tried) and L*(C); S* = C / (6 B d_in N*)
    across budgets:    log L* = log L0 - alpha log C,   log N* = log N0 + beta log C,
                       log S* = log S0 + gamma log C     (least squares on logs)

Since ``S* = C / (6 B d_in N*)``, ``gamma = 1 - beta`` exactly. The loss is the fraction
of variance unexplained on held-out activations, a ratio of sums over tokens, so the
bootstrap resamples the evaluation tokens (with replacement, the same resample for every
run), recomputes every run's loss and redoes the whole fit; the intervals are percentiles
of the resampled exponents. They reflect the evaluation sample only: each point is one
training run (one seed), so run-to-run noise is not in them; the spread of the exponents
when each budget in turn is left out (``budget_jackknife``) shows how much the fit rests
on any one budget. Budgets whose optimum sits at the edge of the widths tried are left
out of the fit when at least two have an interior one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxinterp.errors import ConfigError


def power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``log y = log y0 + p log x``; returns ``(p, y0)``."""
    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise ConfigError(f"A power law needs at least two distinct x values, got {np.asarray(x)}.")
    p, c = np.polyfit(lx, ly, 1)
    return float(p), float(np.exp(c))


def optimum(widths: np.ndarray, losses: np.ndarray) -> tuple[float, float, bool]:
    """``(N*, L*, interior)`` of one budget: the minimum of a parabola in log N through its
    runs (three or more), clipped to the widths tried; the best run when the parabola is
    not convex. ``interior`` says whether the minimum lies strictly inside the widths."""
    lw, ll = np.log(widths), np.log(losses)
    best = int(np.argmin(ll))
    if len(lw) >= 3:
        a, b, c = np.polyfit(lw, ll, 2)
        if a > 0:
            x = float(np.clip(-b / (2 * a), lw.min(), lw.max()))
            interior = lw.min() < x < lw.max()
            return float(np.exp(x)), float(np.exp(a * x * x + b * x + c)), interior
    return float(widths[best]), float(losses[best]), 0 < best < len(lw) - 1


def frontier(compute: np.ndarray, widths: np.ndarray, losses: np.ndarray) -> dict[str, np.ndarray]:
    """Per budget (sorted): ``compute``, ``n_opt``, ``loss_opt`` and ``interior``."""
    out: dict[str, list] = {"compute": [], "n_opt": [], "loss_opt": [], "interior": []}
    for c in np.unique(compute):
        at = compute == c
        if at.sum() < 2:
            continue
        n, loss, inside = optimum(widths[at], losses[at])
        for k, v in zip(out, (c, n, loss, inside), strict=True):
            out[k].append(v)
    if len(out["compute"]) < 2:
        raise ConfigError("Scaling fits need at least two budgets with two or more widths each.")
    return {k: np.asarray(v) for k, v in out.items()}


def fit(compute: np.ndarray, widths: np.ndarray, losses: np.ndarray, tokens_per_step: float,
        drop: float | None = None) -> dict[str, float]:
    """The three exponents (``alpha`` for L*, ``beta`` for N*, ``gamma`` for S*) and prefactors.

    Budgets whose optimum lies at the edge of the widths tried say only that N* is beyond
    it, so when two or more budgets have an interior optimum only those are fitted.
    ``drop``: leave this budget out (the jackknife over budgets)."""
    f = frontier(compute, widths, losses)
    keep = f["interior"].astype(bool) if f["interior"].sum() >= 2 else np.ones(len(f["compute"]), bool)
    if drop is not None:
        keep &= f["compute"] != drop
    if keep.sum() < 2:
        raise ConfigError("Scaling fits need at least two budgets to fit after leaving some out.")
    f = {k: v[keep] for k, v in f.items()}
    neg_alpha, l0 = power_law(f["compute"], f["loss_opt"])
    beta, n0 = power_law(f["compute"], f["n_opt"])
    gamma, s0 = power_law(f["compute"], f["compute"] / (6 * tokens_per_step * f["n_opt"]))
    return {"alpha": -neg_alpha, "L0": l0, "beta": beta, "N0": n0, "gamma": gamma, "S0": s0,
            "n_budgets": int(keep.sum())}


def fit_with_bootstrap(runs: Sequence[dict[str, Any]], errors: np.ndarray, variances: np.ndarray, *,
                       tokens_per_step: float, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> dict[str, Any]:
    """Fits and bootstrap intervals from per-token evaluation numbers.

    Args:
        runs: one dict per run with ``d_sae`` and its budget: ``budget`` (FLOPs; runs of one
            budget share it, while their ``compute`` differs by the rounding of the step
            count) or else ``compute``.
        errors: ``[runs, tokens]`` squared reconstruction error of every evaluation token.
        variances: ``[tokens]`` each token's squared distance to the evaluation mean.
        tokens_per_step: ``B * d_in`` (FLOPs per step are ``6 * tokens_per_step * N``).
    """
    compute = np.asarray([r.get("budget", r.get("compute")) for r in runs], np.float64)
    widths = np.asarray([r["d_sae"] for r in runs], np.float64)
    losses = errors.sum(1) / variances.sum()
    point = fit(compute, widths, losses, tokens_per_step)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in ("alpha", "beta", "gamma")}
    n = errors.shape[1]
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        boot = errors[:, pick].sum(1) / variances[pick].sum()
        try:
            f = fit(compute, widths, boot, tokens_per_step)
        except (ConfigError, np.linalg.LinAlgError):
            continue
        for k in samples:
            samples[k].append(f[k])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    intervals = {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in samples.items()}
    front = frontier(compute, widths, losses)
    jackknife: dict[str, list[float]] = {k: [] for k in samples}
    for budget in front["compute"]:
        try:
            f = fit(compute, widths, losses, tokens_per_step, drop=budget)
        except ConfigError:
            continue
        for k in jackknife:
            jackknife[k].append(f[k])
    spread = {k: [float(min(v)), float(max(v))] for k, v in jackknife.items() if len(v) >= 2}
    return {"fit": point, "interval": intervals, "level": level, "n_boot": len(samples["alpha"]),
            "budget_jackknife": spread, "losses": losses.tolist(),
            "frontier": {k: v.tolist() for k, v in front.items()}}
