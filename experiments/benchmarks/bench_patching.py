"""Benchmark: batched activation patching against a loop of single jitted patches.

For each config it times, in one process:

* the residual-stream sweep (every layer x every position, denoising, logit-difference
  metric) with :func:`jaxinterp.interp.activation_patching`: first call (compile
  included, after ``jax.clear_caches()``) and a second call;
* the baseline: jaxinterp's own single-patch forward, ``jax.jit`` of
  ``run_with_hooks(model, tokens, interventions=[patch(...)])`` with ``layer`` and ``pos``
  traced (one compilation), called once per target in a Python loop. Its first call
  (compile) and the other calls are timed separately, so the loop's first-call cost is
  ``compile + all calls`` and its steady cost is the calls alone (scaled to every target);
* attribution patching of every head (``z`` by layer x head) against one jitted forward;
* the chunk program's peak temporary memory at several chunk sizes (``--memory``).

Run:  python experiments/benchmarks/bench_patching.py [--quick] [--memory]
"""

from __future__ import annotations

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.hooks import run_with_cache
from jaxinterp.interp import activation_patching, attribution_patching, logit_diff, patched_forward
from jaxinterp.models import gpt2_config, init_transformer

SMALL = dict(d_model=256, n_layers=4, n_heads=8, d_vocab=4096, n_ctx=64)
GPT2 = dict(d_model=768, n_layers=12, n_heads=12, d_vocab=50257, n_ctx=64)
CONFIGS = {  # GPT-2 style models (LayerNorm, GELU MLP of width 4 d_model), random weights
    "small-b1": dict(cfg=SMALL, batch=1, pos=32, repeats=3),
    "small": dict(cfg=SMALL, batch=4, pos=32, repeats=3),
    "small-b8": dict(cfg=SMALL, batch=8, pos=32, repeats=3),
    "gpt2": dict(cfg=GPT2, batch=4, pos=24, repeats=1),
}


