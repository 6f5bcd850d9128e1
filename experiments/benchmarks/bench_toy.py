"""Benchmark: many toy models as one program, against a Python loop of a jitted step.

256 ReLU output models (n=20 features, m=5 hidden, batch 1024, feature probability 0.1,
importance 0.7^i), AdamW. In one process it times (median of repeats, steady state after
compilation, whose time is printed separately):

* ``one program``: :func:`jaxinterp.models.toy.make_chunk`, the trainer's program:
  ``scan`` over steps of a ``vmap`` over blocks of instances (the CPU default block), with
  on-device data from the fused Threefry sampler;
* ``loop``: the same per-instance step (:func:`make_instance_step`), ``jax.jit``-ed once
  and called for each instance at each step from Python (one dispatch per instance-step);
* where the time goes: the step without sampling (a fixed batch), the sampler alone, the
  plain ``vmap`` over all 256 instances (one block), and the sampler variants that were
  measured before choosing this one (``jax.random`` threefry and philox bits, and the
  textbook two draws per entry);
* a roofline for the one-program step: bytes (XLA's cost analysis of one vmapped step)
  over a measured copy bandwidth, and FLOPs over a measured matmul rate.

Run:  python experiments/benchmarks/bench_toy.py [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.models import toy
from jaxinterp.models.toy.train import block_size, make_chunk

I, B, N, M, P = 256, 1024, 20, 5, 0.1


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def setup(train: toy.ToyTrainConfig):
    cfg = toy.ToyConfig(N, M)
    opt = train.optimizer()
    key = jax.random.key(0)
    models = toy.init_toys(cfg, toy.instance_keys(jax.random.fold_in(key, 0), I))
    state = (models, jax.vmap(opt.init)(models))
    keys = toy.instance_keys(jax.random.fold_in(key, 1), I)
    sources = toy.OnlineFeatures(jnp.full((I,), P, jnp.float32), B, N)
    importance = jnp.broadcast_to(jnp.asarray(toy.geometric_importance(N, 0.7)), (I, N))
    return cfg, opt, state, sources, importance, keys


class Sampler(toy.OnlineFeatures):
    """OnlineFeatures with another way of drawing the bits (the alternatives measured)."""

    how: str = eqx.field(static=True, default="two_draws")

    def sample(self, key):
        shape = (self.batch_size, self.n_features)
        if self.how == "two_draws":  # textbook: a mask draw and a value draw, jax.random
            return toy.sample_features_two_draws(key, self.feature_probability, *shape), None
        u = jax.random.bits(key, shape, jnp.uint32).astype(jnp.float32) * 2.0**-32
        return jnp.where(u <= self.feature_probability, u / self.feature_probability, 0.0), None


def one_program(cfg, opt, state, sources, importance, keys, steps, block, impl="threefry2x32"):
    chunk = jax.jit(make_chunk(cfg, opt, steps, (block,), impl))
    args = ((state,), ((sources, importance, jax.random.key_data(keys)),), jnp.int32(0))
    t = time.perf_counter()
    compiled = chunk.lower(*args).compile()
    return compiled, args, time.perf_counter() - t


def loop_step_time(cfg, opt, state, sources, importance, keys, steps, repeats):
    step = jax.jit(toy.make_instance_step(cfg, opt))
    per = [jax.tree.map(lambda a, i=i: a[i], (state, sources, importance, keys)) for i in range(I)]
    states = [p[0] for p in per]
    step_keys = jax.vmap(lambda k: jax.vmap(lambda t: jax.random.fold_in(k, t))(jnp.arange(steps)))(keys)
    step_keys = [[step_keys[i, t] for t in range(steps)] for i in range(I)]
    t = time.perf_counter()
    jax.block_until_ready(step(*states[0], *per[0][1:3], step_keys[0][0]))
    compile_s = time.perf_counter() - t

    def run():
        for t_ in range(steps):
            for i in range(I):
                model, opt_state, _ = step(*states[i], per[i][1], per[i][2], step_keys[i][t_])
                states[i] = (model, opt_state)
        return states

    return median_time(run, repeats) / steps, compile_s


def copy_bandwidth(repeats: int) -> float:
    x = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
    f = jax.jit(lambda a: a * 1.5)
    return 2 * x.nbytes / median_time(lambda: f(x), repeats)


def matmul_rate(repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / median_time(lambda: f(a), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    S, R = args.steps, args.repeats
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    train = toy.ToyTrainConfig(batch_size=B)
    cfg, opt, state, sources, importance, keys = setup(train)
    block = block_size(cfg, train, B, I, "cpu")
    fixed = toy.FixedDataset(toy.sample_features(jax.random.key(5), P, B * I, N).reshape(I, B, N),
                             jnp.ones((I, B)))

    rows = {}
    for name, src, blk in (("one program", sources, block), ("one program, no sampling", fixed, block),
                           ("plain vmap over 256 (one block)", sources, I)):
        compiled, a, comp = one_program(cfg, opt, state, src, importance, keys, S, blk)
        rows[name] = (median_time(lambda c=compiled, a=a: c(*a), R) / S, comp)
    for how in ("two_draws", "bits"):
        for impl in (("threefry2x32", "philox2x32") if how == "bits" else ("threefry2x32",)):
            src = Sampler(sources.feature_probability, B, N, False, how)
            ks = toy.instance_keys(jax.random.key(1, impl=impl), I)
            compiled, a, comp = one_program(cfg, opt, state, src, importance, ks, S, block, impl)
            rows[f"one program, sampler: jax.random {impl} ({how.replace('_', ' ')})"] = (
                median_time(lambda c=compiled, a=a: c(*a), R) / S, comp)

    @jax.jit
    def sample_only(keys, t0):
        def body(c, t):
            x = jax.vmap(lambda k: toy.sample_features(jax.random.fold_in(k, t), P, B, N))(keys)
            return c + x.sum(), None
        return jax.lax.scan(body, jnp.float32(0), t0 + jnp.arange(S))[0]

    rows["sampler alone (fused Threefry, one draw)"] = (
        median_time(lambda: sample_only(keys, jnp.int32(0)), R) / S, 0.0)
    loop_s, loop_compile = loop_step_time(cfg, opt, state, sources, importance, keys, max(2, S // 10), R)
    rows["loop of a jitted per-instance step"] = (loop_s, loop_compile)

    base = rows["one program"][0]
    print(f"\n256 instances, n={N}, m={M}, batch {B}, p={P}; block {block} instances; {S} steps per call")
    print(f"{'variant':62s} {'ms/step':>9s} {'x one program':>14s} {'compile s':>10s}")
    for name, (sec, comp) in rows.items():
        print(f"{name:62s} {sec * 1e3:9.2f} {sec / base:14.2f} {comp:10.2f}")
    print(f"RATIO loop / one program = {loop_s / base:.1f}x")

    # Roofline of one step: XLA's cost analysis of the vmapped step.
    step = jax.jit(jax.vmap(toy.make_instance_step(cfg, opt)))
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    cost = step.lower(*state, sources, importance, step_keys).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, nbytes = float(cost.get("flops", 0)), float(cost.get("bytes accessed", 0))
    bw, rate = copy_bandwidth(R), matmul_rate(R)
    t_mem, t_flop = nbytes / bw, flops / rate
    print(f"\nroofline: {flops / 1e6:.0f} MFLOP and {nbytes / 1e6:.0f} MB per step (XLA cost analysis); "
          f"copy {bw / 1e9:.1f} GB/s, matmul {rate / 1e9:.1f} GFLOP/s")
    print(f"  bytes / bandwidth = {t_mem * 1e3:.2f} ms, FLOPs / matmul rate = {t_flop * 1e3:.2f} ms; "
          f"one-program step {base * 1e3:.2f} ms = {base / max(t_mem, t_flop):.1f}x the roofline")


if __name__ == "__main__":
    main()
