"""Streaming activation histograms whose range doubles: one pass, exact bins, on the device.

A feature's histogram needs a range, and the range (its maximum activation) is only known
at the end of the pass. Here every feature ``s`` keeps ``n_bins`` equal bins over
``[0, R_s)`` with ``R_s = 2**e_s`` a power of two strictly above every activation seen::

    bin(a)  = floor(a * n_bins / R_s)                      (a > 0; zeros are not counted)
    new max m >= R_s:  e_s <- e with m < 2**e  (frexp),  d = e - e_s doublings
    old bins merge:    bin j of the new range = bins [j * 2**d, (j + 1) * 2**d) of the old

Merging is exact because a power-of-two range keeps every coarse bin edge on a fine one:
``floor(floor(a n / R) / 2**d) = floor(a n / (2**d R))``. The final histogram therefore
equals the brute-force ``floor(a * n_bins / R_final)`` counts over all activations, and at
least half of its bins lie below the maximum (``R_final / 2 <= max < R_final``).
Activation intervals for sampled contexts (:mod:`jaxinterp.features.contexts`) use the same
range, ``n_intervals`` of them, so they line up with groups of histogram bins.

Values arrive as sparse ``(feature, value)`` pairs (each token's strongest latents), so a
chunk costs a scatter of ``tokens x max_active`` entries, not ``tokens x d_sae``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.errors import ConfigError

MIN_EXPONENT = -40  # the range of a feature that never fired: 2**-40


class Histogram(eqx.Module):
    """Per-feature counts ``[d_sae, n_bins]`` over ``[0, 2**exponent)``."""

    counts: Int[Array, "s bins"]
    exponent: Int[Array, " s"]

    @property
    def n_bins(self) -> int:
        return self.counts.shape[-1]

    @property
    def range(self) -> Float[Array, " s"]:
        """``R_s = 2**exponent``: every activation seen is below it."""
        return jnp.ldexp(jnp.ones(self.exponent.shape, jnp.float32), self.exponent)


def check_bins(n_bins: int, n_intervals: int = 1) -> None:
    """Errors unless ``n_bins`` is a power of two and a multiple of ``n_intervals``."""
    if n_bins < 2 or n_bins & (n_bins - 1):
        raise ConfigError(f"n_bins must be a power of two >= 2 (bins merge in pairs when the "
                          f"range doubles); got {n_bins}.")
    if n_intervals < 1 or n_bins % n_intervals:
        raise ConfigError(f"n_intervals={n_intervals} must divide n_bins={n_bins}.")


def init_histogram(d_sae: int, n_bins: int = 64) -> Histogram:
    check_bins(n_bins)
    return Histogram(jnp.zeros((d_sae, n_bins), jnp.int32), jnp.full((d_sae,), MIN_EXPONENT, jnp.int32))


def exponent_above(m: Float[Array, "..."]) -> Int[Array, "..."]:
    """The smallest ``e`` with ``m < 2**e`` (exact, through ``frexp``); ``MIN_EXPONENT`` for ``m <= 0``."""
    _, e = jnp.frexp(jnp.maximum(m, 0.0).astype(jnp.float32))
    return jnp.where(m > 0, jnp.maximum(e.astype(jnp.int32), MIN_EXPONENT), MIN_EXPONENT)


def bin_index(values: Float[Array, "..."], exponent: Int[Array, "..."], n: int) -> Int[Array, "..."]:
    """``floor(values * n / 2**exponent)`` clipped to ``[0, n - 1]`` (power-of-two scaling is exact)."""
    log_n = n.bit_length() - 1
    scaled = jnp.ldexp(values.astype(jnp.float32), log_n - exponent)
    return jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, n - 1)


def interval_index(values: Float[Array, "..."], exponent: Int[Array, "..."], n_intervals: int
                   ) -> Int[Array, "..."]:
    """Which of ``n_intervals`` equal intervals of ``[0, 2**exponent)`` a value is in (a power of
    two dividing ``n_bins``, so interval ``j`` is exactly a group of histogram bins)."""
    return bin_index(values, exponent, n_intervals)


def grow_range(h: Histogram, chunk_max: Float[Array, " s"]) -> Histogram:
    """The range raised above ``chunk_max`` where needed, old bins merged ``2**d`` at a time."""
    new_exp = jnp.maximum(h.exponent, exponent_above(chunk_max))
    n = h.n_bins
    d = jnp.minimum(new_exp - h.exponent, n.bit_length())[:, None]  # [s, 1]; more merges all to bin 0
    cum = jnp.concatenate([jnp.zeros_like(h.counts[:, :1]), jnp.cumsum(h.counts, axis=1)], axis=1)
    j = jnp.arange(n)[None, :]
    lo = jnp.minimum(jnp.left_shift(j, d), n)
    hi = jnp.minimum(jnp.left_shift(j + 1, d), n)
    merged = jnp.take_along_axis(cum, hi, 1) - jnp.take_along_axis(cum, lo, 1)
    return Histogram(merged, new_exp)


def add_values(h: Histogram, feature: Int[Array, "..."], values: Float[Array, "..."]) -> Histogram:
    """Counts every ``values > 0`` in its feature's bin (the range must already cover them)."""
    feature, values = feature.reshape(-1), values.reshape(-1)
    bins = bin_index(values, h.exponent[feature], h.n_bins)
    counts = h.counts.at[feature, bins].add((values > 0).astype(jnp.int32))
    return Histogram(counts, h.exponent)


def interval_counts(counts: Int[Array, "s bins"], n_intervals: int) -> Int[Array, "s n_intervals"]:
    """Histogram counts summed into ``n_intervals`` groups of adjacent bins."""
    s, n = counts.shape
    return counts.reshape(s, n_intervals, n // n_intervals).sum(-1)
