"""Backward-pass cost of the plain transformer, as ratios to one forward pass in the same run.

For each shape (the IOI model of bench_circuits: 3 layers, d_model 64, batch 64 x 15; a
GPT-2-style 4 layers, d_model 256, 8 heads, d_vocab 2000, batch 16 x 32; and 12 layers,
d_model 768, 12 heads, d_vocab 2000, batch 4 x 128) it times, as jitted calls:

- ``forward``: ``model(tokens)``, the logits at every position (the unit);
- ``metric``: a logit difference at the last position from the embeddings (the forward
  half of the next line; ``logits_at`` unembeds the read position only);
- ``grad emb``: ``jax.value_and_grad`` of that metric with respect to the embeddings,
  weights closed over (EAP's and attribution patching's pass: no weight gradients);
- ``train``: ``jax.value_and_grad`` of the mean next-token cross-entropy with respect to
  every weight (a training step without the optimiser);
- ``EAP floor`` (the first two shapes): bench_circuits' ``pass_floor``, the passes edge
  attribution patching cannot avoid (a corrupted forward and ``grad emb``), on the batches
  bench_circuits uses (IOI prompts; random tokens with one token changed). Its gradient
  closes over the model, so there the weights are compile-time constants.

Each round times ``forward`` (median of 3 calls in a row) and then each of the others
once; the ratios are medians over rounds of (call / that round's forward), in wall time and
in CPU-seconds (``time.process_time``, robust to other processes on a shared machine).
First calls (compile included) are printed in seconds. Run pinned to one core for stable
numbers::

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 \\
        python experiments/benchmarks/bench_backward.py [--rounds 7] [--shapes ioi,gpt2s,gpt2-12]
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
from jaxinterp.interp.metrics import batch_mean
from jaxinterp.models.loss import lm_loss
from jaxinterp.models.partial import embed, logits_at, positions_and_mask
from jaxinterp.models.transformer import run_blocks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_circuits' pass_floor

SHAPES = {
    "ioi": (dict(d_model=64, n_layers=3, n_heads=4, d_vocab=47, n_ctx=15), (64, 15)),  # ioi_config(n_layers=3)
    "gpt2s": (dict(d_model=256, n_layers=4, n_heads=8, d_vocab=2000, n_ctx=64), (16, 32)),
    "gpt2-12": (dict(d_model=768, n_layers=12, n_heads=12, d_vocab=2000, n_ctx=128), (4, 128)),
}


def clocked(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, its outputs blocked on."""
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - t, time.process_time() - c


def programs(name, model, tokens):
    """The jitted calls, each a thunk."""
    B, P = tokens.shape
    metric = ji.logit_diff(tokens[:, -1], (tokens[:, -1] + 1) % model.cfg.d_vocab)
    positions, mask = positions_and_mask(tokens)

    def value(x0, m):  # the weights an argument of the jitted call, not compile-time constants
        return batch_mean(metric, logits_at(m, run_blocks(m, x0, positions, mask), None, P))

    forward = jax.jit(lambda m, t: m(t))
    value_only = jax.jit(lambda m, t: value(embed(m, t, positions), m))
    grad_emb = jax.jit(lambda m, t: jax.value_and_grad(value)(embed(m, t, positions), m))
    train = jax.jit(jax.value_and_grad(lambda m, t: lm_loss(m, t)))
    calls = {"forward": lambda: forward(model, tokens), "metric": lambda: value_only(model, tokens),
             "grad emb": lambda: grad_emb(model, tokens), "train": lambda: train(model, tokens)}
    if name in ("ioi", "gpt2s"):
        from bench_circuits import pass_floor

        if name == "ioi":
            from jaxinterp.data.ioi import ioi_batch

            data = ioi_batch(B, seed=1)
            clean, corrupted, eap_metric = data.clean, data.corrupted, ji.logit_diff(data.io, data.s)
        else:
            clean, corrupted, eap_metric = tokens, tokens.at[:, 10].set((tokens[:, 10] + 1) % model.cfg.d_vocab), metric
        calls["EAP floor"] = pass_floor(model, clean, corrupted, eap_metric, 0)
    return calls


def bench(name: str, rounds: int) -> None:
    kw, (B, P) = SHAPES[name]
    cfg = ji.gpt2_config(**kw)
    model = ji.init_transformer(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, P), 0, cfg.d_vocab)
    calls = programs(name, model, tokens)
    first = {k: clocked(f) for k, f in calls.items()}
    wall = {k: [] for k in calls if k != "forward"}
    cpu = {k: [] for k in calls if k != "forward"}
    fwd_times = []
    for _ in range(rounds):
        fw = sorted(clocked(calls["forward"]) for _ in range(3))[1]
        fwd_times.append(fw)
        for k in wall:
            w, c = clocked(calls[k])
            wall[k].append(w / fw[0])
            cpu[k].append(c / fw[1])
    fw_wall = statistics.median(t[0] for t in fwd_times)
    fw_cpu = statistics.median(t[1] for t in fwd_times)
    print(f"\n== {name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, d_vocab "
          f"{cfg.d_vocab}, batch {B} x {P}: forward {fw_wall * 1e3:.1f} ms wall, {fw_cpu * 1e3:.1f} ms CPU "
          f"(medians of {rounds} rounds) ==")
    for k in wall:
        print(f"{k:<9} {statistics.median(wall[k]):5.2f} forwards (wall)  {statistics.median(cpu[k]):5.2f} "
              f"forwards (CPU-s)")
    print("first calls (compile included), wall / CPU s: "
          + ", ".join(f"{k} {w:.2f} / {c:.2f}" for k, (w, c) in first.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name in args.shapes.split(","):
        bench(name, args.rounds)


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
