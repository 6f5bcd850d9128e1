"""The user's first minute: `import jaxinterp` beside `import jax`, and a first init_transformer.

Each measurement runs in a fresh Python process (imports and first compiles are one-off
costs that a warm process hides), repeated, and the median is reported:

    python experiments/benchmarks/bench_first_minute.py [--repeats 5]

Prints one JSON object: seconds for `import jax`, the extra seconds `import jaxinterp`
adds, and `init_transformer` of a 2-layer d_model 64 model (first call, compile included),
plus the ratio of the jaxinterp import to the jax import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = r"""
import time, json
t0 = time.perf_counter(); import jax; t1 = time.perf_counter()
import jaxinterp as ji; t2 = time.perf_counter()
cfg = ji.gpt2_config(d_model=64, n_layers=2, n_heads=4, d_vocab=256, n_ctx=64)
jax.block_until_ready(ji.init_transformer(cfg, jax.random.key(0))); t3 = time.perf_counter()
print(json.dumps({"import_jax": t1 - t0, "import_jaxinterp_extra": t2 - t1, "init_transformer": t3 - t2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["jaxinterp_over_jax"] = med["import_jaxinterp_extra"] / med["import_jax"]
    med["load_average"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 3) for k, v in med.items()}))


if __name__ == "__main__":
    main()
