"""The SAE ground-truth benchmark as a run: every architecture against a known dictionary.

Activations come from a known sparse dictionary in superposition (``n_features``
directions in ``d`` dimensions, varied frequencies, correlated groups, varied
magnitudes; :class:`jaxinterp.sae.SyntheticDictionary`). All architectures train
together from that one stream, and each is scored by the mean max cosine similarity
(MMCS) between the true directions and its decoder rows. Writes ``runs/<name>/``:
``results.json`` (MMCS, L0 and FVE per architecture, wall time) and ``mmcs.png``.

    jaxinterp experiment sae-ground-truth
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from jaxinterp.recipes import flag, is_fast
from jaxinterp.sae import SAEConfig, SyntheticDictionary, TrainSAEConfig, mean_max_cosine, train_sae
from jaxinterp.train.runlog import write_json_atomic


@dataclasses.dataclass(frozen=True)
class SAEGroundTruthConfig:
    name: str = flag("sae-ground-truth", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed of the dictionary and the SAEs")
    fast: bool = flag(False, "fewer steps (also JAXINTERP_FAST=1)")
    d: int = flag(16, "activation width")
    n_features: int = flag(32, "true dictionary size (> d: superposition)")
    width: int = flag(48, "SAE dictionary size")
    steps: int = flag(1200, "training steps (batches of 256)")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def saes(c: SAEGroundTruthConfig) -> dict[str, SAEConfig]:
    d, w = c.d, c.width
    return {
        "standard": SAEConfig(d, w, "standard", l1_coefficient=1.0),
        "plain_l1": SAEConfig(d, w, "standard", l1_coefficient=0.3, l1_decoder_norm=False),
        "topk": SAEConfig(d, w, "topk", k=2),
        "batchtopk": SAEConfig(d, w, "batchtopk", k=1),
        "matryoshka": SAEConfig(d, w, "matryoshka_batchtopk", k=1,
                                          matryoshka_widths=(c.n_features,)),
        "jumprelu": SAEConfig(d, w, "jumprelu", l0_coefficient=0.1),
        "gated": SAEConfig(d, w, "gated", l1_coefficient=1.0, l1_decoder_norm=False),
    }


def run_sae_ground_truth(c: SAEGroundTruthConfig) -> dict:
    start = time.perf_counter()
    steps = 300 if is_fast(c) else c.steps
    truth = SyntheticDictionary(d=c.d, n_features=c.n_features, seed=c.seed)
    x = truth.sample(60_000)
    result = train_sae(saes(c), x, TrainSAEConfig(
        steps=steps, batch_size=256, lr=1e-2, lr_decay_steps=steps // 5,
        resample_steps=(steps // 4, steps // 2), dead_after_tokens=256 * 50, seed=c.seed,
        log_every=steps, progress=False, runs_dir=c.runs_dir, name=f"{c.name}/train"))
    last = result.metrics[-1]
    table = {n: {"mmcs": mean_max_cosine(truth.directions, s.W_dec), "l0": last[f"{n}/l0"],
                 "fve": last[f"{n}/fve"]} for n, s in result.saes.items()}
    summary = {"architectures": table, "true_l0": float((truth.codes(20_000) > 0).sum(1).mean()),
               "steps": steps, "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(c.run_dir / "results.json", summary)
    _plot(table, c.run_dir / "mmcs.png")
    return {f"mmcs {n}": round(v["mmcs"], 3) for n, v in table.items()} | {"seconds": summary["seconds"]}


def _plot(table: dict, path: Path) -> None:
    from jaxinterp.viz._figure import figure, save

    fig = figure((7, 3.2))
    ax = fig.subplots()
    names = list(table)
    ax.barh(np.arange(len(names)), [table[n]["mmcs"] for n in names], color="tab:blue")
    ax.set_yticks(np.arange(len(names)), labels=names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.axvline(0.9, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("mean max cosine similarity with the true dictionary")
    ax.set_title("SAE architectures on a known dictionary in superposition", fontsize=9)
    save(fig, path)
