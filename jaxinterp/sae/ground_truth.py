"""A ground-truth benchmark: activations made from a known sparse dictionary in superposition.

``n_features`` unit directions ``F [n_features, d]`` in a ``d < n_features`` space; each
sample switches features on sparsely and adds them up, ``x = c @ F``. A good SAE should
find the directions: the benchmark's score is the **mean max cosine similarity** (MMCS)
between each true direction and its closest decoder row,

    MMCS = mean_i max_j cos(F_i, W_dec_j)

To look like real activations rather than independent coin flips, the codes ``c`` have

* varied frequencies: feature ``i`` is on with probability ``p_i``, log-uniform in
  ``[p_min, p_max]``;
* correlations: features come in groups whose on/off decisions share a Gaussian factor
  (a Gaussian copula with correlation ``rho`` inside a group), so some features tend to
  fire together;
* varied magnitudes: feature ``i`` has a typical size ``m_i`` (log-normal), and an
  active value is ``m_i * U(0.5, 1.5)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SyntheticDictionary:
    """The generator's settings; :meth:`sample` draws activations, :attr:`directions` is F."""

    d: int = 16
    n_features: int = 48
    p_min: float = 0.01
    p_max: float = 0.08
    group_size: int = 4
    rho: float = 0.5
    magnitude_sigma: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.p_min <= self.p_max <= 1):
            raise ConfigError(f"Need 0 < p_min <= p_max <= 1, got {self.p_min}, {self.p_max}.")
        if self.d < 1 or self.n_features < 1 or self.group_size < 1 or not 0 <= self.rho < 1:
            raise ConfigError("d, n_features, group_size must be >= 1 and 0 <= rho < 1.")

    @property
    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    @property
    def directions(self) -> np.ndarray:
        """The true dictionary ``F [n_features, d]`` (unit rows)."""
        f = self._rng.normal(size=(self.n_features, self.d))
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    @property
    def probabilities(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 1))
        return np.exp(rng.uniform(math.log(self.p_min), math.log(self.p_max), self.n_features))

    @property
    def magnitudes(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 2))
        return np.exp(self.magnitude_sigma * rng.normal(size=self.n_features))

    def codes(self, n: int, seed: int = 0) -> np.ndarray:
        """Sparse non-negative codes ``c [n, n_features]``."""
        from scipy.special import ndtr  # the standard normal CDF

        rng = np.random.default_rng((self.seed, 3, seed))
        groups = np.arange(self.n_features) // self.group_size
        shared = rng.normal(size=(n, groups.max() + 1))[:, groups]
        z = math.sqrt(self.rho) * shared + math.sqrt(1 - self.rho) * rng.normal(size=(n, self.n_features))
        on = ndtr(z) < self.probabilities  # P(on) = p_i, correlated within a group
        values = self.magnitudes * rng.uniform(0.5, 1.5, size=(n, self.n_features))
        return np.where(on, values, 0.0)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Activations ``x = c @ F``, float32 ``[n, d]``."""
        return (self.codes(n, seed) @ self.directions).astype(np.float32)


def mean_max_cosine(true: Float[Array, "n d"], learned: Float[Array, "m d"]) -> float:
    """MMCS: the mean over true directions of the best cosine with any learned row."""
    t = np.asarray(true, np.float64)
    w = np.asarray(learned, np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return float((t @ w.T).max(axis=1).mean())
