"""Sparse latent activations: each token's strongest features, the form the analysis reads.

An SAE's activations are mostly zero (tens active out of thousands), so per-token
statistics need only the active entries. For each token ``t``::

    val[t], idx[t] = top_L(a[t])          the L = max_active strongest latents (val 0: inactive)
    n_active[t]    = |{s : a[t, s] > 0}|   (n_active > L: the token is *truncated*)

A TopK SAE is encoded sparsely from the start: its activation *is* ``relu`` of the ``k``
largest pre-activations, so ``top_k(hidden_pre(x), k)`` gives exactly ``encode(x)``'s
non-zero entries without building the dense ``[tokens, d_sae]`` array. Other
architectures are encoded densely, then reduced with one ``lax.top_k``; their dense
activations are returned too, for statistics that must stay exact when tokens are
truncated (density).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def sparse_encode(sae, x: Float[Array, "n d_in"], max_active: int
                  ) -> tuple[Float[Array, "n l"], Int[Array, "n l"], Int[Array, " n"], Array | None]:
    """``(val, idx, n_active, dense)``: the ``L = min(max_active, d_sae)`` strongest latents
    per row, descending (``val`` 0 where fewer are active), the true number of active
    latents, and the dense activations (``None`` for a TopK SAE, which never builds them)."""
    cfg = sae.cfg
    L = min(max_active, cfg.d_sae)
    if cfg.architecture == "topk":
        values, idx = jax.lax.top_k(sae.hidden_pre(x), cfg.k)
        values = jax.nn.relu(values).astype(jnp.float32)
        n_active = (values > 0).sum(-1).astype(jnp.int32)
        return values[:, :L], idx[:, :L].astype(jnp.int32), n_active, None
    dense = sae.encode(x).astype(jnp.float32)
    values, idx = jax.lax.top_k(dense, L)
    return values, idx.astype(jnp.int32), (dense > 0).sum(-1).astype(jnp.int32), dense
