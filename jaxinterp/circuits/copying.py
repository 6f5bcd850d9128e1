"""OV copying scores: does attending to a token raise that token's own logit?

A head copies when its full OV circuit ``W_E W_V W_O W_U`` (attended token -> logits,
``d_vocab x d_vocab``) maps each token mostly onto itself, i.e. acts like a positive
multiple of the identity. Elhage et al. (2021) read that off its eigenvalues: a copying
head's are mostly positive, and

    eigenvalue score = sum_i lambda_i / sum_i |lambda_i|      (in [-1, 1]; 1 = pure copying)

The non-zero eigenvalues of ``(W_E W_V)(W_O W_U)`` are those of the ``d_head x d_head``
matrix ``W_O (W_U W_E) W_V``; ``W_U W_E`` (``d_model x d_model``) is formed once for all
heads. Fold layer norms in first (``ji.process_weights``) to include their weights.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex

from jaxinterp.circuits.weights import attention_weights
from jaxinterp.errors import ConfigError
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

STATISTICS = ("eigenvalue_score", "positive_fraction")


@eqx.filter_jit
def ov_eigenvalues(model: HookedTransformer) -> Complex[Array, "layer head d_head"]:
    """The ``d_head`` eigenvalues of every head's full OV circuit ``W_E W_V W_O W_U``
    (the other ``d_vocab - d_head`` are zero). CPU only (``jnp.linalg.eigvals``)."""
    _, _, W_V, W_O = attention_weights(model)
    f32 = jnp.float32
    middle = model.unembed_matrix.astype(f32) @ model.W_E.astype(f32)  # W_U W_E: [d, d]
    small = W_O.astype(f32) @ middle @ W_V.astype(f32)  # [l, h, e, e]
    return jnp.linalg.eigvals(small)


def ov_copying_scores(model: HookedTransformer, statistic: str = "eigenvalue_score") -> NamedArray:
    """Per-head copying score from the full OV circuit's eigenvalues ``[layer, head]``.

    ``statistic``: ``"eigenvalue_score"`` (``sum lambda / sum |lambda|``, real part) or
    ``"positive_fraction"`` (the fraction of the ``d_head`` eigenvalues with positive real part).
    """
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    eig = ov_eigenvalues(model)
    if statistic == "eigenvalue_score":
        values = eig.sum(-1).real / jnp.maximum(jnp.abs(eig).sum(-1), 1e-30)
    else:
        values = (eig.real > 0).mean(-1)
    return NamedArray(values, ("layer", "head"), attrs={"statistic": statistic})
