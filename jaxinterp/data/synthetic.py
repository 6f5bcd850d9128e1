"""Synthetic data for toy experiments: pure JAX functions of an explicit PRNG key.

* :func:`repeated_tokens`: a uniformly random token sequence followed by an exact copy.
  On the second half a model can only beat chance by copying from the first, which is
  what induction heads do (Olsson et al., 2022): the in-context loss on the repeat is the
  standard induction-head measurement, and the attention of position ``i`` to
  ``i - seq_len + 1`` is the induction stripe.
* :func:`sparse_features`: the toy-models-of-superposition input distribution (Elhage et
  al., 2022): each feature is independently present with probability ``p`` (its
  "feature probability"; sparsity is ``1 - p``) and, when present, takes a value drawn
  from U[0, 1]; otherwise it is 0. Several model *instances* can be trained at once, each
  with its own ``p``.
* :func:`feature_importance`: the geometric importance weights ``decay ** i`` that the
  toy models' reconstruction loss uses.

Every function is deterministic given its key, and shapes are static Python ints, so all
of them can sit inside ``jax.jit`` with the sizes marked static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from jaxinterp.errors import ConfigError


def _positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}.")


def repeated_tokens(
    key: PRNGKeyArray,
    batch: int,
    seq_len: int,
    d_vocab: int,
    bos: int | None = None,
) -> Int[Array, "batch pos"]:
    """Random tokens repeated once: ``[bos,] t_1 .. t_n, t_1 .. t_n``.

    Args:
        key: PRNG key.
        batch: number of sequences.
        seq_len: length ``n`` of the random half.
        d_vocab: tokens are drawn uniformly from ``[0, d_vocab)``, excluding ``bos``.
        bos: a token id to put at position 0, or ``None`` for no BOS.

    Returns:
        int32 tokens of shape ``[batch, 2 * seq_len]``, or ``[batch, 2 * seq_len + 1]``
        with a BOS; then ``tokens[:, 1 + i] == tokens[:, 1 + seq_len + i]``.
    """
    _positive(batch=batch, seq_len=seq_len, d_vocab=d_vocab)
    excluded = bos is not None and 0 <= bos < d_vocab
    if excluded and d_vocab < 2:
        raise ConfigError("d_vocab must be at least 2 when the BOS token is in the vocabulary.")
    half = jax.random.randint(key, (batch, seq_len), 0, d_vocab - int(excluded))  # (B, n)
    if excluded:
        half = half + (half >= bos).astype(half.dtype)  # skip the BOS id
    tokens = jnp.concatenate([half, half], axis=1)  # (B, 2n)
    if bos is not None:
        tokens = jnp.concatenate([jnp.full((batch, 1), bos, dtype=tokens.dtype), tokens], axis=1)
    return tokens.astype(jnp.int32)


def sparse_features(
    key: PRNGKeyArray,
    batch: int,
    n_features: int,
    feature_probability: float | ArrayLike,
    n_instances: int | None = None,
) -> Float[Array, "batch *instances features"]:
    """Sparse non-negative feature vectors: each feature present with probability ``p``.

    Args:
        key: PRNG key.
        batch: number of samples.
        n_features: features per sample.
        feature_probability: ``p``, a scalar or an array that broadcasts against
            ``[n_features]`` (or, with instances, ``[n_instances]`` for one ``p`` per
            instance, or ``[n_instances, n_features]``).
        n_instances: train-several-models-at-once axis; ``None`` for no such axis.

    Returns:
        float32 ``[batch, n_features]``, or ``[batch, n_instances, n_features]``: where a
        feature is present its value is U[0, 1], elsewhere 0.
    """
    _positive(batch=batch, n_features=n_features)
    if n_instances is not None:
        _positive(n_instances=n_instances)
    shape = (batch, n_features) if n_instances is None else (batch, n_instances, n_features)
    p = jnp.asarray(feature_probability, dtype=jnp.float32)
    if n_instances is not None and p.ndim == 1 and p.shape[0] == n_instances != n_features:
        p = p[:, None]  # one probability per instance
    if n_instances is not None and p.ndim == 1 and p.shape[0] == n_instances == n_features:
        raise ConfigError(
            "feature_probability of shape [n] is ambiguous when n_instances == n_features; "
            "pass shape [n_instances, 1] or [1, n_features]."
        )
    try:
        p = jnp.broadcast_to(p, shape)
    except ValueError as e:
        raise ConfigError(
            f"feature_probability of shape {p.shape} does not fit {shape[1:]}."
        ) from e
    try:
        in_range = bool(np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1)))
    except jax.errors.TracerArrayConversionError:  # under jit: cannot check values
        in_range = True
    if not in_range:
        raise ConfigError("feature_probability must lie in [0, 1].")
    k_present, k_value = jax.random.split(key)
    present = jax.random.uniform(k_present, shape) < p
    values = jax.random.uniform(k_value, shape)
    return jnp.where(present, values, 0.0)


def feature_importance(n_features: int, decay: float = 0.9) -> Float[Array, " features"]:
    """Geometric importance weights ``decay ** arange(n_features)`` (1 for the first)."""
    _positive(n_features=n_features)
    return jnp.asarray(decay, jnp.float32) ** jnp.arange(n_features, dtype=jnp.float32)
