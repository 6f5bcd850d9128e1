"""Benchmarks of jaxinterp.circuits against baselines measured in the same run.

1. Composition scores of every head pair of a 12-layer, d_model 768, 12-head model
   against TransformerLens's ``all_composition_scores`` on the same weights: first call
   (compile included) and steady state (median), and the FLOP rate of our contraction.
2. Edge attribution cost (steady state) in forward-pass equivalents (over a jitted plain
   forward pass on the same batch) and over the pass floor measured beside it: the plain
   model's passes that the method's pass count names (:func:`pass_floor`), so the second
   ratio is the overhead our implementation adds.
3. Head detectors: all four from one compiled call, against the forward pass.

    python experiments/benchmarks/bench_circuits.py            # about 5 minutes on 2 cores
    python experiments/benchmarks/bench_circuits.py --quick    # composition on 6 layers, no TL repeat
    python experiments/benchmarks/bench_circuits.py --skip-composition   # edge attribution and detectors only
    python experiments/benchmarks/bench_circuits.py --composition-only   # composition scores only
    python experiments/benchmarks/bench_circuits.py --skip-composition --gpt2-small   # and at GPT-2 small's shapes

Where one EAP call's time goes (each stage its own jitted function, FLOPs, temporaries):
``experiments/benchmarks/bench_eap_stages.py``.

The 12-layer TransformerLens comparison needs about 16 GB free (it is skipped, with a
message, when /proc/meminfo shows less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from jaxinterp import circuits
from jaxinterp.circuits.composition import flop_count
from jaxinterp.data import repeated_tokens
from jaxinterp.data.ioi import ioi_batch
from jaxinterp.recipes.ioi import ioi_config


def timed(fn, repeat: int = 3) -> tuple[float, float]:
    """(first call, median of ``repeat`` later calls) in seconds; outputs are blocked on."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def transformer_lens_model(model):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = model.cfg
    tcfg = HookedTransformerConfig(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                                   d_head=cfg.d_head, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn="gelu_new",
                                   attn_only=True, device="cpu")
    tl = HookedTransformer(tcfg)
    state = tl.state_dict()
    for layer in range(cfg.n_layers):
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            state[f"blocks.{layer}.attn.{name}"] = torch.tensor(np.asarray(getattr(model.blocks.attn, name)[layer]))
    tl.load_state_dict(state)
    return tl


