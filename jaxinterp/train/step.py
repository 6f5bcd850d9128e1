"""One compiled training step, with a NaN guard that never lets bad numbers in.

The step is the usual pure update::

    (loss, metrics), grads = value_and_grad(loss_fn)(params, batch, fold_in(key, step))
    updates, opt_state     = optimizer.update(grads, opt_state, params)
    params                 = params + updates

guarded by one flag computed on the device: ``ok = isfinite(loss) & all(isfinite(grads))
& (bad_step < 0)``. When ``ok`` is false the new parameters and optimiser state are
thrown away (``jnp.where(ok, new, old)``, a bitwise select, so guarded runs stay bitwise
equal to unguarded ones) and ``bad_step`` records the first failing step. Every later
update is refused too, so whenever the host looks (on log and checkpoint steps only, so
the step never waits on a device-to-host copy) it finds the state exactly as it was
before the first bad step, and can stop with a useful error without ever saving NaNs.

Parameters are the inexact-array part of an Equinox-style ``eqx.partition``; the rest
(activation functions, ints, ...) is closed over as static structure. Parameters,
optimiser state and the flag are donated, so the update happens in place on GPU/TPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

PyTree = Any
LossFn = Callable[[PyTree, PyTree, PRNGKeyArray], tuple[Float[Array, ""], Mapping[str, Array]]]
StepFn = Callable[..., tuple[PyTree, PyTree, Int[Array, ""], Float[Array, ""], dict]]


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """True when every inexact leaf of ``tree`` is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    static: PyTree = None,
    shardings: PyTree = None,
) -> StepFn:
    """The jitted step ``(params, opt_state, bad_step, batch, key, step) -> (params,
    opt_state, bad_step, loss, metrics)``.

    Compilations are shared: calling this again with the same ``loss_fn`` and
    ``optimizer`` objects and an equal ``static`` reuses the compiled step.

    Args:
        loss_fn: ``loss_fn(full_params, batch, key) -> (scalar loss, metrics dict)``.
        optimizer: any optax transformation.
        static: the non-trainable part of the parameters (``eqx.partition``'s second half).
        shardings: optional shardings of ``(params, opt_state, bad_step)``; the outputs are
            constrained to them, so the state keeps its placement from step to step.
    """
    return functools.partial(
        _guarded_step,
        loss_fn=_Static(loss_fn),
        optimizer=_Static(optimizer),
        static=_Static(static),
        shardings=_Static(shardings),
    )


@functools.partial(
    jax.jit,
    static_argnames=("loss_fn", "optimizer", "static", "shardings"),
    donate_argnums=(0, 1, 2),
)
def _guarded_step(
    params: PyTree,
    opt_state: PyTree,
    bad_step: Int[Array, ""],
    batch: PyTree,
    key: PRNGKeyArray,
    step: Int[Array, ""],
    *,
    loss_fn: _Static,
    optimizer: _Static,
    static: _Static,
    shardings: _Static,
) -> tuple[PyTree, PyTree, Int[Array, ""], Float[Array, ""], dict]:
    def objective(p: PyTree) -> tuple[Float[Array, ""], Mapping[str, Array]]:
        full = eqx.combine(p, static.value)
        return loss_fn.value(full, batch, jax.random.fold_in(key, step))

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
        updates, new_opt_state = optimizer.value.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

    finite = jnp.isfinite(loss) & all_finite(grads)
    ok = finite & (bad_step < 0)

    def keep_if_ok(new: Any, old: Any) -> Any:
        return jnp.where(ok, new, old) if eqx.is_array(new) else new

    params = jax.tree.map(keep_if_ok, new_params, params)
    opt_state = jax.tree.map(keep_if_ok, new_opt_state, opt_state)
    bad_step = jnp.where((bad_step < 0) & ~finite, step, bad_step)
    if shardings.value is not None:
        params, opt_state, bad_step = jax.lax.with_sharding_constraint(
            (params, opt_state, bad_step), shardings.value
        )
    return params, opt_state, bad_step, loss, dict(metrics)


class _Static:
    """A jit static argument compared by value (its pytree structure and leaves) when those
    are hashable, else by identity; so equal loss/optimizer/structure share a compilation."""

    def __init__(self, value: Any) -> None:
        self.value = value
        leaves, treedef = jax.tree.flatten(value)
        try:
            self._key: tuple | None = (treedef, tuple(leaves))
            hash(self._key)
        except TypeError:  # e.g. integer arrays held as structure
            self._key = None

    def __hash__(self) -> int:
        return hash(self._key) if self._key is not None else id(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        if self._key is None or other._key is None:
            return self is other
        return self._key == other._key
