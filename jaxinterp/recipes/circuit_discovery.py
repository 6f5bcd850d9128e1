"""Automated circuit discovery on the IOI model: EAP and EAP-IG against exact edge patching.

Trains the IOI recipe's model (or loads one with ``--checkpoint``), scores every edge of
its graph (embedding, each head's query/key/value inputs, each MLP, the logits) with EAP,
EAP-IG-inputs and EAP-IG-activations, and checks them two ways:

* per edge, against exact patching of that edge alone (Pearson and Spearman correlation);
* per circuit: the faithfulness (metric recovered, 1 = clean) of the top-n and greedy
  circuits of each method against the number of edges, every circuit evaluated by exact
  edge patching.

Writes ``runs/<name>/``: ``config.json``, ``results.json``, ``report.md``,
``faithfulness.png``, ``circuit.png`` and ``circuit.json`` (the smallest EAP-IG circuit
reaching the target faithfulness), ``scores_vs_exact.png``, and the model weights.

    jaxinterp experiment circuit-discovery          # 13 min measured on 2 shared cores (load 10-18)
    jaxinterp experiment circuit-discovery --fast   # under a minute
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from jaxinterp import circuits
from jaxinterp.data.ioi import ioi_batch
from jaxinterp.errors import ConfigError
from jaxinterp.interp import compare_attribution, logit_diff
from jaxinterp.io.weights import load_weights, save_weights
from jaxinterp.models import init_transformer
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.recipes._run_files import md_table, write_run
from jaxinterp.recipes.ioi import ioi_config, ioi_loss, train_ioi_model
from jaxinterp.viz import plot_circuit, plot_faithfulness
from jaxinterp.viz._figure import figure, save


@dataclasses.dataclass(frozen=True)
class CircuitDiscoveryConfig:
    """The circuit-discovery run; zeros mean the defaults (smaller with ``--fast``)."""

    name: str = flag("circuit-discovery", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of all runs")
    seed: int = flag(0, "seed of the model and the prompts")
    fast: bool = flag(False, "tiny sizes for CI (also JAXINTERP_FAST=1)")
    layers: int = flag(0, "layers of the IOI model (0: 3; fast 2)")
    steps: int = flag(0, "IOI training steps (0: 1000; fast 300)")
    prompts: int = flag(0, "clean/corrupted prompt pairs scored (0: 32; fast 12)")
    ig_steps: int = flag(5, "integration steps m of EAP-IG")
    target: float = flag(0.8, "faithfulness of the circuit drawn in circuit.png")
    checkpoint: str = flag("", "IOI model weights (.safetensors/.npz) with `layers` layers, instead of training")

    def __post_init__(self):
        check_config(self, positive=("ig_steps",), non_negative=("layers", "steps", "prompts"))
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise ConfigError(f"--checkpoint {self.checkpoint!r}: no such file")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _sizes(config: CircuitDiscoveryConfig) -> CircuitDiscoveryConfig:
    fast = is_fast(config)
    return dataclasses.replace(config, fast=fast, layers=config.layers or (2 if fast else 3),
                               steps=config.steps or (300 if fast else 1000),
                               prompts=config.prompts or (12 if fast else 32))


def _timed(fn, repeat: int = 3) -> tuple[object, float, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return out, first, statistics.median(runs)


def _sizes_grid(n_edges: int) -> list[int]:
    grid = sorted({int(round(x)) for x in np.geomspace(1, n_edges, 14)} | {n_edges})
    return [n for n in grid if n >= 1]


def _scatter(exact, estimates: dict, path: Path) -> None:
    fig = figure((4.2 * len(estimates), 4))
    axes = fig.subplots(1, len(estimates), squeeze=False)[0]
    valid = exact.attrs["graph"].valid
    x = np.asarray(exact)[valid]
    for ax, (name, est) in zip(axes, estimates.items(), strict=True):
        y = np.asarray(est)[valid]
        ax.scatter(x, y, s=8, alpha=0.6)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="#888888", lw=0.8)
        ax.set_xlabel("exact: metric(edge patched) - metric(clean)")
        ax.set_ylabel(f"{name} estimate")
        ax.set_title(f"{name}: r = {np.corrcoef(x, y)[0, 1]:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
    save(fig, path)


def run_circuit_discovery(config: CircuitDiscoveryConfig) -> dict:
    config = _sizes(config)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = ioi_config(n_layers=config.layers)
    if config.checkpoint:
        model = load_weights(config.checkpoint, init_transformer(cfg, jax.random.key(0)))
    else:
        model, _ = train_ioi_model(config.steps, seed=config.seed, cfg=cfg, runs_dir=str(out), name="train",
                                   progress=True)
        save_weights(out / "model.safetensors", model)
    data = ioi_batch(config.prompts, seed=config.seed + 100)
    metric = logit_diff(data.io, data.s)
    loss, acc = ioi_loss(model, data.clean, data.io)

    forward = jax.jit(lambda m, t: m(t))
    _, _, t_forward = _timed(lambda: forward(model, data.clean), repeat=7)
    scores, timing = {}, {}
    for method in circuits.METHODS:
        scores[method], first, steady = _timed(lambda method=method: circuits.edge_attribution(
            model, data.clean, data.corrupted, metric, method=method, steps=config.ig_steps))
        timing[method] = {"first_call_s": first, "steady_s": steady, "forward_equivalents": steady / t_forward}
    t = time.perf_counter()
    exact = circuits.exact_edge_scores(model, data.clean, data.corrupted, metric)
    t_exact = time.perf_counter() - t
    graph = exact.attrs["graph"]
    valid = graph.valid
    agreement = {m: compare_attribution(np.asarray(exact)[valid], np.asarray(s)[valid]) for m, s in scores.items()}
    _scatter(exact, scores, out / "scores_vs_exact.png")

    sizes = _sizes_grid(graph.n_edges)
    curves = {}
    for method in circuits.METHODS:
        for selection in ("top_n", "greedy"):
            curves[f"{method} {selection}"] = circuits.faithfulness_curve(
                model, data.clean, data.corrupted, metric, scores[method], sizes, selection=selection)
    curves["exact top_n"] = circuits.faithfulness_curve(model, data.clean, data.corrupted, metric, exact, sizes)
    plot_faithfulness(curves, out / "faithfulness.png",
                      title=f"IOI, {config.layers}-layer model: faithfulness against circuit size "
                            f"({graph.n_edges} edges in all)")

    best = curves["EAP-IG-inputs top_n"]
    reach = [n for n, f in zip(sizes, np.asarray(best), strict=True) if f >= config.target]
    n_circuit = reach[0] if reach else sizes[-1]
    circuit = circuits.top_n(scores["EAP-IG-inputs"], n_circuit).pruned()
    circuit.to_json(out / "circuit.json")
    f_circuit = float(circuits.faithfulness(model, data.clean, data.corrupted, metric, circuit))
    plot_circuit(circuit, out / "circuit.png", title=f"IOI circuit (EAP-IG-inputs, top {n_circuit} edges, pruned to "
                 f"{circuit.n_edges}): faithfulness {f_circuit:.2f}")

    results = {"accuracy": float(acc["accuracy"]), "loss": float(loss), "n_edges": graph.n_edges,
               "clean_metric": exact.attrs["clean"], "corrupted_metric": exact.attrs["corrupted"],
               "forward_ms": t_forward * 1e3, "timing": timing, "exact_seconds": t_exact,
               "agreement_with_exact": agreement, "sizes": sizes,
               "faithfulness": {k: np.asarray(v) for k, v in curves.items()},
               "circuit": {"edges": circuit.n_edges, "faithfulness": f_circuit, "target": config.target,
                           "top_n": n_circuit, "nodes": circuit.nodes()},
               "seconds": time.perf_counter() - start}
    rows = [[m, timing[m]["forward_equivalents"], timing[m]["steady_s"] * 1e3, timing[m]["first_call_s"],
             agreement[m]["pearson"], agreement[m]["spearman"]] for m in circuits.METHODS]
    report = [
        f"# {config.name}: EAP and EAP-IG on indirect object identification", "",
        f"{config.layers}-layer IOI model (held-out accuracy {float(acc['accuracy']):.0%}), {config.prompts} prompt "
        f"pairs, logit difference clean {exact.attrs['clean']:.2f} / corrupted {exact.attrs['corrupted']:.2f}; "
        f"graph of {graph.n_edges} edges (q/k/v inputs separate). EAP-IG with m = {config.ig_steps}. Whole run "
        f"{results['seconds']:.0f} s.", "",
        *md_table(["method", "cost (forward-pass equivalents)", "steady (ms)", "first call (s)",
                   "Pearson r vs exact", "Spearman vs exact"], rows), "",
        f"A forward pass takes {t_forward * 1e3:.2f} ms; exact patching of every edge alone took {t_exact:.1f} s.", "",
        "![scores vs exact](scores_vs_exact.png)", "",
        "## Faithfulness against circuit size (exact edge patching)", "",
        *md_table(["edges"] + list(curves), [[n] + [float(np.asarray(c)[i]) for c in curves.values()]
                                             for i, n in enumerate(sizes)]), "",
        "![faithfulness](faithfulness.png)", "",
        f"## The circuit: EAP-IG-inputs top {n_circuit}, pruned to {circuit.n_edges} edges, faithfulness "
        f"{f_circuit:.3f}", "", "![circuit](circuit.png)", "", "Edges (strongest first): "
        + ", ".join(f"{s} -> {d}" for s, d, _ in circuit.edges()[:20]) + ("..." if circuit.n_edges > 20 else ""),
    ]
    write_run(out, config, results, report)
    print("circuit discovery: Pearson r vs exact " + ", ".join(f"{m} {agreement[m]['pearson']:.3f}" for m in
          circuits.METHODS) + f"; circuit of {circuit.n_edges} edges, faithfulness {f_circuit:.2f}")
    return {"pearson_" + m: agreement[m]["pearson"] for m in circuits.METHODS} | {
        "forward_equivalents_" + m: timing[m]["forward_equivalents"] for m in circuits.METHODS} | {
        "circuit_edges": circuit.n_edges, "circuit_faithfulness": f_circuit, "seconds": round(results["seconds"], 1)}