def matmul_rate(n: int = 2048) -> float:
    """This machine's float32 matrix-product rate now (GFLOP/s, median of 3 ``n x n`` products)."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    _, t = timed(lambda: f(x), repeat=3)
    return 2.0 * n**3 / t / 1e9


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def bench_composition(n_layers: int, tl_repeat: int) -> None:
    """Per mode: our first call (compile included; caches cleared first, as the three modes
    share one compiled program), then TransformerLens and our steady state alternated
    (``tl_repeat`` rounds of one TransformerLens call, three of ours and one
    matrix product rate), medians of each. TransformerLens's first call in the process is
    made (and printed) before, so that both sides' ratios are against its later calls."""
    cfg = ji.gpt2_config(n_layers=n_layers, d_vocab=1000, n_ctx=64)
    model = ji.init_transformer(cfg, jax.random.key(0))
    method, flops = flop_count(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    print(f"\n== composition scores, {n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
          f"d_head {cfg.d_head}: method {method!r}, {flops / 1e9:.1f} GFLOP a mode "
          f"('pairs' {flop_count(n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, 'pairs')[1] / 1e9:.1f}, "
          f"'gram' {flop_count(n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, 'gram')[1] / 1e9:.1f}) ==")
    need = 16.0 if n_layers >= 12 else 6.0  # TransformerLens held 15 GB at 12 layers
    if available_gib() < need:
        print(f"only {available_gib():.1f} GiB available, TransformerLens needs about {need:.0f}: "
              "skipping the comparison (rerun on a quieter machine or with --quick)")
        return
    tl = transformer_lens_model(model)
    t = time.perf_counter()
    tl.all_composition_scores("Q")  # its first call in a process is 2-3x slower than later ones
    print(f"TransformerLens's first call in this process (mode Q, not counted below): {time.perf_counter() - t:.2f} s;"
          " every TransformerLens time below is a later call", flush=True)
    for mode in ("Q", "K", "V"):
        def ours(mode=mode):
            return circuits.composition_scores(model, mode).values

        jax.clear_caches()  # a cold first call per mode (the three modes share one compiled program)
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(ours())
        first, first_cpu = time.perf_counter() - t, time.process_time() - c
        tl_times, tl_cpus, our_times, our_cpus, rates = [], [], [], [], []
        for _ in range(tl_repeat):
            t, c = time.perf_counter(), time.process_time()
            ref = tl.all_composition_scores(mode)
            tl_times.append(time.perf_counter() - t)
            tl_cpus.append(time.process_time() - c)
            rates.append(matmul_rate())
            c = time.process_time()
            our_times.append(timed(ours, repeat=3)[1])
            our_cpus.append((time.process_time() - c) / 4)  # the first of timed's 4 calls is warm too
        tl_time, steady, rate = (statistics.median(x) for x in (tl_times, our_times, rates))
        tl_cpu, steady_cpu = statistics.median(tl_cpus), statistics.median(our_cpus)
        err = float(np.abs(np.asarray(ours()) - ref.detach().numpy()).max())
        print(f"mode {mode}: TransformerLens {tl_time:.2f} s | ours first call {first:.3f} s "
              f"({tl_time / first:.1f}x, target 20x: {'met' if tl_time / first >= 20 else 'NOT met'}), "
              f"steady {steady:.3f} s ({tl_time / steady:.1f}x, target 50x: "
              f"{'met' if tl_time / steady >= 50 else 'NOT met'}) | {flops / steady / 1e9:.1f} GFLOP/s, "
              f"{100 * flops / steady / 1e9 / rate:.0f}% of a 2048^2 matrix product's {rate:.1f} GFLOP/s "
              f"| max |diff| {err:.1e}", flush=True)
        print(f"        CPU-seconds (all threads; robust to other processes' load): TransformerLens {tl_cpu:.2f} | "
              f"ours first call {first_cpu:.3f} ({tl_cpu / first_cpu:.1f}x), steady {steady_cpu:.3f} "
              f"({tl_cpu / steady_cpu:.1f}x)", flush=True)


def paired_ratio(fn, bases: dict, repeat: int = 5) -> tuple[float, float, dict]:
    """(first call of ``fn``, median of its steady time, ``{name: median of fn / base}``
    over ``repeat`` rounds): each round times every base (median of 3 calls in a row, its
    steady state, caches warm) and then ``fn`` once, so a shared machine's load swings stay
    out of the ratios."""
    for base in bases.values():
        jax.block_until_ready(base())
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times, ratios = [], {name: [] for name in bases}
    for _ in range(repeat):
        t_base = {}
        for name, base in bases.items():
            base_times = []
            for _ in range(3):
                t = time.perf_counter()
                jax.block_until_ready(base())
                base_times.append(time.perf_counter() - t)
            t_base[name] = statistics.median(base_times)
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        for name in bases:
            ratios[name].append(times[-1] / t_base[name])
    return first, statistics.median(times), {name: statistics.median(r) for name, r in ratios.items()}


def pass_floor(model, clean, corrupted, metric, copies: int):
    """The passes edge attribution cannot avoid, on the plain model, as one jitted call:
    ``copies = 0`` (EAP) a forward pass on the corrupted batch and ``jax.value_and_grad``
    of the metric (batch mean) with respect to the embeddings on the clean batch;
    ``copies = m`` (EAP-IG-inputs) one forward of both batches and the value and gradient
    over ``m`` stacked copies of the clean batch (interpolated embeddings). The gradient
    runs back through every layer (EAP needs the activation gradients everywhere) but
    takes no weight gradients, and, like our method, unembeds only the positions the
    metric reads (``models.partial.logits_at``): the forwards give the metric, not every
    position's logits."""
    from jaxinterp.circuits._probe import copies_mean, copy_logits
    from jaxinterp.models.transformer import embed, positions_and_mask, run_blocks

    B, P = clean.shape

    def value(x0, model, tokens):  # the weights an argument, as in EAP's program (not constants)
        positions, mask = positions_and_mask(tokens)
        return copies_mean(metric, copy_logits(model, run_blocks(model, x0, positions, mask), P, tokens.shape[0] // B))

    @jax.jit
    def floor(model, clean, corrupted):
        if copies == 0:
            metrics = value(embed(model, corrupted, positions_and_mask(corrupted)[0]), model, corrupted)
            out = jax.value_and_grad(value)(embed(model, clean, positions_and_mask(clean)[0]), model, clean)
        else:
            both = jnp.concatenate([clean, corrupted])
            positions, mask = positions_and_mask(both)
            x = embed(model, both, positions)
            metrics = [copies_mean(metric, lg) for lg in copy_logits(model, run_blocks(model, x, positions, mask), P, 2)]
            a = (jnp.arange(copies, dtype=x.dtype) / copies)[:, None, None, None]
            stacked = (x[B:][None] + a * (x[:B] - x[B:])[None]).reshape((-1,) + x.shape[1:])
            out = jax.value_and_grad(value)(stacked, model, jnp.tile(clean, (copies, 1)))
        return metrics, out

    return lambda: floor(model, clean, corrupted)


def bench_eap(label: str, model, clean, corrupted, metric, steps: int = 5, methods=circuits.METHODS) -> None:
    forward = jax.jit(lambda m, t: m(t))
    _, t_fwd = timed(lambda: forward(model, clean), repeat=7)
    floors = {0: pass_floor(model, clean, corrupted, metric, 0), steps: pass_floor(model, clean, corrupted, metric, steps)}
    _, t_floor = timed(floors[0], repeat=7)
    _, t_floor_ig = timed(floors[steps], repeat=7)
    print(f"\n== edge attribution, {label}: batch {clean.shape}, forward pass {t_fwd * 1e3:.1f} ms; pass floor "
          f"(plain model, below) EAP {t_floor * 1e3:.1f} ms = {t_floor / t_fwd:.2f} forwards, EAP-IG m = {steps} "
          f"{t_floor_ig * 1e3:.1f} ms = {t_floor_ig / t_fwd:.2f} forwards ==")
    for method in methods:
        floor = floors[0 if method == "EAP" else steps]
        first, steady, ratio = paired_ratio(lambda method=method: circuits.edge_attribution(
            model, clean, corrupted, metric, method=method, steps=steps).values,
            {"forward": lambda: forward(model, clean), "floor": floor},
            repeat=3 if method == "EAP-IG-activations" else 7)
        passes = {"EAP": "2 forward + 1 backward",
                  "EAP-IG-inputs": f"1 forward of both batches + {steps} (forward+backward)",
                  "EAP-IG-activations": f"1 forward of both batches + {(1 + 2 * model.cfg.n_layers) * steps} "
                                        "(forward+backward)"}
        target = {"EAP": 3, "EAP-IG-inputs": steps + 2}.get(method)
        verdict = "" if target is None else f", target <= {target}: {'met' if ratio['forward'] <= target else 'NOT met'}"
        floor_name = "EAP's" if method == "EAP" else f"EAP-IG-inputs' (m = {steps})"
        print(f"{method:<19} {ratio['forward']:6.1f} forward-pass equivalents{verdict}; {ratio['floor']:5.2f}x "
              f"{floor_name} pass floor (medians of back-to-back rounds; steady {steady * 1e3:.1f} ms, first call "
              f"{first:.1f} s; {passes[method]})", flush=True)


def bench_detectors(model, tokens) -> None:
    forward = jax.jit(lambda m, t: m(t))
    _, t_fwd = timed(lambda: forward(model, tokens), repeat=7)
    first, steady = timed(lambda: circuits.head_scores(model, tokens).values, repeat=7)
    print(f"\n== detectors: all four over every head in one compiled call: {steady / t_fwd:.1f} forward-pass "
          f"equivalents (steady {steady * 1e3:.1f} ms, first call {first:.1f} s) ==")


def gpt2_small_case():
    """``(label, model, clean, corrupted, metric)`` at GPT-2 small's shapes (12 layers, d_model
    768, vocab 50257; random weights): 16 prompts of 16 tokens, one token corrupted."""
    V = 50257
    model = ji.init_transformer(ji.gpt2_config(d_model=768, n_layers=12, n_heads=12, d_vocab=V, n_ctx=1024),
                                jax.random.key(4))
    clean = jax.random.randint(jax.random.key(5), (16, 16), 0, V)
    corrupted = clean.at[:, 8].set((clean[:, 8] + 1) % V)
    return ("GPT-2 small shape, 12 layers, d_model 768", model, clean, corrupted,
            ji.logit_diff(clean[:, -1], (clean[:, -1] + 1) % V))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 layers and one TransformerLens call per mode")
    parser.add_argument("--composition-only", action="store_true", help="only composition scores")
    parser.add_argument("--skip-composition", action="store_true", help="only edge attribution and detectors")
    parser.add_argument("--gpt2-small", action="store_true",
                        help="also EAP and EAP-IG-inputs at GPT-2 small's shapes (random weights; ~4 more minutes)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_composition:
        bench_composition(6 if args.quick else 12, 1 if args.quick else 2)
        if args.composition_only:
            return
    from jaxinterp.recipes.ioi import train_ioi_model

    model, _ = train_ioi_model(300, cfg=ioi_config(n_layers=3), progress=False)
    data = ioi_batch(64, seed=1)
    bench_eap("IOI model (3 layers, d_model 64)", model, data.clean, data.corrupted, ji.logit_diff(data.io, data.s))
    big = ji.init_transformer(ji.gpt2_config(d_model=256, n_layers=4, n_heads=8, d_vocab=2000, n_ctx=64),
                              jax.random.key(1))
    clean = jax.random.randint(jax.random.key(2), (16, 32), 0, 2000)
    corrupted = clean.at[:, 10].set((clean[:, 10] + 1) % 2000)
    metric = ji.logit_diff(clean[:, -1], (clean[:, -1] + 1) % 2000)
    bench_eap("GPT-2 style, 4 layers, d_model 256", big, clean, corrupted, metric)
    bench_detectors(big, repeated_tokens(jax.random.key(3), 16, 31, 2000, bos=0))
    if args.gpt2_small:
        bench_eap(*gpt2_small_case(), methods=("EAP", "EAP-IG-inputs"))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
