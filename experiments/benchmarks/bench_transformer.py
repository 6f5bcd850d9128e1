"""Benchmarks of the hooked transformer: cache overhead, compile time vs depth, throughput.

Three questions, each answered against a baseline measured in the same run:

1. **Cache overhead.** ``jit(run_with_cache(model, tokens, names=...))`` over a handful of
   hooks vs ``jit(model(tokens))``. Capturing only adds outputs (the scanned layers emit
   stacked activations), so the steady-state cost should be small. Target <= 10%.
2. **Compile time vs depth.** ``jax.jit(f).lower(...).compile()`` of a fresh function for a
   1-layer and a 12-layer model of the same width, and the first-call time. Layers run
   under ``lax.scan``, so the 12-layer model should compile in < 2x the 1-layer time.
3. **Forward throughput** on the GPT-2-small shape vs Hugging Face ``GPT2LMHeadModel`` in
   PyTorch (float32, eval, ``use_cache=False``, ``no_grad`` and ``inference_mode``, as
   many threads as JAX uses), plus a plain-JAX reference forward (unrolled, no hooks), and
   a square float32 matmul (1024^3) and an MLP-sized one in each framework: each forward's
   FLOP rate (its matmul FLOPs, ``forward_flops``) as a fraction of its own framework's
   square-matmul rate tells GEMM speed from everything else.

Timing on a shared machine is noisy, so the functions compared are called round-robin
(``repeats`` rounds, each calling every function once after a warm-up); we report the
median and minimum wall time, the median process CPU time, and ratios as the median of
the per-round ratios. Nothing is asserted: targets are reported as met or not.

    python experiments/benchmarks/bench_transformer.py           # full (3-8 min on 2 busy cores)
    python experiments/benchmarks/bench_transformer.py --quick   # smoke run (~30 s)
    python experiments/benchmarks/bench_transformer.py --sections throughput --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.hooks import run_with_cache
from jaxinterp.models import HookedTransformer, gpt2_config, init_transformer

Timings = dict[str, dict[str, Any]]


# Timing helpers ------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> Timings:
    """Calls each thunk once to warm up, then ``repeats`` round-robin rounds; wall and CPU s."""
    for f in fns.values():
        jax.block_until_ready(f())
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(f())
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return {k: summary(wall[k]) | {"cpu_median_s": statistics.median(cpu[k])} for k in fns}


def summary(ts: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": [round(t, 4) for t in ts]}


def ratio(t: Timings, a: str, b: str) -> dict[str, float]:
    """a / b: median of per-round ratios, ratio of minima, ratio of median CPU times."""
    per_round = [x / y for x, y in zip(t[a]["all_s"], t[b]["all_s"], strict=True)]
    return {
        "paired_median": statistics.median(per_round),
        "of_min": t[a]["min_s"] / t[b]["min_s"],
        "of_cpu": t[a]["cpu_median_s"] / t[b]["cpu_median_s"],
    }


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['paired_median']:.3f} (min {r['of_min']:.3f}, cpu {r['of_cpu']:.3f})"


def model_and_tokens(cfg, batch: int, seq: int, seed: int = 0):
    model = init_transformer(cfg, jax.random.PRNGKey(seed))
    tokens = jax.random.randint(jax.random.PRNGKey(seed + 1), (batch, seq), 0, cfg.d_vocab)
    return model, tokens


def some_hooks(n_layers: int) -> list[str]:
    """Five names: two layer wildcards, two single-layer hooks, one outside the blocks."""
    mid = n_layers // 2
    return ["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern", f"blocks.{mid}.attn.hook_z",
            f"blocks.{mid}.hook_mlp_out", "ln_final.hook_scale"]


# 1. run_with_cache overhead ------------------------------------------------------------


def bench_cache(cfg, batch: int, seq: int, repeats: int) -> dict[str, Any]:
    model, tokens = model_and_tokens(cfg, batch, seq)
    names = some_hooks(cfg.n_layers)
    fwd = jax.jit(lambda m, t: m(t))
    cached = jax.jit(lambda m, t: run_with_cache(m, t, names=names))
    empty = jax.jit(lambda m, t: run_with_cache(m, t, names=[]))
    t = interleaved({"forward": lambda: fwd(model, tokens), "run_with_cache": lambda: cached(model, tokens),
                     "run_with_cache(names=[])": lambda: empty(model, tokens)}, repeats)
    _, cache = cached(model, tokens)
    extra = sum(v.size * v.dtype.itemsize for v in cache.values())
    return {"names": names, "timings": t, "extra_output_MB": extra / 2**20,
            "overhead": ratio(t, "run_with_cache", "forward"),
            "overhead_empty": ratio(t, "run_with_cache(names=[])", "forward")}


# 2. Compile time vs depth --------------------------------------------------------------


def compile_times(model: HookedTransformer, tokens, all_hooks: bool, repeats: int) -> dict[str, Any]:
    """Trace+lower, XLA compile, and first call (trace+compile+run) of fresh jitted functions."""

    def fresh():
        if all_hooks:
            return jax.jit(lambda m, t: run_with_cache(m, t, names=None))
        return jax.jit(lambda m, t: m(t))

    lower, comp, first = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lowered = fresh().lower(model, tokens)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        lower.append(t1 - t0)
        comp.append(t2 - t1)
        f = fresh()
        t0 = time.perf_counter()
        jax.block_until_ready(f(model, tokens))
        first.append(time.perf_counter() - t0)
    total = [a + b for a, b in zip(lower, comp, strict=True)]
    return {"lower": summary(lower), "compile": summary(comp), "lower+compile": summary(total),
            "first_call": summary(first)}


def bench_compile(depths: tuple[int, int], d_model: int, d_vocab: int, batch: int, seq: int,
                  repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for all_hooks in (False, True):
        kind = "run_with_cache(all hooks)" if all_hooks else "forward"
        res = {}
        for n_layers in depths:
            cfg = gpt2_config(d_model=d_model, n_layers=n_layers, n_heads=d_model // 64, d_vocab=d_vocab)
            model, tokens = model_and_tokens(cfg, batch, seq)
            res[f"{n_layers}L"] = compile_times(model, tokens, all_hooks, repeats)
            del model
        shallow, deep = (res[f"{n}L"] for n in depths)
        res["ratio_lower+compile"] = deep["lower+compile"]["median_s"] / shallow["lower+compile"]["median_s"]
        res["ratio_compile"] = deep["compile"]["median_s"] / shallow["compile"]["median_s"]
        res["ratio_first_call"] = deep["first_call"]["median_s"] / shallow["first_call"]["median_s"]
        out[kind] = res
    return out


# 3. Throughput vs Hugging Face PyTorch -------------------------------------------------


def reference_forward(m: HookedTransformer, tokens):
    """GPT-2 in plain JAX: Python loop over layers, no hooks, no scan. A floor to compare to."""
    cfg, p = m.cfg, m.blocks

    def ln(x, w, b):
        x = x - x.mean(-1, keepdims=True)
        return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + cfg.eps) * w + b

    seq = tokens.shape[1]
    x = m.W_E[tokens] + m.W_pos[:seq]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    for i in range(cfg.n_layers):
        a, f = jax.tree.map(lambda w, i=i: w[i], (p.attn, p.mlp))
        h = ln(x, p.ln1.w[i], p.ln1.b[i])
        q, k, v = (jnp.einsum("bpd,hde->bphe", h, W) + b for W, b in
                   ((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V)))
        s = jnp.where(causal, jnp.einsum("bqhe,bkhe->bhqk", q, k) / cfg.scale, -jnp.inf)
        z = jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, axis=-1), v)
        x = x + jnp.einsum("bqhe,hed->bqd", z, a.W_O) + a.b_O
        h = jax.nn.gelu(ln(x, p.ln2.w[i], p.ln2.b[i]) @ f.W_in + f.b_in, approximate=True)
        x = x + h @ f.W_out + f.b_out
    return ln(x, m.ln_final.w, m.ln_final.b) @ m.unembed_matrix


def forward_flops(cfg, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward: q/k/v/o and the MLP in every layer, scores and mixing
    over all ``seq`` keys (as computed, masked or not), and the unembedding."""
    d, n = cfg.d_model, batch * seq
    per_layer = 2 * n * (4 * d * d + 2 * d * cfg.d_mlp) + 2 * 2 * n * seq * d
    return cfg.n_layers * per_layer + 2 * n * d * cfg.d_vocab


