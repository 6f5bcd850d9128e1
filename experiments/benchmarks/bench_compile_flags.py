"""Compile and run time of XLA CPU's two code generators for fused element-wise work.

XLA's CPU backend emits fusions through MLIR "fusion emitters" by default; the flag
``--xla_cpu_use_fusion_emitters=false`` selects its older elemental emitters. On CPU
compiling is a large part of a user's first call (and most of our tests' time), so we measure
both settings on the programs people run most:

* the forward of GPT-2 small (random weights, batch 8 x 128, float32);
* an Adam training step (value and gradient of the next-token loss, optimiser update) of a
  4-layer, d_model 256 model on 16 x 64 tokens;
* a TopK SAE training step (d_in 256, 8x wider, batch 1024) through ``jaxinterp.sae``.

XLA reads its flags once per process, so every measurement runs in a fresh subprocess; the
two settings alternate for ``--rounds`` rounds (the machine is noisy: ratios are medians of
per-round ratios, compile as wall and as CPU seconds, run as the median of 7 steady calls).

    python experiments/benchmarks/bench_compile_flags.py             # 3 rounds, ~4 min on 2 cores
    python experiments/benchmarks/bench_compile_flags.py --rounds 1  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"fusion emitters (default)": "", "elemental emitters": "--xla_cpu_use_fusion_emitters=false"}


def _measure() -> dict:
    """Runs in the subprocess: compile (wall, CPU) and steady run time of each program."""
    import equinox as eqx
    import jax
    import optax

    from jaxinterp.models import gpt2_config, init_transformer
    from jaxinterp.models.loss import lm_loss
    from jaxinterp.sae import SAEConfig, init_sae, sae_loss

    def timed(fn, *args) -> dict:
        w, c = time.perf_counter(), time.process_time()
        compiled = jax.jit(fn).lower(*args).compile()
        out = {"compile_s": time.perf_counter() - w, "compile_cpu_s": time.process_time() - c}
        jax.block_until_ready(compiled(*args))
        runs = []
        for _ in range(7):
            w = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            runs.append(time.perf_counter() - w)
        return out | {"run_s": statistics.median(runs)}

    key = jax.random.key(0)
    gpt2 = init_transformer(gpt2_config(), key)
    tokens = jax.random.randint(key, (8, 128), 0, 50257)
    results = {"GPT-2 small forward, 8 x 128": timed(lambda m, t: m(t), gpt2, tokens)}
    del gpt2

    small = init_transformer(gpt2_config(d_model=256, n_layers=4, n_heads=8, d_vocab=2048), key)
    tokens = jax.random.randint(key, (16, 64), 0, 2048)
    opt = optax.adam(1e-3)
    params, static = eqx.partition(small, eqx.is_inexact_array)

    def lm_step(params, state, tokens):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(eqx.combine(p, static), tokens))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    results["LM Adam step, 4 layers d 256, 16 x 64"] = timed(lm_step, params, opt.init(params), tokens)

    sae = init_sae(SAEConfig(d_in=256, d_sae=2048, architecture="topk", k=32), key)
    acts = jax.random.normal(key, (1024, 256))
    sparams, sstatic = eqx.partition(sae, eqx.is_inexact_array)

    def _split(out):  # sae_loss returns (loss, metrics, aux)
        return out[0], out[1:]

    def sae_step(params, state, x):
        grads, (loss, _) = jax.grad(lambda p: _split(sae_loss(eqx.combine(p, sstatic), x)), has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    results["TopK SAE Adam step, 256 -> 2048, batch 1024"] = timed(sae_step, sparams, opt.init(sparams), acts)
    return results


def main() -> None:
    if os.environ.get("_BENCH_COMPILE_FLAGS_CHILD"):
        print(json.dumps(_measure()))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, flags in SETTINGS.items():
            env = {**os.environ, "XLA_FLAGS": flags, "_BENCH_COMPILE_FLAGS_CHILD": "1"}
            out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, check=True)
            rounds[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    base, alt = SETTINGS
    print(f"{'program':46s} {'compile (default)':>17s} {'ratio wall':>10s} {'ratio CPU':>9s} "
          f"{'run (default)':>13s} {'ratio run':>9s}")
    def per_round(program, field):
        return statistics.median(a[program][field] / b[program][field]
                                 for a, b in zip(rounds[alt], rounds[base], strict=True))

    for program in rounds[base][0]:
        compile_base = statistics.median(b[program]["compile_s"] for b in rounds[base])
        run_base = statistics.median(b[program]["run_s"] for b in rounds[base])
        print(f"{program:46s} {compile_base:15.2f} s {per_round(program, 'compile_s'):10.2f} "
              f"{per_round(program, 'compile_cpu_s'):9.2f} {run_base * 1e3:10.1f} ms {per_round(program, 'run_s'):9.2f}")
    print(f"(ratios: {alt} / {base}, medians of {args.rounds} paired rounds; below 1 is faster)")


if __name__ == "__main__":
    main()
