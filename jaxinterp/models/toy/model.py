"""Toy models of superposition (Elhage et al. 2022): n sparse features through m < n dimensions.

The ReLU output model squeezes ``n_features`` inputs through ``n_hidden`` dimensions and
reads them back with the same matrix::

    h  = x W                  W: [n_features, n_hidden], row W_i is feature i's direction
    x' = ReLU(h W^T + b)      b: b_final [n_features]

(the papers write ``h = W x`` with ``W`` of shape ``[m, n]``; this is its transpose, the
layout of the official notebook and of TransformerLens' ``x @ W_in``). Variants, each one
small function of the same parameters (``ToyConfig.variant``):

* ``"linear"``: ``x' = h W^T + b``, the baseline that can only keep the top-m features;
* ``"relu"``: the ReLU output model above, which superposes features once they are sparse;
* ``"hidden_relu"``: ``h = ReLU(x W)``, a privileged hidden basis (features align with
  neurons);
* ``"abs"``: computation in superposition, an untied one-hidden-layer MLP
  ``y' = ReLU(ReLU(x W_in + b_in) W_out + b_out)`` trained to output ``|x|`` on signed
  inputs ``x_i in [-1, 1]``.

Models act on one example and carry no instance axis; batching and the many independent
instances of an experiment are ``jax.vmap`` (see :mod:`jaxinterp.models.toy.train`). The
hidden activation is the hook point ``hook_hidden``, so ``ji.run_with_cache(model, x)``
works on a single instance.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from jaxinterp.errors import ConfigError
from jaxinterp.hooks import hook

VARIANTS = ("linear", "relu", "hidden_relu", "abs")


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int, or a :class:`ConfigError` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_finite(name: str, value: object, *, low: float | None = None) -> float:
    """``value`` as a float, or a :class:`ConfigError` if it is NaN/inf or below ``low``."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}.")
    if low is not None and v < low:
        raise ConfigError(f"{name} must be >= {low}, got {value!r}.")
    return v


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The shape and variant of one toy model (every instance of a run shares it)."""

    n_features: int
    n_hidden: int
    variant: str = "relu"

    def __post_init__(self) -> None:
        check_positive_int("n_features", self.n_features)
        check_positive_int("n_hidden", self.n_hidden)
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")

    @property
    def signed_inputs(self) -> bool:
        """Whether features take values in [-1, 1] (``abs``) rather than [0, 1]."""
        return self.variant == "abs"


class ToyModel(eqx.Module):
    """The tied toy model ``x' = out(act(x W) W^T + b_final)`` of the ``linear``, ``relu``
    and ``hidden_relu`` variants."""

    W: Float[Array, "feature hidden"]
    b_final: Float[Array, " feature"]
    variant: str = eqx.field(static=True, default="relu")

    def __call__(self, x: Float[Array, " feature"]) -> Float[Array, " feature"]:
        h = x @ self.W
        if self.variant == "hidden_relu":
            h = jax.nn.relu(h)
        h = hook("hook_hidden", h)
        out = h @ self.W.T + self.b_final
        return out if self.variant == "linear" else jax.nn.relu(out)

    def hidden(self, x: Float[Array, " feature"]) -> Float[Array, " hidden"]:
        """The hidden vector ``h`` of one example."""
        h = x @ self.W
        return jax.nn.relu(h) if self.variant == "hidden_relu" else h


class ToyMLP(eqx.Module):
    """The untied MLP of the ``abs`` variant: ``ReLU(ReLU(x W_in + b_in) W_out + b_out)``."""

    W_in: Float[Array, "feature hidden"]
    b_in: Float[Array, " hidden"]
    W_out: Float[Array, "hidden feature"]
    b_out: Float[Array, " feature"]

    @property
    def W(self) -> Float[Array, "feature hidden"]:
        """The input weights: row ``i`` is where feature ``i`` goes in the hidden layer."""
        return self.W_in

    def __call__(self, x: Float[Array, " feature"]) -> Float[Array, " feature"]:
        h = hook("hook_hidden", self.hidden(x))
        return jax.nn.relu(h @ self.W_out + self.b_out)

    def hidden(self, x: Float[Array, " feature"]) -> Float[Array, " hidden"]:
        return jax.nn.relu(x @ self.W_in + self.b_in)


Toy = ToyModel | ToyMLP


def _xavier(key: PRNGKeyArray, fan_in: int, fan_out: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape) * math.sqrt(2.0 / (fan_in + fan_out))


def init_toy(cfg: ToyConfig, key: PRNGKeyArray) -> Toy:
    """One model: Xavier-normal weights, zero biases (as in the official notebook)."""
    n, m = cfg.n_features, cfg.n_hidden
    if cfg.variant == "abs":
        k1, k2 = jax.random.split(key)
        return ToyMLP(_xavier(k1, n, m, (n, m)), jnp.zeros(m), _xavier(k2, m, n, (m, n)), jnp.zeros(n))
    return ToyModel(_xavier(key, n, m, (n, m)), jnp.zeros(n), cfg.variant)


def init_toys(cfg: ToyConfig, keys: PRNGKeyArray) -> Toy:
    """Independent models stacked on a leading instance axis, one per key."""
    return jax.vmap(lambda k: init_toy(cfg, k))(keys)


def target(cfg: ToyConfig, x: Float[Array, "*batch feature"]) -> Float[Array, "*batch feature"]:
    """What the model should output: the input itself, or ``|x|`` for the ``abs`` variant."""
    return jnp.abs(x) if cfg.variant == "abs" else x


def importance_weighted_mse(
    pred: Float[Array, "batch feature"],
    y: Float[Array, "batch feature"],
    importance: Float[Array, " feature"],
    weights: Float[Array, " batch"] | None = None,
) -> Float[Array, ""]:
    """``mean_b mean_i I_i (y_bi - y'_bi)^2``; with ``weights``, a weighted mean over the
    batch (padding examples of a fixed training set get weight 0)."""
    per_example = jnp.mean(importance * (y - pred) ** 2, axis=-1)
    if weights is None:
        return jnp.mean(per_example)
    return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1.0)