def bench_throughput(cfg, batch: int, seq: int, repeats: int, threads: int) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model, tokens = model_and_tokens(cfg, batch, seq)
    fwd = jax.jit(lambda m, t: m(t))
    ref = jax.jit(reference_forward)
    np.testing.assert_allclose(np.asarray(ref(model, tokens)[:, :4]), np.asarray(fwd(model, tokens)[:, :4]),
                               rtol=1e-3, atol=1e-3)
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                                     n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                     bos_token_id=cfg.d_vocab - 1, eos_token_id=cfg.d_vocab - 1)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval().float()
    x = torch.from_numpy(np.asarray(tokens).astype(np.int64))

    def hf_call(ctx):
        def call():
            with ctx():
                return hf(x, use_cache=False).logits  # no KV cache: a plain forward
        return call

    t = interleaved({"jaxinterp": lambda: fwd(model, tokens), "jax_reference": lambda: ref(model, tokens),
                     "hf_no_grad": hf_call(torch.no_grad), "hf_inference_mode": hf_call(torch.inference_mode)},
                    repeats)
    n_tok = batch * seq
    for v in t.values():
        v["tokens_per_s"] = n_tok / v["median_s"]
    # Context: a square and an MLP-sized float32 matmul in each framework, as GFLOP/s.
    mm = jax.jit(jnp.matmul)
    gemm: dict[str, float] = {}
    for shape, (m, k, n) in {"square": (1024, 1024, 1024), "mlp": (batch * seq, cfg.d_model, cfg.d_mlp)}.items():
        a, b = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        g = interleaved({f"xla_{shape}": lambda ja=ja, jb=jb: mm(ja, jb),
                         f"torch_{shape}": lambda ta=ta, tb=tb: ta @ tb}, 3 * repeats)
        gemm |= {k_: 2 * m * k * n / v["median_s"] / 1e9 for k_, v in g.items()}
    flops = forward_flops(cfg, batch, seq)
    rate = {k: flops / v["median_s"] / 1e9 for k, v in t.items()}
    own = {"jaxinterp": "xla", "jax_reference": "xla", "hf_no_grad": "torch", "hf_inference_mode": "torch"}
    return {"timings": t, "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "hf_attn_implementation": hf.config._attn_implementation, "sgemm_GFLOPs": gemm,
            "forward_GFLOP": flops / 1e9, "forward_GFLOPs": rate,
            "forward_vs_square_matmul": {k: v / gemm[f"{own[k]}_square"] for k, v in rate.items()},
            "speedup_vs_hf_no_grad": ratio(t, "hf_no_grad", "jaxinterp"),
            "speedup_vs_hf_inference_mode": ratio(t, "hf_inference_mode", "jaxinterp"),
            "jaxinterp_vs_reference": ratio(t, "jaxinterp", "jax_reference")}


