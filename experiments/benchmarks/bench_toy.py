"""Benchmark: many toy models as one program, against a Python loop of a jitted step.

256 ReLU output models (n=20, m=5, batch 1024, feature probability 0.1, importance
0.7^i), AdamW; steady state after compilation (compile times printed separately):

* ``RATIO``: the trainer's program (:func:`make_chunk`: ``scan`` over steps of a ``vmap``
  over cache-sized blocks, data from the fused Threefry-2x32-13 sampler, closed-form
  gradient) against a Python loop calling the same jitted per-instance step
  (:func:`make_instance_step`) per instance per step: ``--pairs`` interleaved timings,
  median of the pairs' ratios, in wall and in process CPU time (robust to other load);
* where the time goes: ablations (no sampling, sampler alone, forward and loss only, SGD
  instead of AdamW, loss on the whole batch) and XLA's profiler (ops grouped by kind);
* the alternatives measured before choosing (20 rounds, ``jax.random`` samplers,
  autodiff, block sizes, one plain ``vmap``), ``train_toys`` on one and two CPU devices;
* a roofline: bytes (XLA's cost analysis) over measured copy rates, FLOPs over a measured
  matmul rate.

Run:  python experiments/benchmarks/bench_toy.py [--steps 20] [--repeats 5] [--pairs 7] [--ratio-only]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.models import toy
from jaxinterp.models.toy.train import _loss, block_size, make_chunk

I, B, N, M, P = 256, 1024, 20, 5, 0.1
CPU_TIMES: list[float] = []  # process CPU seconds of the last median_time's median repeat


def interleaved(fns: list, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU seconds ``[pairs, len(fns)]`` of the functions called in turn, so that
    each pair of calls sees the same load."""
    wall, cpu = np.zeros((pairs, len(fns))), np.zeros((pairs, len(fns)))
    for fn in fns:
        jax.block_until_ready(fn())  # warm up
    for r in range(pairs):
        for j, fn in enumerate(fns):
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            wall[r, j], cpu[r, j] = time.perf_counter() - t, time.process_time() - c
    return wall, cpu


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()``; the matching CPU seconds go to ``CPU_TIMES``. (On a
    shared machine wall time counts the waits for a core; process CPU time does not.)"""
    wall, cpu = interleaved([fn], repeats)
    CPU_TIMES[:] = [float(np.median(cpu))]
    return float(np.median(wall))


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process (Linux ``/proc``; empty elsewhere)."""
    out, tasks = {}, "/proc/self/task"
    for tid in os.listdir(tasks) if os.path.isdir(tasks) else []:
        try:
            with open(f"{tasks}/{tid}/stat") as f, open(f"{tasks}/{tid}/comm") as g:
                fields = f.read().rsplit(") ", 1)[1].split()
                out[f"{tid}:{g.read().strip()}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def setup(train: toy.ToyTrainConfig):
    cfg = toy.ToyConfig(N, M)
    opt = train.optimizer()
    key = jax.random.key(0)
    models = toy.init_toys(cfg, toy.instance_keys(jax.random.fold_in(key, 0), I))
    state = (models, jax.vmap(opt.init)(models))
    keys = toy.data_key_words(toy.instance_keys(jax.random.fold_in(key, 1), I))
    sources = toy.OnlineFeatures(jnp.full((I,), P, jnp.float32), B, N,  # as train_toys builds it
                                 loss_examples=B // toy.train.LOSS_SUBSAMPLE)
    importance = jnp.broadcast_to(jnp.asarray(toy.geometric_importance(N, 0.7)), (I, N))
    return cfg, opt, state, sources, importance, keys


class Sampler(toy.OnlineFeatures):
    """OnlineFeatures with another way of drawing the bits (the alternatives measured)."""

    how: str = eqx.field(static=True, default="two_draws")

    def sample_t(self, key_words, t):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_words), t)
        shape = (self.n_features, self.batch_size)
        if self.how == "two_draws":  # textbook: a mask draw and a value draw, jax.random
            return toy.sample_features_two_draws(key, self.feature_probability, *shape), None
        u = jax.random.bits(key, shape, jnp.uint32).astype(jnp.float32) * 2.0**-32
        return jnp.where(u <= self.feature_probability, u / self.feature_probability, 0.0), None


