"""Benchmark: visualising 64 units in one vmapped program against 64 sequential optimisations.

Both sides optimise the same 64 targets (the centre neuron of each of 64 channels of a
conv block, decorrelated Fourier parameterisation, random jitter/scale/rotation, total
variation) with the same keys, in one process:

* **vmapped**: ``visualize(..., vectorize=True)``: one compiled program, ``jax.vmap`` over
  the target axis of the objective, each target a ``lax.scan`` over steps;
* **sequential**: ``visualize(..., vectorize=False)``: the single-target program (compiled
  once) called 64 times from Python.

"First" is the first call after ``jax.clear_caches()`` (compile included); "steady" is the
median of ``--repeats`` later calls (the compiled programs are cached across calls with
equal settings). Both return the same images (max difference printed). CPU time of the
process is printed too: on a shared machine it is steadier than wall time.

Run:  python experiments/benchmarks/bench_featurevis.py [--steps 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from jaxinterp.features import neuron, visualize
from jaxinterp.models.conv import ConvConfig, init_conv


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    cfg = ConvConfig(image_size=args.image_size, channels=(16, args.units), kernel_sizes=(5, 5), pool=(True, False),
                     n_classes=10)
    model = init_conv(cfg, jax.random.key(0))
    side = cfg.map_size(1)
    objective = neuron("blocks.1.hook_pre", np.arange(args.units), (side // 2, side // 2), activation="relu")
    print(f"load average {os.getloadavg()}; {args.units} units, {args.steps} steps, "
          f"{args.image_size}x{args.image_size} images, jax {jax.__version__} on {jax.devices()[0].platform}")
    results = {}
    for name, vectorize in (("vmapped", True), ("sequential", False)):
        jax.clear_caches()

        def run(vectorize=vectorize):
            return visualize(model, objective, steps=args.steps, tv_weight=0.05, vectorize=vectorize)

        out, first, first_cpu = timed(run)
        steady = [timed(run)[1:] for _ in range(args.repeats)]
        results[name] = dict(out=out, first=first, first_cpu=first_cpu,
                             steady=float(np.median([s[0] for s in steady])),
                             steady_cpu=float(np.median([s[1] for s in steady])))
        r = results[name]
        print(f"{name:>10}: first {r['first']:.2f} s (cpu {r['first_cpu']:.2f} s), steady {r['steady']:.2f} s "
              f"(cpu {r['steady_cpu']:.2f} s)")
    v, s = results["vmapped"], results["sequential"]
    diff = float(np.abs(v["out"].images - s["out"].images).max())
    print(f"first-call ratio (sequential / vmapped): {s['first'] / v['first']:.2f}x wall, "
          f"{s['first_cpu'] / v['first_cpu']:.2f}x cpu")
    print(f"steady ratio (sequential / vmapped):     {s['steady'] / v['steady']:.2f}x wall, "
          f"{s['steady_cpu'] / v['steady_cpu']:.2f}x cpu")
    print(f"max |vmapped - sequential| image difference: {diff:.2e}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