# Driver --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
            "jax": jax.__version__, "backend": jax.default_backend(), "python": platform.python_version(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def report_cache(configs, batch: int, seq: int, reps: int) -> dict[str, Any]:
    print(f"== 1. run_with_cache overhead (batch {batch} x {seq}) ==")
    res = {}
    for label, cfg, n in configs:
        r = res[label] = bench_cache(cfg, batch, seq, n)
        t = r["timings"]
        print(f"{label}: forward {t['forward']['median_s'] * 1e3:.1f} ms, run_with_cache "
              f"{t['run_with_cache']['median_s'] * 1e3:.1f} ms, names=[] "
              f"{t['run_with_cache(names=[])']['median_s'] * 1e3:.1f} ms; cache {r['extra_output_MB']:.1f} MiB")
        print(f"   cache/forward {fmt_ratio(r['overhead'])}; names=[]/forward {fmt_ratio(r['overhead_empty'])}")
    return res


def report_compile(depths, d_model: int, d_vocab: int, batch: int, seq: int, reps: int) -> dict[str, Any]:
    print(f"== 2. compile time vs depth (d_model {d_model}, batch {batch} x {seq}) ==")
    res = bench_compile(depths, d_model, d_vocab, batch, seq, reps)
    for kind, r in res.items():
        for n in depths:
            c = r[f"{n}L"]
            print(f"{kind:26s} {n:2d}L: lower {c['lower']['median_s']:.2f}s, compile "
                  f"{c['compile']['median_s']:.2f}s, first call {c['first_call']['median_s']:.2f}s")
        print(f"{kind:26s} {depths[1]}L/{depths[0]}L: lower+compile {r['ratio_lower+compile']:.2f}x, "
              f"compile {r['ratio_compile']:.2f}x, first call {r['ratio_first_call']:.2f}x")
    return res


def report_throughput(cfg, batch: int, seq: int, reps: int, threads: int) -> dict[str, Any]:
    print(f"== 3. forward throughput vs HF PyTorch (batch {batch} x {seq}, {threads} threads) ==")
    r = bench_throughput(cfg, batch, seq, reps, threads)
    for k, v in r["timings"].items():
        print(f"{k:18s} {v['median_s'] * 1e3:9.1f} ms (min {v['min_s'] * 1e3:9.1f})  "
              f"{v['tokens_per_s']:8.0f} tok/s")
    for k in ("speedup_vs_hf_no_grad", "speedup_vs_hf_inference_mode", "jaxinterp_vs_reference"):
        print(f"{k:30s} {fmt_ratio(r[k])}")
    print("float32 matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["sgemm_GFLOPs"].items()))
    print(f"forward ({r['forward_GFLOP']:.0f} GFLOP) rate / its framework's square-matmul rate: "
          + ", ".join(f"{k} {r['forward_GFLOPs'][k]:.1f} GFLOP/s = {v:.0%}"
                      for k, v in r["forward_vs_square_matmul"].items()))
    return r


def targets(res: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(target, measured ratio, met) rows; wall-time ratios, paired medians for timings."""
    rows = [(f"run_with_cache/forward <= 1.10 ({k})", r["overhead"]["paired_median"],
             r["overhead"]["paired_median"] <= 1.10) for k, r in res.get("cache", {}).items()]
    rows += [(f"compile deep/shallow < 2 ({k})", r["ratio_lower+compile"], r["ratio_lower+compile"] < 2)
             for k, r in res.get("compile", {}).items()]
    if "throughput" in res:
        for k in ("no_grad", "inference_mode"):
            x = res["throughput"][f"speedup_vs_hf_{k}"]["paired_median"]
            rows.append((f"HF {k} time / jaxinterp time >= 1", x, x >= 1))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and few repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5, quick 3)")
    ap.add_argument("--out", default="runs/bench_transformer/results.json")
    ap.add_argument("--skip-hf", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--sections", default="cache,compile,throughput",
                    help="comma-separated sections to run (cache, compile, throughput)")
    args = ap.parse_args(argv)
    reps = args.repeats or (3 if args.quick else 5)
    threads = len(os.sched_getaffinity(0))  # XLA:CPU's thread pool uses every available core
    start = time.perf_counter()
    res: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                           "argv": argv if argv is not None else sys.argv[1:], "repeats": reps,
                           "machine": machine(), "section_s": {}}
    small = gpt2_config(d_model=128, n_layers=2, n_heads=4, d_vocab=1000, n_ctx=256)
    big = small if args.quick else gpt2_config()
    batch, seq = (2, 32) if args.quick else (8, 128)
    cache_cfgs = [("small", small, 20 * reps)]  # milliseconds per call: many rounds are cheap
    if not args.quick:
        cache_cfgs.insert(0, ("gpt2-small", big, reps))
    depths, d_model, d_vocab = ((1, 2), 128, 1000) if args.quick else ((1, 12), 768, 50257)

    sections = {"cache": lambda: report_cache(cache_cfgs, batch, seq, reps),
                "compile": lambda: report_compile(depths, d_model, d_vocab, batch, seq, 1 if args.quick else 2)}
    if not args.skip_hf:
        sections["throughput"] = lambda: report_throughput(big, batch, seq, reps, threads)
    unknown = set(args.sections.split(",")) - {"cache", "compile", "throughput"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from cache, compile, throughput")
    sections = {k: v for k, v in sections.items() if k in args.sections.split(",")}
    for name, run in sections.items():
        t0 = time.perf_counter()
        res[name] = run()
        res["section_s"][name] = time.perf_counter() - t0

    res["targets"] = targets(res)
    print("== targets (wall-time ratios, median of paired rounds) ==")
    for name, x, met in res["targets"]:
        print(f"{name:48s} {x:7.3f}  {'met' if met else 'NOT met'}")
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - start
    print(f"total {res['wall_s']:.0f}s; load average at start {res['machine']['loadavg'][0]:.1f}, "
          f"at end {res['machine']['loadavg_end'][0]:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
