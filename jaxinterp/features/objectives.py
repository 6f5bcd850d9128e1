"""What feature visualisation maximises: a unit, a channel, a direction or an SAE feature.

All four are one formula on the activation ``a [*positions, d]`` at a hook (conv maps:
positions ``y, x``; text: ``pos``)::

    z[p]   = (a[p] - pre_bias) . direction + bias          (per position p)
    f[p]   = z[p]  |  relu(z[p])  |  z[p] * (z[p] > threshold)     (identity / relu / jumprelu)
    value  = f[position]            or  mean_p f[p]         (a neuron, or a whole channel)

* a **channel** or **neuron**: ``direction`` is the one-hot ``e_i`` (stored as ``index = i``,
  read with a gather);
* a **direction**: any vector ``v`` in activation space;
* an **SAE feature** (SAELens layout): ``direction = W_enc[:, i]``, ``bias = b_enc[i]``,
  ``pre_bias = b_dec`` (for SAEs that subtract it before encoding), ``threshold`` for
  JumpReLU. The optimiser climbs the pre-activation ``z`` (the activation function's
  flat parts would give no gradient), and the reported value is ``f``.

An :class:`Objective` holds a *batch* of targets on one hook: each array field has a
leading ``target`` axis, so ``jax.vmap`` over an objective visualises all of them in one
compiled program. Indices and positions are validated against the real activation shape
by :func:`check_objective` before anything is traced (out of range raises; negative counts
from the end, as in Python).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.errors import ConfigError, ShapeError

ACTIVATIONS = ("identity", "relu", "jumprelu")


class Objective(eqx.Module):
    """A batch of targets on the hook ``hook`` (see the module docstring).

    Exactly one of ``index [target]`` (channels/neurons) and ``direction [target, d]`` is
    set. ``position [target, n_pos_axes]`` picks one position (a neuron); ``None`` averages
    over all positions (a channel).
    """

    hook: str = eqx.field(static=True)
    index: Int[Array, " target"] | None = None
    direction: Float[Array, "target d"] | None = None
    bias: Float[Array, " target"] | None = None
    threshold: Float[Array, " target"] | None = None
    pre_bias: Float[Array, "target d"] | None = None
    position: Int[Array, "target n_axes"] | None = None
    activation: str = eqx.field(static=True, default="identity")

    @property
    def n_targets(self) -> int:
        return (self.index if self.index is not None else self.direction).shape[0]

    def select(self, targets: int | Sequence[int] | slice) -> Objective:
        """Some of the targets (an int keeps a target axis of length 1)."""
        n = self.n_targets
        try:
            rows = np.atleast_1d(np.arange(n)[targets])
        except IndexError as err:
            raise ShapeError(f"target {targets!r} is out of range for an objective with {n} targets") from err
        return jax.tree.map(lambda a: a[rows], self)

    # Evaluated on ONE target (inside vmap over the target axis) ------------------------
    def pre_activation(self, act: Float[Array, "batch ... d"]) -> Float[Array, "batch ..."]:
        """``z`` at every position of every batch item, for one target."""
        if self.index is not None:
            z = jnp.take(act, self.index, axis=-1)
        else:
            x = act if self.pre_bias is None else act - self.pre_bias
            z = jnp.einsum("...d,d->...", x, self.direction.astype(act.dtype))
        return z if self.bias is None else z + self.bias

    def apply_activation(self, z: Array) -> Array:
        if self.activation == "relu":
            return jax.nn.relu(z)
        if self.activation == "jumprelu":
            return z * (z > self.threshold)
        return z

    def reduce(self, values: Float[Array, "batch ..."]) -> Float[Array, " batch"]:
        """The value at ``position`` (a neuron) or the mean over positions (a channel)."""
        if self.position is None:
            return values.reshape(values.shape[0], -1).mean(-1)
        return values[(slice(None), *tuple(self.position))]

    def surrogate(self, act) -> Float[Array, " batch"]:
        """What the optimiser climbs: the pre-activation, reduced."""
        return self.reduce(self.pre_activation(act))

    def value(self, act) -> Float[Array, " batch"]:
        """The target's activation (after its activation function), reduced."""
        return self.reduce(self.apply_activation(self.pre_activation(act)))

    def per_position(self, act) -> Float[Array, "batch ..."]:
        """The target's activation at every position (for dataset examples)."""
        return self.apply_activation(self.pre_activation(act))


