"""Co-occurring features: how often two features fire on the same token.

With ``f_t`` the set of features active on token ``t``, the co-occurrence counts are

    C[s, s'] = |{t : s in f_t and s' in f_t}|          (C[s, s] = tokens where s fires)
    J[s, s'] = C[s, s'] / (C[s, s] + C[s', s'] - C[s, s'])      (Jaccard similarity)

and a feature's co-occurring features are the ``k`` others with the largest ``J`` (raw
counts favour dense features; Jaccard asks how much the two firing sets overlap).

Each token contributes the pairs among its ``max_active`` strongest features (sparse
input, see :func:`jaxinterp.features.analysis.analyze_features`), one scatter-add of
``tokens x max_active**2`` entries per chunk into the dense ``[d_sae, d_sae]`` count matrix
(``4 d_sae**2`` bytes: 1 GiB at 16k features). Counts are exact whenever no token has
more than ``max_active`` active features (always, for a TopK SAE with ``k <= max_active``);
the analysis reports how many tokens had more.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

MAX_FEATURES = 32768  # the count matrix is 4 GiB here; larger dictionaries skip co-occurrence


class Cooccurrence(eqx.Module):
    counts: Int[Array, "s s"]


def init_cooccurrence(d_sae: int) -> Cooccurrence:
    return Cooccurrence(jnp.zeros((d_sae, d_sae), jnp.int32))


def add_tokens(c: Cooccurrence, feature: Int[Array, "n l"], active: Bool[Array, "n l"]) -> Cooccurrence:
    """Adds every pair of active features of each token (``feature[t]``, ``active[t]``)."""
    both = (active[:, :, None] & active[:, None, :]).astype(jnp.int32)
    rows = jnp.broadcast_to(feature[:, :, None], both.shape)
    cols = jnp.broadcast_to(feature[:, None, :], both.shape)
    return Cooccurrence(c.counts.at[rows.reshape(-1), cols.reshape(-1)].add(both.reshape(-1)))


@eqx.filter_jit
def _block_top(counts: Array, diag: Array, rows: Array, k: int) -> tuple[Array, Array, Array]:
    own = diag[rows][:, None]
    union = own + diag[None, :] - counts
    jaccard = jnp.where(union > 0, counts / jnp.maximum(union, 1), 0.0)
    jaccard = jnp.where(jnp.arange(diag.shape[0])[None, :] == rows[:, None], -1.0, jaccard)
    values, idx = jax.lax.top_k(jaccard, k)
    count = jnp.take_along_axis(counts, idx, 1)
    return jnp.where(count > 0, idx, -1), jnp.where(count > 0, values, 0.0), count


def top_cooccurring(c: Cooccurrence, k: int = 8, block: int = 1024) -> dict[str, np.ndarray]:
    """Per feature, the ``k`` features with the largest Jaccard similarity.

    Returns ``{"index" [s, k] (-1 where none), "jaccard" [s, k], "count" [s, k]}``,
    computed in blocks of rows (one compiled program).
    """
    s = c.counts.shape[0]
    k = min(k, max(s - 1, 1))
    block = min(block, s)
    diag = jnp.diagonal(c.counts)
    out = {"index": [], "jaccard": [], "count": []}
    for lo in range(0, s, block):
        rows = np.minimum(np.arange(lo, lo + block), s - 1)   # the last block repeats its last row
        idx, jac, cnt = _block_top(c.counts[rows], diag, jnp.asarray(rows), k)
        n = min(block, s - lo)
        for name, v in (("index", idx), ("jaccard", jac), ("count", cnt)):
            out[name].append(np.asarray(v)[:n])
    return {name: np.concatenate(v) for name, v in out.items()}