class FixedBatch(eqx.Module):
    """The same feature-major batch at every step (the step without sampling)."""

    xt: jax.Array
    loss_examples: int = eqx.field(static=True, default=B // 8)  # as the trainer's sources

    def sample_t(self, key_words, t):
        return self.xt, None


def autodiff_step(cfg, opt):
    """The per-instance step with ``jax.value_and_grad`` of the loss on a ``[batch, feature]``
    batch (the trainer's step before the closed-form gradient)."""

    def step(model, opt_state, source, importance, key_words, t):
        xt, weights = source.sample_t(key_words, t)
        x = xt.T
        loss, grads = jax.value_and_grad(lambda m: _loss(cfg, m, x, weights, importance))(model)
        updates, opt_state = opt.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss

    return step


def ablated_step(cfg, opt, update: str):
    """The trainer's step with ``update="none"`` (sampling, forward and loss only: XLA
    drops the unused gradient) or ``"sgd"`` (a plain SGD update instead of AdamW)."""

    def step(model, opt_state, source, importance, key_words, t):
        xt, weights = source.sample_t(key_words, t)
        loss, grads = toy.loss_and_grad(cfg, model, xt, importance, weights, source.loss_examples)
        if update == "sgd":
            model = jax.tree.map(lambda p, g: p - 1e-3 * g, model, grads)
        return model, opt_state, loss

    return step


def one_program(cfg, opt, state, sources, importance, keys, steps, block, make_step=toy.make_instance_step):
    chunk = jax.jit(make_chunk(cfg, opt, steps, (block,), make_step))
    args = ((state,), ((sources, importance, keys),), jnp.int32(0))
    t = time.perf_counter()
    compiled = chunk.lower(*args).compile()
    return compiled, args, time.perf_counter() - t


def make_loop(cfg, opt, state, sources, importance, keys, steps):
    """The baseline: ``run()`` calls the jitted per-instance step for every instance at
    every one of ``steps`` steps from Python; returns ``(run, compile seconds)``."""
    step = jax.jit(toy.make_instance_step(cfg, opt))
    per = [jax.tree.map(lambda a, i=i: a[i], (state, sources, importance, keys)) for i in range(I)]
    states = [p[0] for p in per]
    ts = [jnp.int32(t) for t in range(steps)]
    t = time.perf_counter()
    jax.block_until_ready(step(*states[0], *per[0][1:], ts[0]))
    compile_s = time.perf_counter() - t

    def run():
        for t_ in range(steps):
            for i in range(I):
                model, opt_state, _ = step(*states[i], per[i][1], per[i][2], per[i][3], ts[t_])
                states[i] = (model, opt_state)
        return states

    return run, compile_s


def op_kinds(hlo: str) -> dict[str, str]:
    """The kind of each op of a compiled HLO module: random bits (a fusion with Threefry's
    shifts), matmuls (dots, YNNPACK/oneDNN fusions), element-wise loops (>= 4096 elements
    out: ``[instances, n|m, batch]``) or small (AdamW, counters, bookkeeping)."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            name = line.split(" ", 1)[0].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)

    def text(comp, depth=0):
        body = "\n".join(bodies.get(comp, []))
        for sub in re.findall(r"(?:calls|to_apply)=%([\w.-]+)", body) if depth < 3 else []:
            body += text(sub, depth + 1)
        return body

    kinds = {}
    for line in (ln for lines in bodies.values() for ln in lines):
        m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\w+)\[([\d,]*)\][^ ]* (\w[\w-]*)\(", line)
        if not m or m.group(4) in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast",
                                   "while", "call", "conditional"):
            continue
        inner = text(c.group(1)) if (c := re.search(r"calls=%([\w.-]+)", line)) else line
        size = int(np.prod([int(d) for d in m.group(3).split(",") if d]))
        kinds[m.group(1)] = ("random bits (Threefry)" if "shift-left" in inner else
                             "matmuls (batch contractions)" if m.group(4) == "dot"
                             or "kind=kCustom" in line or " dot(" in inner else
                             "element-wise [instances, n|m, batch]" if size >= 4096 else
                             "small (AdamW, bookkeeping)")
    return kinds


def profile_shares(compiled, args) -> dict[str, float]:
    """Each kind of op's share (:func:`op_kinds`) of the time XLA's profiler records for
    one call: the ops' own events, summed over threads (tracing slows every op, so read
    shares, not times). Empty if this JAX cannot read its traces back."""
    try:
        from jax._src.lib import _profile_data
    except ImportError:
        return {}
    kinds = op_kinds(compiled.as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(compiled(*args))
        files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        if not files:
            return {}
        data = _profile_data.ProfileData.from_file(files[0])
    total: dict[str, float] = {}
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in kinds:
                    total[kinds[ev.name]] = total.get(kinds[ev.name], 0.0) + ev.duration_ns
    whole = sum(total.values()) or 1.0
    return {k: v / whole for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


TWO_DEVICES = r"""
import json, sys, time
import jax, numpy as np
from jaxinterp.models import toy
steps, repeats = int(sys.argv[1]), int(sys.argv[2])
cfg, p, imp = toy.ToyConfig(20, 5), np.full(256, 0.1), toy.geometric_importance(20, 0.7)
out = {}
for name, devices in (("1 device", jax.devices()[:1]), ("2 devices", jax.devices())):
    train = toy.ToyTrainConfig(steps=steps * repeats, log_every=steps, progress=False)
    run = toy.train_toys(cfg, p, imp, train, devices=devices)
    out[name] = [run.train_seconds / train.steps, run.compile_seconds]