def _ints(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integers, got {arr.dtype} ({x!r})")
    return arr.astype(np.int32)


def _position(position, n: int) -> jnp.ndarray | None:
    if position is None:
        return None
    pos = _ints(position, "position")
    pos = pos.reshape(1, -1) if pos.ndim <= 1 else pos
    return jnp.asarray(np.broadcast_to(pos, (n, pos.shape[-1])))


def channel(hook: str, index: int | Sequence[int] | ArrayLike, *, activation: str = "identity") -> Objective:
    """Channel(s) ``index`` of ``hook``, averaged over positions (Olah's "channel objective").

    On a pre-activation hook (``blocks.{l}.hook_pre``) pass ``activation="relu"``: the
    optimiser climbs the pre-activation (which has a gradient even where the ReLU is off)
    and the reported value is the ReLU's output."""
    idx = _ints(index, "index").reshape(-1)
    return Objective(hook, index=jnp.asarray(idx), activation=activation)


def neuron(hook: str, index: int | Sequence[int] | ArrayLike, position, *, activation: str = "identity") -> Objective:
    """Unit ``index`` at one ``position``: ``(y, x)`` on a conv map, ``pos`` on text.
    ``position`` is one position for all targets or ``[target, n_axes]``; ``activation``
    as in :func:`channel`."""
    idx = _ints(index, "index").reshape(-1)
    return Objective(hook, index=jnp.asarray(idx), position=_position(position, len(idx)), activation=activation)


def direction(hook: str, vectors: Float[ArrayLike, "*target d"], position=None) -> Objective:
    """Direction(s) ``vectors [d]`` or ``[target, d]`` in the activation space of ``hook``."""
    v = jnp.asarray(vectors, jnp.float32)
    v = v[None] if v.ndim == 1 else v
    if v.ndim != 2:
        raise ShapeError(f"direction vectors must be [d] or [target, d], got shape {v.shape}")
    return Objective(hook, direction=v, position=_position(position, v.shape[0]))


def sae_feature(hook: str, W_enc_columns: Float[ArrayLike, "*target d"], b_enc: ArrayLike = 0.0, *,
                threshold: ArrayLike | None = None, b_dec: ArrayLike | None = None, position=None) -> Objective:
    """SAE feature(s) given as arrays (SAELens names): ``W_enc_columns = W_enc[:, i].T``
    (``[target, d_in]``), ``b_enc[i]``, optional JumpReLU ``threshold[i]`` and ``b_dec``
    (subtracted before encoding). ReLU without a threshold, JumpReLU with one."""
    obj = direction(hook, W_enc_columns, position)
    n, d = obj.direction.shape
    bias = jnp.broadcast_to(jnp.asarray(b_enc, jnp.float32), (n,))
    thr = None if threshold is None else jnp.broadcast_to(jnp.asarray(threshold, jnp.float32), (n,))
    pre = None if b_dec is None else jnp.broadcast_to(jnp.asarray(b_dec, jnp.float32), (n, d))
    return Objective(hook, direction=obj.direction, bias=bias, threshold=thr, pre_bias=pre,
                     position=obj.position, activation="jumprelu" if thr is not None else "relu")


def check_objective(objective: Objective, act_shape: tuple[int, ...]) -> Objective:
    """Validates ``objective`` against the hook's activation shape ``[batch, *positions, d]``
    and returns it with negative indices and positions made non-negative."""
    if not isinstance(objective, Objective):
        raise ConfigError(f"expected a jaxinterp.features.Objective, got {type(objective).__name__}; build one with "
                          "features.channel / neuron / direction / sae_feature")
    if objective.activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {objective.activation!r}")
    if (objective.index is None) == (objective.direction is None):
        raise ConfigError("an Objective needs exactly one of index (units) and direction (vectors)")
    spatial, d = tuple(act_shape[1:-1]), act_shape[-1]
    out = {}
    if objective.index is not None:
        idx = np.asarray(objective.index)
        bad = idx[(idx < -d) | (idx >= d)]
        if bad.size:
            raise ShapeError(f"unit index {int(bad[0])} is out of range for {objective.hook!r}, which has "
                             f"{d} units (valid: 0..{d - 1}, or negative from the end)")
        out["index"] = jnp.asarray(np.where(idx < 0, idx + d, idx))
    else:
        for name in ("direction", "pre_bias"):
            arr = getattr(objective, name)
            if arr is not None and arr.shape[-1] != d:
                raise ShapeError(f"{name} has length {arr.shape[-1]} but {objective.hook!r} has d={d} "
                                 f"(activation shape {tuple(act_shape)})")
    if objective.position is not None:
        pos = np.asarray(objective.position)
        if pos.shape[-1] != len(spatial):
            raise ShapeError(f"position needs {len(spatial)} coordinate(s) for {objective.hook!r} "
                             f"(positions {spatial}), got {pos.shape[-1]}")
        size = np.asarray(spatial)
        bad = (pos < -size) | (pos >= size)
        if bad.any():
            row = np.argwhere(bad)[0][0]
            raise ShapeError(f"position {tuple(int(p) for p in pos[row])} is out of range for {objective.hook!r} "
                             f"with positions of size {spatial}")
        out["position"] = jnp.asarray(np.where(pos < 0, pos + size, pos))
    if objective.activation == "jumprelu" and objective.threshold is None:
        raise ConfigError("a jumprelu objective needs a threshold")
    for name, value in out.items():
        objective = eqx.tree_at(lambda o, name=name: getattr(o, name), objective, value)
    return objective
