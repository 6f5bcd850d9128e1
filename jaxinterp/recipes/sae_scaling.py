"""Scaling laws of dictionary learning, small: SAE width and steps swept at fixed budgets.

Scaling Monosemanticity (Templeton et al. 2024) trained SAEs of many sizes for many steps
and found the loss at the compute-optimal allocation falling as a power law in compute,
with the optimal number of features and of training steps both power laws in compute.
This recipe measures the same on the main job's site (``blocks.0.mlp.hook_post`` of the
one-layer LM; its LM is reused from ``runs/demo`` when that exists):

1. activations of the site for training and for held-out evaluation (cached as ``.npy``);
2. for every budget ``C`` (FLOPs) and width ``N`` (multiples of ``d_in``), a TopK SAE
   trained for ``S = C / (6 B d_in N)`` steps (pairs whose ``S`` falls outside
   ``[min_steps, max_steps]`` are skipped), each with its learning-rate warm-up and
   decay, through :func:`jaxinterp.sae.train_sae` (``--mesh`` shards the runs);
   finished runs are kept and reused;
3. the held-out fraction of variance unexplained of every run, and the fits of
   :mod:`jaxinterp.features.scaling_laws` with bootstrap intervals;
4. ``results.json`` (runs, exponents, intervals), ``scaling.png`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from jaxinterp.errors import ConfigError
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.train.runlog import write_json_atomic

SITE = "blocks.0.mlp.hook_post"


@dataclasses.dataclass(frozen=True)
class SAEScalingConfig:
    """The sweep. Every field is a flag."""

    name: str = flag("sae_scaling", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed of the SAEs, the data order and the bootstrap")
    fast: bool = flag(False, "tiny sizes for CI (also JAXINTERP_FAST=1)")
    lm_run: str = flag("demo", "main-job run whose LM provides the site (trained there if missing)")
    widths: str = flag("0.25,0.5,1,2,4", "SAE widths as multiples of d_in (fractions allowed: d_sae = round(w * d_in))")
    budgets: str = flag("1e10,2e10,4e10,8e10", "compute budgets in FLOPs (6 * batch * d_in * d_sae * steps)")
    batch_size: int = flag(256, "activations per SAE step")
    k: int = flag(16, "active latents per token (TopK)")
    lr: float = flag(1e-3, "Adam learning rate")
    min_steps: int = flag(50, "skip (budget, width) pairs with fewer steps")
    max_steps: int = flag(1600, "skip (budget, width) pairs with more steps")
    train_tokens: int = flag(131072, "activations the SAEs train on (cycled)")
    eval_tokens: int = flag(8192, "held-out activations for the loss")
    n_boot: int = flag(1000, "bootstrap resamples of the evaluation tokens")
    mesh: str = flag("", "device mesh for the SAE runs, e.g. data=4,model=2")

    def __post_init__(self) -> None:
        check_config(self, positive=("batch_size", "k", "min_steps", "max_steps", "train_tokens", "eval_tokens",
                                     "n_boot"))
        try:
            widths = [float(w) for w in self.widths.split(",")]
            budgets = [float(b) for b in self.budgets.split(",")]
        except ValueError:
            raise ConfigError(f"--widths and --budgets must be numbers, comma-separated; got "
                              f"{self.widths!r} and {self.budgets!r}") from None
        if len(set(widths)) < 3 or len(set(budgets)) < 2 or min(widths) <= 0 or min(budgets) <= 0:
            raise ConfigError("The sweep needs at least 3 positive widths and 2 positive budgets.")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def sized(self) -> SAEScalingConfig:
        """Fast mode reuses ``lm_run``'s LM only when that run is a fast main job (as notebook
        05 or ``jaxinterp demo --fast`` leaves ``runs/demo``): a full-size site is too wide for
        fast mode's budgets. Otherwise it trains a tiny LM of its own in ``sae_scaling_lm``."""
        if not is_fast(self):
            return self
        lm_run = self.lm_run if _is_fast_main_job(Path(self.runs_dir) / self.lm_run) else "sae_scaling_lm"
        return dataclasses.replace(self, lm_run=lm_run, widths="1,2,4", budgets="1.2e9,2.4e9",
                                   batch_size=256, k=8, min_steps=30, max_steps=800, train_tokens=16384,
                                   eval_tokens=2048, n_boot=200)