print(json.dumps(out))
"""


def two_devices(steps: int, repeats: int) -> dict:
    """``train_toys`` on one and on two CPU devices (``--xla_force_host_platform_device_count=2``,
    one per core), in a subprocess since the flag must be set before JAX starts."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(steps), str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_bandwidth(repeats: int, n: int = 64 * 2**20, times: int = 1) -> float:
    """Bytes read and written per second by ``a * 1.5`` over ``n`` floats (``times`` passes
    in one program: a small ``n`` stays in cache, like one block's step arrays)."""
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda a: jax.lax.fori_loop(0, times, lambda i, v: v * 1.5, a))
    return 2 * x.nbytes * times / median_time(lambda: f(x), repeats)


def matmul_rate(repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / median_time(lambda: f(a), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (median)")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved (program, loop) pairs for RATIO")
    parser.add_argument("--ratio-only", action="store_true", help="only the RATIO line (quick)")
    args = parser.parse_args()
    S, R = args.steps, args.repeats
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    train = toy.ToyTrainConfig(batch_size=B)
    cfg, opt, state, sources, importance, keys = setup(train)
    block = block_size(cfg, train, B, I, "cpu")
    print(f"\n256 instances, n={N}, m={M}, batch {B}, p={P}; blocks of {block} instances; "
          f"{S} steps per program call; Threefry-2x32-{toy.data.ROUNDS} sampler")

    # The headline: the trainer's program against the loop, interleaved.
    compiled, a, prog_compile = one_program(cfg, opt, state, sources, importance, keys, S, block)
    loop_steps = max(2, S // 10)
    loop, loop_compile = make_loop(cfg, opt, state, sources, importance, keys, loop_steps)
    load0 = os.getloadavg()[0]
    wall, cpu = interleaved([lambda: compiled(*a), loop], args.pairs)
    wall, cpu = wall / [S, loop_steps], cpu / [S, loop_steps]  # per step
    print(f"\none program: {np.median(wall[:, 0]) * 1e3:.2f} ms/step wall, {np.median(cpu[:, 0]) * 1e3:.2f} ms CPU "
          f"(compile {prog_compile:.2f} s); loop of the jitted per-instance step: "
          f"{np.median(wall[:, 1]) * 1e3:.2f} ms/step wall, {np.median(cpu[:, 1]) * 1e3:.2f} ms CPU "
          f"(compile {loop_compile:.2f} s)")
    print("loop / one program per pair, wall: " + " ".join(f"{r:.2f}" for r in wall[:, 1] / wall[:, 0]))
    print("loop / one program per pair, CPU:  " + " ".join(f"{r:.2f}" for r in cpu[:, 1] / cpu[:, 0]))
    print(f"RATIO loop / one program = {np.median(wall[:, 1] / wall[:, 0]):.2f}x wall, "
          f"{np.median(cpu[:, 1] / cpu[:, 0]):.2f}x CPU time (median of {args.pairs} interleaved pairs; "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")

    if args.ratio_only:
        return
    # Where the time goes: ablations and alternatives, each against the one program.
    src20 = toy.OnlineFeatures(sources.feature_probability, B, N, rounds=20, loss_examples=sources.loss_examples)
    full_loss = toy.OnlineFeatures(sources.feature_probability, B, N)
    fixed = FixedBatch(jax.vmap(lambda k: toy.OnlineFeatures(jnp.float32(P), B, N).sample_t(k, 0)[0])(keys))
    variants = [("one program", sources, block, toy.make_instance_step),
                ("  no sampling (the same batch every step)", fixed, block, toy.make_instance_step),
                ("  loss on the whole batch (not the first 1/8)", full_loss, block, toy.make_instance_step),
                ("  sampling, forward and loss only (no gradient, no update)", sources, block,
                 lambda c, o: ablated_step(c, o, "none")),
                ("  closed-form gradient, plain SGD instead of AdamW", sources, block,
                 lambda c, o: ablated_step(c, o, "sgd")),
                ("  sampler: Threefry-2x32-20 (jax.random's rounds)", src20, block, toy.make_instance_step),
                ("  sampler: jax.random threefry2x32 (bits)",
                 Sampler(sources.feature_probability, B, N, loss_examples=sources.loss_examples, how="bits"), block, toy.make_instance_step),
                ("  sampler: jax.random threefry2x32 (two draws)",
                 Sampler(sources.feature_probability, B, N, loss_examples=sources.loss_examples, how="two_draws"), block, toy.make_instance_step),
                ("  autodiff gradient", sources, block, autodiff_step)]
    variants += [(f"  blocks of {b}", sources, b, toy.make_instance_step) for b in (1, 4, 8, 32) if b != block]
    variants += [("  plain vmap over 256 (one block)", sources, I, toy.make_instance_step)]
    rows = {}
    for name, src, blk, make_step in variants:
        c, a_, comp = (compiled, a, prog_compile) if name == "one program" else \
            one_program(cfg, opt, state, src, importance, keys, S, blk, make_step)
        before = thread_cpu()
        rows[name] = (median_time(lambda c=c, a_=a_: c(*a_), R) / S, comp, CPU_TIMES[0] / S)
        if name == "one program":  # which threads did the work: XLA's pool splits large ops
            after = thread_cpu()
            busy = sorted(((after[k] - before.get(k, 0.0), k) for k in after), reverse=True)[:3]
            threads = ", ".join(f"{k.split(':', 1)[1]} {v:.1f} s" for v, k in busy)

    for rounds in (toy.data.ROUNDS, 20):
        @jax.jit
        def sample_only(keys, t0, rounds=rounds):
            src = toy.OnlineFeatures(jnp.float32(P), B, N, rounds=rounds)

            def body(c, t):
                x = jax.lax.map(jax.vmap(lambda k: src.sample_t(k, t)[0]), keys.reshape(-1, block, 2))
                return c + x.sum(), None
            return jax.lax.scan(body, jnp.float32(0), t0 + jnp.arange(S))[0]

        rows[f"  sampler alone (Threefry-2x32-{rounds}, same blocks)"] = (
            median_time(lambda: sample_only(keys, jnp.int32(0)), R) / S, 0.0, CPU_TIMES[0] / S)
    rows["loop of the jitted per-instance step (above)"] = (
        float(np.median(wall[:, 1])), loop_compile, float(np.median(cpu[:, 1])))
    for name, (sec, comp) in two_devices(S, R).items():
        rows[f"train_toys, {name} (XLA host device count 2)"] = (sec, comp, float("nan"))

    base, base_cpu = rows["one program"][0], rows["one program"][2]
    print(f"\n{'variant (ratios against one program)':62s} {'ms/step':>8s} {'ratio':>6s} {'CPU ms':>8s} "
          f"{'ratio':>6s} {'compile s':>9s}")
    for name, (sec, comp, cpu_) in rows.items():
        print(f"{name:62s} {sec * 1e3:8.2f} {sec / base:6.2f} {cpu_ * 1e3:8.2f} {cpu_ / base_cpu:6.2f} {comp:9.2f}")
    print(f"one program: CPU time of its busiest threads over the timed calls: {threads}")

    c = lambda name: rows[name][2] * 1e3  # noqa: E731
    sampling = base_cpu * 1e3 - c("  no sampling (the same batch every step)")
    fwd = c("  sampling, forward and loss only (no gradient, no update)") - sampling
    adamw = base_cpu * 1e3 - c("  closed-form gradient, plain SGD instead of AdamW")
    grad = base_cpu * 1e3 - sampling - fwd - adamw
    print(f"\nwhere the time goes (CPU ms per step, by ablation; total {base_cpu * 1e3:.2f}):")
    for name, v in (("random numbers and sampling", sampling), ("forward and loss", fwd),
                    ("closed-form gradient", grad), ("AdamW update", adamw)):
        print(f"  {name:30s} {v:7.2f} ms  {v / (base_cpu * 1e3):6.1%}")
    shares = profile_shares(compiled, a)
    if shares:
        print("XLA profiler, share of the traced op time by kind (one call):")
        for k, v in shares.items():
            print(f"  {k:40s} {v:6.1%}")

    # Roofline of one step: XLA's cost analysis of the vmapped step.
    step = jax.jit(jax.vmap(toy.make_instance_step(cfg, opt), in_axes=(0, 0, 0, 0, 0, None)))
    cost = step.lower(*state, sources, importance, keys, jnp.int32(0)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, nbytes = float(cost.get("flops", 0)), float(cost.get("bytes accessed", 0))
    bw, bw_cache, rate = copy_bandwidth(R), copy_bandwidth(R, 2**16, 2000), matmul_rate(R)
    t_mem, t_cache, t_flop = nbytes / bw, nbytes / bw_cache, flops / rate
    mm_flops = I * B * 2 * 5 * N * M  # the five n x m contractions per example (fwd 2, bwd 3)
    print(f"\nroofline: {flops / 1e6:.0f} MFLOP (of which {mm_flops / 1e6:.0f} in the contractions) and "
          f"{nbytes / 1e6:.0f} MB per step (XLA cost analysis of the plain vmap);\n  copy {bw / 1e9:.1f} GB/s "
          f"(256 MiB), {bw_cache / 1e9:.1f} GB/s (256 KiB, in cache), matmul {rate / 1e9:.1f} GFLOP/s (2048^2)")
    print(f"  bytes / DRAM copy rate = {t_mem * 1e3:.2f} ms, bytes / cache copy rate = {t_cache * 1e3:.2f} ms, "
          f"FLOPs / matmul rate = {t_flop * 1e3:.2f} ms (contractions only {mm_flops / rate * 1e3:.2f} ms)")
    print(f"  one-program step {base * 1e3:.2f} ms wall, {base_cpu * 1e3:.2f} ms CPU = "
          f"{base / max(t_cache, t_flop):.1f}x / {base_cpu / max(t_cache, t_flop):.1f}x the in-cache roofline "
          f"max(bytes / cache rate, FLOPs / matmul rate)")


if __name__ == "__main__":
    main()
