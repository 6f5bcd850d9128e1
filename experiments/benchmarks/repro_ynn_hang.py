"""Standalone reproducer (pure JAX, no jaxinterp): XLA CPU's YNNPACK fusion deadlocking on the
"pairs" composition program (jaxlib 0.10.2, CPU).

The program: whiten every head's OV and K factors (``eigh`` of ``d_head x d_head`` Grams),
then one ``lax.scan`` over (earlier layer, later layer) tiles, each a ``[768, 768] x [768, 768]``
product squared and summed per ``64 x 64`` block. At XLA's default flags a fresh process
sometimes never finishes (every thread parked on a futex, no CPU used); with the YNNPACK
fusions off, per program (``--ynn-off``) or by ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``,
it did not hang. Run each try in a fresh process, with a timeout:

    for i in $(seq 8); do timeout 120 python experiments/benchmarks/repro_ynn_hang.py; echo rc=$?; done
    for i in $(seq 8); do timeout 120 python experiments/benchmarks/repro_ynn_hang.py --ynn-off; echo rc=$?; done

rc=124 is a hang (the program takes well under a second once compiled). Results in
RESULTS_circuits.md.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

L, H, D, E = 3, 12, 768, 64


def root(g):
    w, v = jnp.linalg.eigh(g)
    return jnp.sqrt(jnp.maximum(w, 0.0))[..., :, None] * jnp.swapaxes(v, -1, -2)


def pairs(W_V, W_O, W_K, W_Q):
    t = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    n = L - 1
    A1, B1 = W_V[:-1].reshape(-1, D, E), W_O[:-1].reshape(-1, E, D)
    A2, B2 = W_K[1:].reshape(-1, D, E), t(W_Q[1:]).reshape(-1, E, D)
    P = (root(t(A1) @ A1) @ B1).reshape(n, H * E, D)
    Qt = (root(B2 @ t(B2)) @ t(A2)).reshape(n, H * E, D)
    src, dst = np.triu_indices(n)

    def tile(_, ak):
        a, k = ak
        x = Qt[k] @ P[a].T
        return None, (x * x).reshape(H, E, H, E).sum((1, 3))

    _, s = lax.scan(tile, None, (jnp.asarray(src), jnp.asarray(dst)))
    num = jnp.zeros((n, n, H, H)).at[src, dst].set(s)
    norm_a = ((t(A1) @ A1) * (B1 @ t(B1))).sum((-1, -2)).reshape(n, H)
    norm_b = ((t(A2) @ A2) * (B2 @ t(B2))).sum((-1, -2)).reshape(n, H)
    out = jnp.sqrt(jnp.maximum(jnp.transpose(num, (0, 3, 1, 2)), 0.0)
                   / (norm_a[:, :, None, None] * norm_b[None, None]))
    return jnp.pad(out, ((0, 1), (0, 0), (1, 0), (0, 0)))


def main() -> None:
    opts = {"xla_cpu_experimental_ynn_fusion_type": ""} if "--ynn-off" in sys.argv else None
    keys = jax.random.split(jax.random.key(0), 4)
    shapes = [(L, H, D, E), (L, H, E, D), (L, H, D, E), (L, H, D, E)]
    # one small compiled program per weight first, as a model's initialisation does
    weights = [jax.jit(lambda k, s=s: 0.02 * jax.random.normal(k, s))(k) for k, s in zip(keys, shapes, strict=True)]
    jax.block_until_ready(weights)
    t = time.perf_counter()
    out = jax.block_until_ready(jax.jit(pairs, compiler_options=opts)(*weights))
    print(f"{'YNN fusions off' if opts else 'default flags'}: done in {time.perf_counter() - t:.2f} s, "
          f"sum {float(out.sum()):.4g}", flush=True)


if __name__ == "__main__":
    main()
