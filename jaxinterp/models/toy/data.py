"""Sparse synthetic features for toy models: importance, sparsity, and the batches.

Feature ``i`` is present with probability ``p = 1 - S`` (the *feature probability*;
``S`` is the sparsity) and then takes a value uniform in [0, 1] (in [-1, 1] for signed
inputs), independently of the others; otherwise it is 0. Its *importance* ``I_i`` weights
its error in the loss; the papers use geometric importance ``I_i = r^i``.

Sampling draws one 32-bit random word per feature and reads both the mask and the value
from it: with ``u`` uniform in [0, 1], ``u <= p`` has probability ``p``, and given that
event ``u / p`` is uniform in [0, 1]. So ``x = where(u <= p, u / p, 0)`` has exactly the
distribution above at half the random bits of drawing mask and value separately (random
number generation is a quarter to a third of a toy training step on a CPU). Because ``u`` is built from
the integer bits (``bits * 2^-32``, exact for small ``bits``), values stay finely resolved
even at ``p = 1e-4``.

The words come from the Threefry-2x32 block cipher in counter mode, written out unrolled
(:func:`cipher_words`): XLA:CPU fuses it into one loop, about 5x faster than
``jax.random.bits``, whose CPU lowering runs the rounds as a loop over whole arrays, and
unlike the faster Philox keys of this JAX version it compiles in sharded programs (its
``mulhi`` cannot be partitioned). The trainer's per-step batches use :data:`ROUNDS` = 13
rounds, not the 20 of ``jax.random``: Salmon et al. (2011, "Parallel Random Numbers: As
Easy as 1, 2, 3") report 13 rounds as enough for Threefry-2x32 to pass TestU01's BigCrush
and use 20 as a safety margin (quoted, not re-run here). 13 rounds cut the sampler's
cost by a third (``experiments/benchmarks/RESULTS_toy.md``). The sampled distribution is
tested statistically (``tests/models/test_toy.py``: presence rates, Kolmogorov-Smirnov
and chi-square tests of the values, independence across features, examples, steps and
instances, a serial test of consecutive words; those tests fail at 8 rounds and fewer).
One-off draws (:func:`sample_features`: fixed training sets, evaluation batches) keep 20
rounds; ``rounds=20`` is ``jax.extend.random.threefry_2x32`` bit for bit. The counter is
``(entry, stream)``: :func:`sample_features` keys it with two words drawn from the
caller's key (stream 0); the trainer draws each instance's two key words once and passes
the step as the stream, so a step costs no key derivation at all.

Hyper-parameters are checked on the host before anything is traced: probabilities must lie
in [0, 1], importances must be finite, non-negative and one per feature.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.models.toy.model import check_positive_int

_TWO_TO_MINUS_32 = 2.0**-32


def geometric_importance(n_features: int, decay: float) -> np.ndarray:
    """``decay ** arange(n_features)``: feature 0 the most important (``decay=1``: uniform)."""
    check_positive_int("n_features", n_features)
    decay = float(decay)
    if not np.isfinite(decay) or decay <= 0:
        raise ConfigError(f"importance decay must be a finite number > 0, got {decay!r}.")
    return (decay ** np.arange(n_features)).astype(np.float32)


def check_probabilities(p: object, name: str = "feature_probability") -> np.ndarray:
    """``p`` as a float32 array, or a :class:`ConfigError` if any entry is outside [0, 1]."""
    arr = np.asarray(p, dtype=np.float64)
    bad = ~((arr >= 0) & (arr <= 1))  # NaN fails both comparisons
    if bad.any():
        value = float(arr[bad].ravel()[0])
        raise ConfigError(f"{name} must lie in [0, 1] (a probability; sparsity S = 1 - p), "
                          f"got {value!r}.")
    return arr.astype(np.float32)


def check_importance(importance: object, n_features: int, n_instances: int | None = None) -> np.ndarray:
    """Importance as ``[n_features]`` or ``[n_instances, n_features]`` float32, checked."""
    arr = np.asarray(importance, dtype=np.float64)
    ok_shapes = [(n_features,)] + ([(n_instances, n_features)] if n_instances is not None else [])
    if arr.shape not in ok_shapes:
        want = " or ".join(str(list(s)) for s in ok_shapes)
        raise ShapeError(f"importance must have shape {want} (one weight per feature), "
                         f"got {list(arr.shape)}.")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ConfigError("importance must be finite and >= 0 for every feature, got "
                          f"{float(arr[~(np.isfinite(arr) & (arr >= 0))].ravel()[0])!r}.")
    return arr.astype(np.float32)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


ROUNDS = 13  # Threefry-2x32 rounds of the data sampler (see the module docstring)


def threefry2x32(key: tuple, x0: jax.Array, x1: jax.Array, rounds: int = ROUNDS) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-``rounds`` (Random123's definition: a key injection after every fourth
    round) of the counter pair ``(x0, x1)`` under the two-word ``key``, unrolled so that XLA
    fuses it. ``rounds=20`` is ``jax.extend.random.threefry_2x32``."""
    k0, k1 = key
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for j in range(rounds):
        r = _ROTATIONS[(j // 4) % 2][j % 4]
        x0 = x0 + x1
        x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
        x1 = x1 ^ x0
        if j % 4 == 3:  # key injection after every fourth round (Random123)
            i = j // 4
            x0 = x0 + ks[(i + 1) % 3]
            x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def random_words(key: PRNGKeyArray, shape: tuple[int, ...]) -> jax.Array:
    """``uint32`` random words of ``shape``: :func:`cipher_words` keyed by two words drawn
    from ``key`` with its own impl, stream 0, at ``jax.random``'s 20 rounds (one-off draws:
    fixed training sets and evaluation batches are not the hot loop)."""
    return cipher_words(jax.random.bits(key, (2,), jnp.uint32), shape, rounds=20)


def cipher_words(key_words: jax.Array, shape: tuple[int, ...], stream: jax.Array | int = 0,
                 rounds: int = ROUNDS) -> jax.Array:
    """Threefry-2x32-``rounds`` in counter mode: word ``i`` is the first output for counter ``(i,
    stream)`` under the two-word key ``key_words`` (``uint32[2]``). A trainer passes the
    step as ``stream``, so each step reads fresh words with no per-step key derivation.
    (One output per counter: a fused kernel computes each output element's rounds on its
    own, so using both words would not save work, and this lets the sampler fuse.)"""
    n = int(np.prod(shape))
    if n >= 2**32:
        raise ShapeError(f"cipher_words draws at most 2^32 words per key and stream, asked for {n}.")
    counter = jax.lax.iota(jnp.uint32, n).reshape(shape)
    hi = jnp.broadcast_to(jnp.asarray(stream).astype(jnp.uint32), counter.shape)
    return threefry2x32((key_words[0], key_words[1]), counter, hi, rounds)[0]


def features_from_words(words: jax.Array, feature_probability: Float[Array, ""] | float,
                        *, signed: bool = False) -> jax.Array:
    """Sparse feature values from uniform ``uint32`` words, one word per entry: present
    when ``u <= p`` (``u = words / 2^32``), then ``u / p`` (see the module docstring)."""
    u = words.astype(jnp.float32) * _TWO_TO_MINUS_32
    p = jnp.asarray(feature_probability, jnp.float32)
    value = u / jnp.maximum(p, jnp.float32(1e-30))
    if signed:
        value = 2.0 * value - 1.0
    # Materialise the batch once: left alone, XLA fuses the generator into every consumer
    # of x and runs its rounds again in each.
    return jax.lax.optimization_barrier(jnp.where(u <= p, value, 0.0))


def sample_features(
    key: PRNGKeyArray,
    feature_probability: Float[Array, ""] | float,
    batch: int,
    n_features: int,
    *,
    signed: bool = False,
) -> Float[Array, "batch feature"]:
    """A batch of sparse features: each present with probability ``p``, then uniform in
    [0, 1] (``signed``: [-1, 1]). One random word per entry (see the module docstring)."""
    return features_from_words(random_words(key, (batch, n_features)), feature_probability,
                               signed=signed)


def sample_features_two_draws(
    key: PRNGKeyArray, feature_probability: Float[Array, ""] | float, batch: int, n_features: int,
    *, signed: bool = False,
) -> Float[Array, "batch feature"]:
    """The textbook sampler (a mask draw and a value draw): the reference for tests and the
    benchmark; same distribution as :func:`sample_features`, twice the random bits."""
    k_mask, k_value = jax.random.split(key)
    value = jax.random.uniform(k_value, (batch, n_features))
    if signed:
        value = 2.0 * value - 1.0
    return jnp.where(jax.random.uniform(k_mask, (batch, n_features)) < feature_probability, value, 0.0)


class OnlineFeatures(eqx.Module):
    """A fresh batch every step, drawn on the device (the superposition experiments)."""

    feature_probability: Float[Array, ""]
    batch_size: int = eqx.field(static=True)
    n_features: int = eqx.field(static=True)
    signed: bool = eqx.field(static=True, default=False)
    rounds: int = eqx.field(static=True, default=ROUNDS)  # of the trainer's Threefry
    # The step's reported loss is measured on the first ``loss_examples`` examples of its
    # batch (0: all); the gradient always uses the whole batch (see ``toy.step``).
    loss_examples: int = eqx.field(static=True, default=0)

    def sample(self, key: PRNGKeyArray) -> tuple[Float[Array, "batch feature"], None]:
        x = sample_features(key, self.feature_probability, self.batch_size, self.n_features,
                            signed=self.signed)
        return x, None

    def sample_t(self, key_words: jax.Array, step: jax.Array) -> tuple[Float[Array, "feature batch"], None]:
        """The trainer's batch of ``step``, feature-major (``[n_features, batch]``), from
        the instance's two key words: :func:`cipher_words` with the step as its stream."""
        words = cipher_words(key_words, (self.n_features, self.batch_size), step, self.rounds)
        return features_from_words(words, self.feature_probability, signed=self.signed), None


class FixedDataset(eqx.Module):
    """The same training set at every step, full batch (the double-descent runs).

    ``weights`` marks real examples (1) and padding (0), so instances with training sets of
    different sizes ``T`` share one array shape and train as one program.
    """

    x: Float[Array, "batch feature"]
    weights: Float[Array, " batch"]

    def sample(self, key: PRNGKeyArray) -> tuple[Float[Array, "batch feature"], Float[Array, " batch"]]:
        del key
        return self.x, self.weights

    def sample_t(self, key_words: jax.Array, step: jax.Array) -> tuple[Float[Array, "feature batch"], Float[Array, " batch"]]:
        """The training set, feature-major (``[n_features, batch]``), and its weights."""
        del key_words, step
        return self.x.T, self.weights


def fixed_datasets(
    key: PRNGKeyArray, feature_probability: np.ndarray, sizes: np.ndarray, n_features: int,
    *, signed: bool = False,
) -> FixedDataset:
    """One training set per instance, ``sizes[i]`` examples each, padded to the largest.

    Instance ``i`` draws from ``fold_in(key, i)``, so its set does not depend on the others.
    """
    p = check_probabilities(feature_probability)
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.shape != p.shape:
        raise ShapeError(f"sizes {list(sizes.shape)} and feature_probability {list(p.shape)} "
                         "must both be one value per instance.")
    for s in sizes:
        check_positive_int("training set size T", int(s))
    t_max = int(sizes.max())
    x = np.asarray(_sample_sets(key, jnp.asarray(p), t_max, n_features, signed))
    weights = (np.arange(t_max)[None, :] < sizes[:, None]).astype(np.float32)
    return FixedDataset(x * weights[..., None], weights)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _sample_sets(key, p, t_max, n_features, signed):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(p.shape[0]))
    return jax.vmap(lambda k, q: sample_features(k, q, t_max, n_features, signed=signed))(keys, p)
