"""The "pairs" composition program and XLA CPU's YNNPACK fusion deadlock (jaxlib 0.10.2).

Compiles ``composition_scores``'s "pairs" program for a 3-layer, d_model-768 model (mode K)
either with the per-program options ``composition_scores`` uses (the default here) or with
XLA's default options (``--xla-defaults``), and runs it once. At the defaults an earlier
form of this program (and main's at 3e5b999) often never finished in a fresh process (every
thread parked on a futex, no CPU used), so run each try in its own process, with a timeout:

    for i in $(seq 10); do timeout 60 python experiments/benchmarks/hang_pairs.py --xla-defaults; echo rc=$?; done
    for i in $(seq 10); do timeout 60 python experiments/benchmarks/hang_pairs.py; echo rc=$?; done

rc=124 is a hang (the program takes about a second). A pure-JAX copy of the same program
(weights from ``jax.random``, no jaxinterp) did not hang in 18 tries, so the trigger needs
more of the process than the program alone; results in RESULTS_circuits.md.
"""

import functools
import sys
import time

import jax

import jaxinterp as ji
from jaxinterp.circuits import composition
from jaxinterp.circuits.weights import attention_weights


def main() -> None:
    model = ji.init_transformer(ji.gpt2_config(n_layers=3, d_vocab=1000, n_ctx=64), jax.random.key(0))
    factors, c2_rows = composition._factors(*attention_weights(model), "K")
    factors = jax.block_until_ready(factors)
    print("model built", flush=True)  # a hang before this line is not the composition program
    defaults = "--xla-defaults" in sys.argv
    static = {"H": model.cfg.n_heads, "c2_rows": c2_rows}
    program = (jax.jit(functools.partial(composition._pairs, **static))
               if defaults else composition._program("pairs", True, **static))
    t = time.perf_counter()
    jax.block_until_ready(program(*factors))
    print(f"{'XLA defaults' if defaults else 'composition options'}: done in {time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