def setup(name: str):
    spec = CONFIGS[name]
    cfg = gpt2_config(**spec["cfg"])
    model = init_transformer(cfg, jax.random.key(0))
    b, p, v = spec["batch"], spec["pos"], cfg.d_vocab
    clean = jax.random.randint(jax.random.key(1), (b, p), 0, v)
    corrupted = clean.at[:, p // 3].set((clean[:, p // 3] + 7) % v)
    metric = logit_diff(clean[:, -1], corrupted[:, -2])
    return model, clean, corrupted, metric


@eqx.filter_jit
def _single(model, tokens, clean_resid, metric, layer, pos):
    logits = patched_forward(model, tokens, clean_resid[layer], "resid_pre", layer, pos=pos)
    return metric(logits).mean()


@eqx.filter_jit
def _clean_resid(model, tokens):
    _, cache = run_with_cache(model, tokens, names="blocks.*.hook_resid_pre")
    return jnp.stack(list(cache.values()))


def loop(model, clean, corrupted, metric):
    """The baseline. Returns (values, first_call_seconds, calls_seconds, n_targets)."""
    t0 = time.perf_counter()
    resid = _clean_resid(model, clean)
    L, P = model.cfg.n_layers, clean.shape[1]
    out = np.zeros((L, P), np.float32)
    out[0, 0] = _single(model, corrupted, resid, metric, jnp.int32(0), jnp.int32(0))
    t1 = time.perf_counter()
    for layer in range(L):
        for pos in range(P):
            if layer or pos:
                out[layer, pos] = _single(model, corrupted, resid, metric, jnp.int32(layer), jnp.int32(pos))
    t2 = time.perf_counter()
    return out, t1 - t0, t2 - t1, L * P


def timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(jnp.asarray(out))
    return out, time.perf_counter() - t


def bench(name: str, chunk_size: int | None, repeats: int) -> dict:
    """Timings for one config. Steady-state numbers are the best of ``repeats`` runs (the
    machine is shared, so the minimum is the least disturbed measurement)."""
    model, clean, corrupted, metric = setup(name)
    jax.clear_caches()
    sweep = lambda: activation_patching(model, clean, corrupted, metric, "resid_pre", chunk_size=chunk_size)  # noqa: E731
    result, t_first = timed(lambda: sweep().values)
    t_sweep = min(timed(lambda: sweep().values)[1] for _ in range(repeats))
    jax.clear_caches()
    ref, t_compile_call, t_calls, n = loop(model, clean, corrupted, metric)
    loop_first = t_compile_call + t_calls
    loop_steady = t_calls * n / (n - 1)
    for _ in range(repeats - 1):  # later passes: every call is a steady one
        loop_steady = min(loop_steady, sum(loop(model, clean, corrupted, metric)[1:3]))
    err = float(np.abs(np.asarray(result) - ref).max())

    fwd = eqx.filter_jit(lambda m, t: m(t))
    attr = lambda: attribution_patching(model, clean, corrupted, metric, "z", by=("layer", "head")).values  # noqa: E731
    timed(lambda: fwd(model, corrupted))
    timed(attr)
    t_fwd, t_attr = np.inf, np.inf
    for _ in range(5 * repeats):  # interleaved, so load changes hit both alike
        t_fwd = min(t_fwd, timed(lambda: fwd(model, corrupted))[1])
        t_attr = min(t_attr, timed(attr)[1])
    return dict(name=name, targets=n, sweep_first=t_first, sweep=t_sweep, loop_first=loop_first,
                loop=loop_steady, max_abs_err=err, forward=t_fwd, attribution=t_attr)


def report(r: dict) -> None:
    print(f"\n== {r['name']}: {r['targets']} residual-stream targets, max |sweep - loop| = {r['max_abs_err']:.2e}")
    print(f"sweep  first call {r['sweep_first']:7.2f} s   steady {r['sweep']:7.2f} s")
    print(f"loop   first call {r['loop_first']:7.2f} s   steady {r['loop']:7.2f} s")
    print(f"RATIO steady     loop/sweep = {r['loop'] / r['sweep']:5.1f}x")
    print(f"RATIO first call loop/sweep = {r['loop_first'] / r['sweep_first']:5.1f}x")
    print(f"attribution (all heads) {r['attribution'] * 1e3:.1f} ms = "
          f"{r['attribution'] / r['forward']:.2f} forward passes ({r['forward'] * 1e3:.1f} ms each)")


def memory(name: str) -> None:
    """Peak temporary memory of the compiled chunk program (XLA's memory analysis) for two
    chunk sizes and two depths: it follows the chunk size, not the number of targets."""
    from jaxinterp.interp import _fast_forward as F

    spec = CONFIGS[name]
    original = F.run_chunk_jit
    n_pos = spec["pos"]
    for n_layers in (spec["cfg"]["n_layers"], 2 * spec["cfg"]["n_layers"]):
        model = init_transformer(gpt2_config(**{**spec["cfg"], "n_layers": n_layers}), jax.random.key(0))
        for chunk in (4, 16):
            seen = {}

            def spy(*args, seen=seen):
                if not seen:
                    seen["bytes"] = original.lower(*args).compile().compiled.memory_analysis().temp_size_in_bytes
                return original(*args)

            F.run_chunk_jit = spy
            try:
                b = CONFIGS[name]["batch"]
                clean = jax.random.randint(jax.random.key(1), (b, n_pos), 0, model.cfg.d_vocab)
                corrupted = (clean + 1) % model.cfg.d_vocab
                metric = logit_diff(clean[:, -1], corrupted[:, -1])
                activation_patching(model, clean, corrupted, metric, chunk_size=chunk)
            finally:
                F.run_chunk_jit = original
            targets = model.cfg.n_layers * n_pos
            print(f"{name}: {targets:4d} targets, chunk_size={chunk:3d}: chunk program temp memory "
                  f"{seen['bytes'] / 2**20:7.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="small-b1,small,small-b8,gpt2")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for name in args.configs.split(","):
        report(bench(name, args.chunk_size, CONFIGS[name]["repeats"]))
        if args.memory:
            memory(name)


if __name__ == "__main__":
    main()