def _is_fast_main_job(run: Path) -> bool:
    """Whether ``run`` holds a main job saved with fast mode's sizes."""
    from jaxinterp.recipes.monosemanticity import MonosemanticityConfig

    saved = run / "config.json"
    if not saved.is_file():
        return False
    fast = MonosemanticityConfig(fast=True).sized()
    cfg = json.loads(saved.read_text())
    return all(cfg.get(f) == getattr(fast, f) for f in ("d_model", "d_mlp", "n_heads", "seq_len", "lm_steps",
                                                        "vocab_size"))


def _activations(c: SAEScalingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out activations of the site, cached in the run folder."""
    from jaxinterp.data import TokenWindows
    from jaxinterp.recipes import lm as lm_recipe
    from jaxinterp.recipes.monosemanticity import _lm_config
    from jaxinterp.sae.store import site_activations

    cache = c.run_dir / "activations"
    train_path, eval_path = cache / "train.npy", cache / "eval.npy"
    if train_path.is_file() and eval_path.is_file():
        train, held = np.load(train_path), np.load(eval_path)
        if len(train) >= c.train_tokens and len(held) >= c.eval_tokens:
            return train[:c.train_tokens], held[:c.eval_tokens]
    lm_cfg = _lm_config(_main_job_config(c))
    lm_recipe.train_lm(lm_cfg)                          # reuses a finished LM; trains a missing one
    model = lm_recipe.load_model(lm_cfg.run_dir / "model")
    _, _, train_tokens, val_tokens = lm_recipe.corpus_splits(lm_cfg)
    seq = lm_cfg.seq_len
    train_w = TokenWindows(train_tokens, seq, -(-c.train_tokens // seq), seed=c.seed + 7).batch(0)
    eval_w = TokenWindows(val_tokens, seq, -(-c.eval_tokens // seq), shuffle=False).batch(0)
    train = site_activations(model, train_w, SITE)[SITE][:c.train_tokens]
    held = site_activations(model, eval_w, SITE)[SITE][:c.eval_tokens]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(train_path, train)
    np.save(eval_path, held)
    return train, held


def _main_job_config(c: SAEScalingConfig):
    """The main job's settings: read from ``RUNS_DIR/LM_RUN/config.json`` when that run exists
    (so its LM, whatever its flags, is reused), else the defaults (fast sizes in fast mode)."""
    from jaxinterp.recipes.monosemanticity import MonosemanticityConfig

    saved = Path(c.runs_dir) / c.lm_run / "config.json"
    fields = {"name": c.lm_run, "runs_dir": c.runs_dir, "fast": c.fast, "progress": False}
    if saved.is_file():
        known = {f.name for f in dataclasses.fields(MonosemanticityConfig)}
        fields = {k: v for k, v in json.loads(saved.read_text()).items() if k in known} | fields
    return MonosemanticityConfig(**fields).sized()


def _grid(c: SAEScalingConfig, d_in: int) -> list[dict]:
    runs = []
    for budget in sorted({float(b) for b in c.budgets.split(",")}):
        for w in sorted({float(w) for w in c.widths.split(",")}):
            n = max(int(round(w * d_in)), c.k)
            steps = int(round(budget / (6 * c.batch_size * d_in * n)))
            if c.min_steps <= steps <= c.max_steps:
                runs.append({"budget": budget, "d_sae": n, "steps": steps,
                             "compute": 6.0 * c.batch_size * d_in * n * steps})
    return runs


def _train_one(c: SAEScalingConfig, run: dict, train: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Per-token squared error of one run's SAE on the held-out activations (cached)."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.sae import SAEConfig, TrainSAEConfig, train_sae

    path = c.run_dir / "sweep" / f"N{run['d_sae']}_S{run['steps']}.npz"
    key = json.dumps({"lm_run": c.lm_run, "k": c.k, "batch_size": c.batch_size, "lr": c.lr, "seed": c.seed,
                      "train_tokens": c.train_tokens, "eval_tokens": c.eval_tokens}, sort_keys=True)
    if path.is_file():
        with np.load(path) as f:
            if "key" in f.files and str(f["key"]) == key and f["errors"].shape == (len(held),):
                run["seconds"] = float(f["seconds"])
                return f["errors"]
    d_in = train.shape[1]
    cfg = SAEConfig(d_in=d_in, d_sae=run["d_sae"], architecture="topk", k=min(c.k, run["d_sae"]), hook_name=SITE)
    steps = run["steps"]
    result = train_sae(cfg, train, TrainSAEConfig(
        steps=steps, batch_size=c.batch_size, lr=c.lr, lr_warmup_steps=max(steps // 20, 1),
        lr_decay_steps=steps // 5, dead_after_tokens=c.batch_size * 50, mesh=c.mesh, seed=c.seed,
        name=f"{c.name}/runs/N{run['d_sae']}_S{steps}", runs_dir=c.runs_dir, log_every=max(steps // 10, 1),
        progress=False))
    sae = jax.device_get(result.sae)
    recon = jax.jit(lambda s, x: ((s(x) - x) ** 2).sum(-1))
    errors = np.concatenate([np.asarray(recon(sae, jnp.asarray(held[i:i + 4096]))) for i in range(0, len(held), 4096)])
    run["seconds"] = round(result.seconds, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, errors=errors, seconds=result.seconds, key=key)   # reused only by the same settings
    return errors


def _plot(runs: list[dict], out: dict, tokens_per_step: float, path: Path) -> Path:
    from jaxinterp.viz._figure import figure, save

    fit, ci = out["fit"], out["interval"]
    front = {k: np.asarray(v) for k, v in out["frontier"].items()}
    fig = figure((11, 3.8))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for n in sorted({r["d_sae"] for r in runs}):
        pts = sorted((r["compute"], r["loss"]) for r in runs if r["d_sae"] == n)
        ax1.plot(*zip(*pts, strict=True), "o-", ms=3, lw=1, alpha=0.8, label=f"d_sae {n}")
    cs = np.geomspace(front["compute"].min(), front["compute"].max(), 50)
    ax1.plot(front["compute"], front["loss_opt"], "ks", ms=5, label="compute-optimal")
    ax1.plot(cs, fit["L0"] * cs ** -fit["alpha"], "k--", lw=1,
             label=f"L* ~ C^-{fit['alpha']:.3f} [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}]")
    ax1.set_ylabel("held-out FVU (fraction of variance unexplained)")
    ax1.set_title("loss against compute", fontsize=9)
    ax2.plot(front["compute"], front["n_opt"], "ks", ms=5)
    ax2.plot(cs, fit["N0"] * cs ** fit["beta"], "k--", lw=1,
             label=f"N* ~ C^{fit['beta']:.3f} [{ci['beta'][0]:.3f}, {ci['beta'][1]:.3f}]")
    ax2.set_ylabel("compute-optimal d_sae")
    ax2.set_title("optimal number of features", fontsize=9)
    s_opt = front["compute"] / (6 * tokens_per_step * front["n_opt"])
    ax3.plot(front["compute"], s_opt, "ks", ms=5)
    ax3.plot(cs, fit["S0"] * cs ** fit["gamma"], "k--", lw=1,
             label=f"S* ~ C^{fit['gamma']:.3f} [{ci['gamma'][0]:.3f}, {ci['gamma'][1]:.3f}]")
    ax3.set_ylabel("compute-optimal steps")
    ax3.set_title("optimal training steps", fontsize=9)
    edge = ~front["interior"].astype(bool)
    if edge.any() and fit["n_budgets"] < len(edge):
        for ax, y in ((ax1, front["loss_opt"]), (ax2, front["n_opt"]), (ax3, s_opt)):
            ax.plot(front["compute"][edge], y[edge], "s", mfc="white", mec="k", ms=7,
                    label="optimum at the sweep's edge (not fitted)")
    from matplotlib.ticker import NullFormatter

    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compute C (FLOPs)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    fig.suptitle(f"SAE scaling on {SITE} ({int(out['level'] * 100)}% bootstrap intervals over evaluation tokens)",
                 fontsize=10)
    return save(fig, path)


def run_sae_scaling(config: SAEScalingConfig) -> dict:
    """Runs (or resumes) the sweep, fits the power laws, writes results and plots."""
    from jaxinterp.features.scaling_laws import fit_with_bootstrap

    c = config.sized()
    start = time.perf_counter()
    out_dir = c.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", dataclasses.asdict(c))
    train, held = _activations(c)
    d_in = train.shape[1]
    runs = _grid(c, d_in)
    per_budget = {b: [r["d_sae"] for r in runs if r["budget"] == b] for b in {r["budget"] for r in runs}}
    if sum(len(w) >= 2 for w in per_budget.values()) < 2:
        raise ConfigError(
            f"Fewer than two budgets have two or more widths with steps in [{c.min_steps}, {c.max_steps}] "
            f"(widths per budget: { {f'{b:.3g}': w for b, w in sorted(per_budget.items())} }); "
            "change --budgets, --widths or the step limits.")
    from tqdm.auto import tqdm

    errors = np.stack([_train_one(c, r, train, held) for r in tqdm(runs, desc="sae sweep", disable=is_fast(c))])
    variances = ((held - held.mean(0)) ** 2).sum(-1)
    for r, e in zip(runs, errors, strict=True):
        r["loss"] = float(e.sum() / variances.sum())
    tokens_per_step = float(c.batch_size * d_in)
    fits = fit_with_bootstrap(runs, errors, variances, tokens_per_step=tokens_per_step, n_boot=c.n_boot, seed=c.seed)
    _plot(runs, fits, tokens_per_step, out_dir / "scaling.png")
    summary = {"site": SITE, "d_in": d_in, "runs": runs, **fits, "seconds": round(time.perf_counter() - start, 1),
               "train_seconds": round(sum(r["seconds"] for r in runs), 1)}   # cached runs: their first training
    write_json_atomic(out_dir / "results.json", summary)
    _report(c, summary, out_dir / "report.md")
    f, ci = fits["fit"], fits["interval"]
    return {"alpha": f["alpha"], "alpha_ci": ci["alpha"], "beta": f["beta"], "beta_ci": ci["beta"],
            "gamma": f["gamma"], "gamma_ci": ci["gamma"], "budgets_fitted": f["n_budgets"],
            "budget_jackknife": fits["budget_jackknife"], "runs": len(runs), "seconds": summary["seconds"]}


def _report(c: SAEScalingConfig, s: dict, path: Path) -> None:
    f, ci = s["fit"], s["interval"]
    front = s["frontier"]
    lines = [f"# SAE scaling laws on `{s['site']}`", "",
             f"TopK SAEs (k={c.k}) on {c.train_tokens:,} training activations of width {s['d_in']}, "
             f"batch {c.batch_size}; loss = held-out fraction of variance unexplained on {c.eval_tokens:,} "
             "activations. Compute C = 6 x batch x d_in x d_sae x steps.", "",
             "| exponent | fit | 95% bootstrap interval |", "|---|---|---|",
             f"| alpha (L* ~ C^-alpha) | {f['alpha']:.3f} | [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}] |",
             f"| beta (N* ~ C^beta) | {f['beta']:.3f} | [{ci['beta'][0]:.3f}, {ci['beta'][1]:.3f}] |",
             f"| gamma (S* ~ C^gamma) | {f['gamma']:.3f} | [{ci['gamma'][0]:.3f}, {ci['gamma'][1]:.3f}] |", "",
             "The intervals resample evaluation tokens only (one training run per point). "
             f"Optimum inside the widths tried at {sum(front['interior'])} of {len(front['interior'])} budgets; "
             f"{f['n_budgets']} budgets fitted (an optimum at the edge of the sweep only bounds N*, so such "
             "budgets are left out when two or more are interior).", "",
             "Leaving each fitted budget out in turn, the exponents range over: "
             + ", ".join(f"{k} [{v[0]:.3f}, {v[1]:.3f}]" for k, v in s["budget_jackknife"].items())
             + " (the fit's sensitivity to any one budget).", "",
             "| budget | optimal d_sae N* | optimal steps S* | L* | interior |", "|---|---|---|---|---|"]
    lines += [f"| {c_:.2g} | {n:.0f} | {c_ / (6 * c.batch_size * s['d_in'] * n):.0f} | {lo:.4f} | {bool(i)} |"
              for c_, n, lo, i in zip(front["compute"], front["n_opt"], front["loss_opt"], front["interior"],
                                      strict=True)]
    lines += ["",
             "![scaling](scaling.png)", "", "| budget | d_sae | steps | FVU | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['budget']:.2g} | {r['d_sae']} | {r['steps']} | {r['loss']:.4f} | {r.get('seconds', 0):.1f} |"
              for r in s["runs"]]
    lines += ["", f"Wall time {s['seconds']} s (SAE training, summed over runs, some maybe from an earlier "
              f"invocation: {s['train_seconds']} s)."]
    path.write_text("\n".join(lines) + "\n")
