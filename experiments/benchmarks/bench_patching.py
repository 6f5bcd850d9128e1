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

The clean and corrupted prompts differ at one position (``pos // 3``), as in most
patching experiments (IOI's S2, a swapped subject): a patch at an earlier position
changes nothing, and the sweep does not run it. The ``-dense`` configs corrupt every
position instead, so every target runs: the ratio of the compute path alone.

Timings are wall and process CPU time (the machine is shared: CPU time is less disturbed
by other jobs); steady-state numbers are the minimum over repeats. ``--json PATH`` writes
the numbers.

Run:  python experiments/benchmarks/bench_patching.py [--configs small-b8,...] [--memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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
    "small-b8-dense": dict(cfg=SMALL, batch=8, pos=32, repeats=3, dense=True),
    "gpt2": dict(cfg=GPT2, batch=4, pos=24, repeats=1),
    "gpt2-dense": dict(cfg=GPT2, batch=4, pos=24, repeats=1, dense=True),
}


def setup(name: str):
    spec = CONFIGS[name]
    cfg = gpt2_config(**spec["cfg"])
    model = init_transformer(cfg, jax.random.key(0))
    b, p, v = spec["batch"], spec["pos"], cfg.d_vocab
    clean = jax.random.randint(jax.random.key(1), (b, p), 0, v)
    if spec.get("dense"):  # every position differs
        corrupted = (clean + 7) % v
    else:
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


class Clock:
    """Wall and process-CPU seconds since it was made (``.now()``)."""

    def __init__(self):
        self.w, self.c = time.perf_counter(), time.process_time()

    def now(self) -> np.ndarray:
        return np.array([time.perf_counter() - self.w, time.process_time() - self.c])


def loop(model, clean, corrupted, metric):
    """The baseline. Returns (values, first-call [wall, cpu] s, calls [wall, cpu] s, n_targets)."""
    clock = Clock()
    resid = _clean_resid(model, clean)
    L, P = model.cfg.n_layers, clean.shape[1]
    out = np.zeros((L, P), np.float32)
    out[0, 0] = _single(model, corrupted, resid, metric, jnp.int32(0), jnp.int32(0))
    first = clock.now()
    for layer in range(L):
        for pos in range(P):
            if layer or pos:
                out[layer, pos] = _single(model, corrupted, resid, metric, jnp.int32(layer), jnp.int32(pos))
    return out, first, clock.now() - first, L * P


def timed(fn):
    """``(fn(), [wall, cpu] seconds)``, blocking on the result."""
    clock = Clock()
    out = fn()
    jax.block_until_ready(jnp.asarray(out))
    return out, clock.now()


def bench(name: str, chunk_size: int | None, repeats: int) -> dict:
    """Timings for one config. Steady-state numbers are the best of ``repeats`` runs (the
    machine is shared, so the minimum is the least disturbed measurement)."""
    model, clean, corrupted, metric = setup(name)
    jax.clear_caches()
    sweep = lambda: activation_patching(model, clean, corrupted, metric, "resid_pre", chunk_size=chunk_size)  # noqa: E731
    result, t_first = timed(lambda: sweep().values)
    sweeps = [timed(lambda: sweep().values)[1] for _ in range(repeats)]
    jax.clear_caches()
    ref, t_compile_call, t_calls, n = loop(model, clean, corrupted, metric)
    loop_first = t_compile_call + t_calls
    loops = [t_calls * n / (n - 1)]
    for _ in range(repeats - 1):  # later passes: every call is a steady one
        loops.append(sum(loop(model, clean, corrupted, metric)[1:3]))
    err = float(np.abs(np.asarray(result) - ref).max())

    fwd = eqx.filter_jit(lambda m, t: m(t))
    attr = lambda: attribution_patching(model, clean, corrupted, metric, "z", by=("layer", "head")).values  # noqa: E731
    timed(lambda: fwd(model, corrupted))
    timed(attr)
    fwds, attrs = [], []
    for _ in range(5 * repeats):  # interleaved, so load changes hit both alike
        fwds.append(timed(lambda: fwd(model, corrupted))[1])
        attrs.append(timed(attr)[1])
    best = {k: np.min(v, axis=0).tolist() for k, v in
            {"sweep": sweeps, "loop": loops, "forward": fwds, "attribution": attrs}.items()}
    return dict(name=name, targets=n, sweep_first=t_first.tolist(), loop_first=loop_first.tolist(), **best,
                max_abs_err=err, loadavg=os.getloadavg())


def report(r: dict) -> None:
    """Prints the ratios, from wall time (and from CPU time in brackets)."""
    def ratio(a, b):
        return f"{r[a][0] / r[b][0]:5.1f}x (cpu {r[a][1] / r[b][1]:4.1f}x)"

    print(f"\n== {r['name']}: {r['targets']} residual-stream targets, max |sweep - loop| = {r['max_abs_err']:.2e}")
    print(f"sweep  first call {r['sweep_first'][0]:7.2f} s   steady {r['sweep'][0]:7.3f} s (cpu {r['sweep'][1]:.3f} s)")
    print(f"loop   first call {r['loop_first'][0]:7.2f} s   steady {r['loop'][0]:7.3f} s (cpu {r['loop'][1]:.3f} s)")
    print(f"RATIO steady     loop/sweep = {ratio('loop', 'sweep')}")
    print(f"RATIO first call loop/sweep = {ratio('loop_first', 'sweep_first')}")
    print(f"attribution (all heads) {r['attribution'][0] * 1e3:.1f} ms = {ratio('attribution', 'forward')} "
          f"forward passes ({r['forward'][0] * 1e3:.1f} ms each)")


def memory(name: str) -> None:
    """Peak temporary memory of the compiled chunk program (XLA's memory analysis) for two
    chunk sizes and two depths: it follows the chunk size, not the number of targets."""
    from jaxinterp.interp import _sweep as F

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
    ap.add_argument("--repeats", type=int, default=None, help="steady-state repeats (default per config)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    results = []
    for name in args.configs.split(","):
        results.append(bench(name, args.chunk_size, args.repeats or CONFIGS[name]["repeats"]))
        report(results[-1])
        if args.memory:
            memory(name)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
