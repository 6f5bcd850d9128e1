"""One compiled training step, with a NaN guard that never lets bad numbers in.

The step is the usual pure update, optionally followed by a pure post-step function::

    (loss, metrics, aux), grads = value_and_grad(loss_fn)(params, batch, fold_in(key, step)[, state])
    updates, opt_state          = optimizer.update(grads, opt_state, params)
    params                      = params + updates
    params, opt_state, state, m = post_step(params, opt_state, state, aux, key', step)

``state`` is any pytree of arrays carried from step to step and checkpointed with the
parameters, but not trained (feature-density counters, running thresholds); ``aux`` is
whatever the loss hands the post-step function (which latents fired in this batch).
The post-step function is where constraints and resets live: projecting decoder rows
to unit norm, resampling dead latents and clearing their optimiser moments, updating a
density estimate. It runs inside the same compiled program as the update.

Everything is guarded by one flag computed on the device: ``ok = isfinite(loss) &
all(isfinite(grads)) & (bad_step < 0)`` (with a post-step function, the parameters and
state it returns must be finite too). When ``ok`` is false the new parameters and optimiser state are
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
LossFn = Callable[..., tuple]  # (params, batch, key[, state]) -> (loss, metrics[, aux])
PostStepFn = Callable[..., tuple[PyTree, PyTree, PyTree, Mapping[str, Array]]]
StepFn = Callable[..., tuple[PyTree, PyTree, PyTree, Int[Array, ""], Float[Array, ""], dict]]


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """True when every inexact leaf of ``tree`` is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    static: PyTree = None,
    shardings: PyTree = None,
    post_step: PostStepFn | None = None,
    with_state: bool = False,
) -> StepFn:
    """The jitted step ``(params, opt_state, state, bad_step, batch, key, step) -> (params,
    opt_state, state, bad_step, loss, metrics)``.

    Compilations are shared: calling this again with the same ``loss_fn``, ``optimizer``
    and ``post_step`` objects and an equal ``static`` reuses the compiled step.

    Args:
        loss_fn: ``loss_fn(full_params, batch, key) -> (scalar loss, metrics dict)``, or
            with ``with_state`` ``loss_fn(full_params, batch, key, state)``; it may also
            return a third element, ``aux``, handed to ``post_step``.
        optimizer: any optax transformation.
        static: the non-trainable part of the parameters (``eqx.partition``'s second half).
        shardings: optional shardings of ``(params, opt_state, state, bad_step)``; the
            outputs are constrained to them, so the state keeps its placement.
        post_step: optional ``post_step(full_params, opt_state, state, aux, key, step) ->
            (full_params, opt_state, state, metrics)``, applied after the update.
        with_state: pass ``state`` to the loss as its fourth argument.
    """
    return functools.partial(
        _guarded_step,
        loss_fn=_Static(loss_fn),
        optimizer=_Static(optimizer),
        static=_Static(static),
        shardings=_Static(shardings),
        post_step=_Static(post_step),
        with_state=with_state,
    )


def split_loss_output(out: Any) -> tuple[Any, Mapping[str, Any], Any]:
    """``(loss, metrics)`` or ``(loss, metrics, aux)`` as a triple (aux ``None`` if absent)."""
    if isinstance(out, tuple) and len(out) == 3:
        return out[0], out[1], out[2]
    return out[0], out[1], None


@functools.partial(
    jax.jit,
    static_argnames=("loss_fn", "optimizer", "static", "shardings", "post_step", "with_state"),
    donate_argnums=(0, 1, 2, 3),
)
def _guarded_step(
    params: PyTree,
    opt_state: PyTree,
    state: PyTree,
    bad_step: Int[Array, ""],
    batch: PyTree,
    key: PRNGKeyArray,
    step: Int[Array, ""],
    *,
    loss_fn: _Static,
    optimizer: _Static,
    static: _Static,
    shardings: _Static,
    post_step: _Static,
    with_state: bool,
) -> tuple[PyTree, PyTree, PyTree, Int[Array, ""], Float[Array, ""], dict]:
    step_key = jax.random.fold_in(key, step)

    def objective(p: PyTree) -> tuple[Float[Array, ""], tuple[Mapping[str, Array], Any]]:
        full = eqx.combine(p, static.value)
        args = (full, batch, step_key) + ((state,) if with_state else ())
        loss, metrics, aux = split_loss_output(loss_fn.value(*args))
        return loss, (metrics, aux)

    (loss, (metrics, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
        updates, new_opt_state = optimizer.value.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & all_finite(grads)
    new_state = state
    metrics = dict(metrics)
    if post_step.value is not None:
        full = eqx.combine(new_params, static.value)
        post_key = jax.random.fold_in(step_key, 1)
        full, new_opt_state, new_state, post_metrics = post_step.value(
            full, new_opt_state, state, aux, post_key, step
        )
        new_params = eqx.filter(full, eqx.is_inexact_array)
        metrics.update(post_metrics)
        finite = finite & all_finite(new_params) & all_finite(new_state)
    ok = finite & (bad_step < 0)

    def keep_if_ok(new: Any, old: Any) -> Any:
        return jnp.where(ok, new, old) if eqx.is_array(new) else new

    params = jax.tree.map(keep_if_ok, new_params, params)
    opt_state = jax.tree.map(keep_if_ok, new_opt_state, opt_state)
    state = jax.tree.map(keep_if_ok, new_state, state)
    bad_step = jnp.where((bad_step < 0) & ~finite, step, bad_step)
    if shardings.value is not None:
        params, opt_state, state, bad_step = jax.lax.with_sharding_constraint(
            (params, opt_state, state, bad_step), shardings.value
        )
    return params, opt_state, state, bad_step, loss, metrics


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
