"""Where one EAP call's time goes: each stage as its own jitted function, with FLOP counts.

    PYTHONPATH=. python experiments/benchmarks/bench_eap_stages.py
    taskset -c 1 env XLA_FLAGS=--xla_cpu_multi_thread_eigen=false PYTHONPATH=. \
        python experiments/benchmarks/bench_eap_stages.py      # one core

Stages (their inputs computed beforehand): the corrupted probe forward, the clean probe
forward and backward with the zero deltas, the corrupted-minus-clean node outputs, and the
folded gradients' contraction into edge scores (``_fold.folded_scores``); then the whole EAP
call and the pass floor (``bench_circuits.pass_floor``), and the compiled programs'
temporary buffers (XLA's CPU pays about 0.45 ms of page faults per fresh MB each call). Times are CPU-seconds
(``time.process_time``, all threads) and wall, medians of rounds in which every stage and
the plain forward run back to back; ratios are to the plain forward of the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import jaxinterp as ji
from jaxinterp.circuits import _fold, _probe
from jaxinterp.circuits.eap import _attribute
from jaxinterp.circuits.graph import Graph
from jaxinterp.data.ioi import ioi_batch
from jaxinterp.interp.metrics import batch_mean
from jaxinterp.recipes.ioi import ioi_config

sys.path.insert(0, os.path.dirname(__file__))
from bench_circuits import gpt2_small_case, pass_floor  # noqa: E402


def forward_flops(cfg, B: int, P: int, unembed_rows: int) -> float:
    """Matrix-product FLOPs of one plain forward: q/k/v/o projections, scores and mixing, the
    MLP, and the unembedding of ``unembed_rows`` rows."""
    d, H, e, G = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_kv_heads
    per_token = 2 * d * e * (2 * H + 2 * G) + 2 * 2 * P * H * e
    if cfg.has_mlp:
        per_token += 2 * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return cfg.n_layers * B * P * per_token + 2 * unembed_rows * d * cfg.d_vocab


def contraction_flops(graph: Graph, model, B: int, P: int) -> tuple[float, float, float]:
    """(the full ``[U, B P d] x [B P d, V]`` product, the valid edges' share of it, forming
    every destination's ``ghat = (w W_v) (g_v / s)``: the heads', and the MLP's unless its
    gradient comes from the backward pass, ``_probe.mlp_reads_norm``)."""
    cfg = model.cfg
    full = 2 * graph.n_src * graph.n_dst * B * P * cfg.d_model
    per_layer = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.d_head
    if cfg.has_mlp and not _probe.mlp_reads_norm(model):
        per_layer += cfg.d_mlp * (2 if cfg.gated_mlp else 1)
    return full, full * graph.valid.mean(), 2 * B * P * cfg.d_model * per_layer * cfg.n_layers


def temp_mb(fn) -> float:
    """The compiled program's temporary buffers (MB): XLA's CPU touches them afresh each call,
    paying a page fault per 4 KiB."""
    return fn.lower().compile().memory_analysis().temp_size_in_bytes / 1e6


def stages(model, clean, corrupted, metric):
    graph = Graph.from_config(model.cfg)

    @jax.jit
    def fwd_corrupt(model, corrupted):  # what EAP keeps: the metric (its positions' logits only) and the outputs
        logits, acts = _probe.probe_forward(model, corrupted)[:2]
        return batch_mean(metric, logits), acts

    @jax.jit
    def fwd_bwd_clean(model, clean):
        return _probe.probe_grads(model, clean, metric)

    @jax.jit
    def expand(model, a, b):
        return (a - b).expand(model)

    @jax.jit
    def scores(model, grads, x_pre, x_mid, proj, diff):
        return _fold.folded_scores(model, graph, grads, x_pre, x_mid, proj, 1, diff)

    _, corrupt_acts = fwd_corrupt(model, corrupted)
    _, clean_acts, grads, x_pre, x_mid, proj = fwd_bwd_clean(model, clean)
    diff = expand(model, corrupt_acts, clean_acts)
    plain = jax.jit(lambda m, t: m(t))
    return {
        "plain forward": lambda: plain(model, clean),
        "corrupted probe forward": lambda: fwd_corrupt(model, corrupted),
        "clean probe forward+backward": lambda: fwd_bwd_clean(model, clean),
        "NodeActs.expand (diff)": lambda: expand(model, corrupt_acts, clean_acts),
        "folded_scores": lambda: scores(model, grads, x_pre, x_mid, proj, diff),
        "EAP (whole call)": lambda: _attribute(model, graph, clean, corrupted, metric, "EAP", 5, 8),
        "pass floor (EAP)": pass_floor(model, clean, corrupted, metric, 0),
    }


def measure(fns: dict, rounds: int, inner: int) -> dict:
    for fn in fns.values():
        jax.block_until_ready(fn())
    out = {name: ([], []) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            for _ in range(inner):
                jax.block_until_ready(fn())
            out[name][0].append((time.process_time() - c) / inner)
            out[name][1].append((time.perf_counter() - t) / inner)
    return {name: (statistics.median(c), statistics.median(w)) for name, (c, w) in out.items()}


def report(label, model, clean, corrupted, metric, rounds, inner):
    cfg, (B, P) = model.cfg, clean.shape
    graph = Graph.from_config(cfg)
    fns = stages(model, clean, corrupted, metric)
    times = measure(fns, rounds, inner)
    f_plain = forward_flops(cfg, B, P, B * P)
    f_probe = forward_flops(cfg, B, P, B)  # the probe unembeds only the positions the metric reads
    full, valid, ghat = contraction_flops(graph, model, B, P)
    flops = {"plain forward": f_plain, "corrupted probe forward": f_probe,
             "clean probe forward+backward": 3 * f_probe, "folded_scores": full + ghat}
    c0 = times["plain forward"][0]
    print(f"\n== {label}: batch {B}x{P}, U={graph.n_src} sources, V={graph.n_dst} destinations, "
          f"{graph.n_edges} edges ({100 * graph.valid.mean():.0f}% of U x V); forward {f_plain / 1e6:.0f} MFLOP "
          f"({f_probe / 1e6:.0f} unembedding only the last position); contraction {full / 1e6:.0f} MFLOP "
          f"(valid edges only {valid / 1e6:.0f}), forming ghat {ghat / 1e6:.0f} MFLOP ==")
    print(f"{'stage':<30} {'MFLOP':>8} {'CPU-ms':>8} {'wall-ms':>8} {'/forward':>9}")
    for name, (c, w) in times.items():
        f = flops.get(name)
        print(f"{name:<30} {'' if f is None else f'{f / 1e6:8.0f}':>8} {c * 1e3:8.2f} {w * 1e3:8.2f} {c / c0:9.2f}")
    parts = sum(times[k][0] for k in list(times)[1:5])
    mem = {name: temp_mb(jax.jit(lambda fn=fn: fn())) for name, fn in fns.items()
           if name in ("plain forward", "EAP (whole call)", "pass floor (EAP)")}
    print("temporary buffers per call: " + ", ".join(f"{k} {v:.1f} MB" for k, v in mem.items()))
    print(f"sum of the four stages {parts / c0:.2f} forwards; EAP / floor "
          f"{times['EAP (whole call)'][0] / times['pass floor (EAP)'][0]:.2f}x (CPU-seconds)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--only", choices=["ioi", "gpt2", "gpt2-small"], default=None)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, load average {os.getloadavg()[0]:.1f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")
    if args.only in (None, "ioi"):
        model = ji.init_transformer(ioi_config(n_layers=3), jax.random.key(0))  # cost does not depend on training
        data = ioi_batch(64, seed=1)
        report("IOI model (3 layers, d_model 64)", model, data.clean, data.corrupted, ji.logit_diff(data.io, data.s),
               args.rounds, args.inner)
    if args.only in (None, "gpt2"):
        big = ji.init_transformer(ji.gpt2_config(d_model=256, n_layers=4, n_heads=8, d_vocab=2000, n_ctx=64),
                                  jax.random.key(1))
        clean = jax.random.randint(jax.random.key(2), (16, 32), 0, 2000)
        corrupted = clean.at[:, 10].set((clean[:, 10] + 1) % 2000)
        metric = ji.logit_diff(clean[:, -1], (clean[:, -1] + 1) % 2000)
        report("GPT-2 style, 4 layers, d_model 256", big, clean, corrupted, metric, args.rounds, args.inner)
    if args.only == "gpt2-small":
        report(*gpt2_small_case(), args.rounds, args.inner)


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
