"""Nearest features by decoder direction: which features write (almost) the same thing.

Feature ``i`` writes the direction ``W_dec[i]`` into the model. Two features whose decoder
rows point the same way are near-duplicates, splits of one concept, or related concepts
(feature splitting across dictionary sizes, Bricken et al. 2023)::

    cos[i, j] = W_dec[i] . W_dec[j] / (||W_dec[i]|| ||W_dec[j]||)        (j != i)

and feature ``i``'s neighbours are the ``k`` largest ``cos[i, :]``. The ``[d_sae, d_sae]``
similarity matrix is never held whole: rows are computed in blocks, each followed by a
``lax.top_k`` (one compiled program for every block).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError


@eqx.filter_jit
def _block(unit: Float[Array, "s d"], rows: Array, k: int) -> tuple[Array, Array]:
    cos = unit[rows] @ unit.T                                          # [block, s]
    cos = jnp.where(jnp.arange(unit.shape[0])[None, :] == rows[:, None], -jnp.inf, cos)
    values, index = jax.lax.top_k(cos, k)
    return index, values


def unit_rows(W_dec: Float[Array, "s d"]) -> Float[Array, "s d"]:
    """Decoder rows scaled to unit norm (a dead, all-zero row stays zero)."""
    W = jnp.asarray(W_dec, jnp.float32)
    return W / jnp.maximum(jnp.linalg.norm(W, axis=-1, keepdims=True), 1e-12)


def nearest_features(sae, k: int = 8, block: int = 1024) -> dict[str, np.ndarray]:
    """Per feature, the ``k`` other features with the most similar decoder direction.

    Returns ``{"index": [d_sae, k], "cosine": [d_sae, k]}`` (descending cosine).
    """
    W_dec = sae.W_dec if hasattr(sae, "W_dec") else sae
    s = W_dec.shape[0]
    if s < 2:
        raise ConfigError("Nearest features need at least two features.")
    k = min(k, s - 1)
    unit = unit_rows(W_dec)
    block = min(block, s)
    index, cosine = [], []
    for lo in range(0, s, block):
        rows = np.minimum(np.arange(lo, lo + block), s - 1)
        i, c = _block(unit, jnp.asarray(rows), k)
        n = min(block, s - lo)
        index.append(np.asarray(i)[:n])
        cosine.append(np.asarray(c)[:n])
    return {"index": np.concatenate(index).astype(np.int32), "cosine": np.concatenate(cosine)}
