"""Streaming top-k per unit, kept on the device: the examples that most activate each unit.

Dataset examples (the inputs that most activate a neuron, channel or SAE feature) are the
first thing a reader checks about a unit. Over a large dataset they are found in one
pass: each chunk of ``n`` items gives scores ``[n, units]``; the running state keeps, per
unit, the ``k`` largest scores seen so far and the ids of their items, and a chunk is
merged in with one ``lax.top_k`` over ``k + n`` candidates per unit::

    state = init_topk(n_units, k)
    for ids, x in chunks:                      # ids: global item index, [n]
        state = update_topk(state, unit_scores(x), ids)   # jit this; one program per chunk shape
    state.values, state.ids                    # [units, k], largest first; id -1 = empty slot

No Python loop runs over units; memory is ``units x (k + n)`` whatever the dataset size.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.errors import ShapeError


class TopK(eqx.Module):
    """Per-unit running top-k: ``values [units, k]`` (descending) and item ``ids [units, k]``."""

    values: Float[Array, "units k"]
    ids: Int[Array, "units k"]

    @property
    def k(self) -> int:
        return self.values.shape[-1]


def init_topk(n_units: int, k: int, dtype=jnp.float32) -> TopK:
    """An empty state: every slot holds ``-inf`` with id ``-1``."""
    if n_units < 1 or k < 1:
        raise ShapeError(f"init_topk needs n_units >= 1 and k >= 1, got {n_units}, {k}")
    return TopK(jnp.full((n_units, k), -jnp.inf, dtype), jnp.full((n_units, k), -1, jnp.int32))


def update_topk(state: TopK, scores: Float[Array, "n units"], ids: Int[Array, " n"]) -> TopK:
    """Merges a chunk's ``scores [n, units]`` for items ``ids [n]`` into ``state``.

    Ties keep the earlier entry (state before chunk, then chunk order). Items with id
    ``-1`` (padding of a last, short chunk) never enter.
    """
    if scores.ndim != 2 or scores.shape[1] != state.values.shape[0]:
        raise ShapeError(f"scores must be [n, units={state.values.shape[0]}], got {scores.shape}")
    if ids.shape != scores.shape[:1]:
        raise ShapeError(f"ids must be [n={scores.shape[0]}], got {ids.shape}")
    scores = jnp.where(ids[:, None] >= 0, scores.astype(state.values.dtype), -jnp.inf)
    cand_v = jnp.concatenate([state.values, scores.T], axis=1)  # [units, k + n]
    cand_i = jnp.concatenate([state.ids, jnp.broadcast_to(ids.astype(jnp.int32), scores.T.shape)], 1)
    values, where = jax.lax.top_k(cand_v, state.k)
    return TopK(values, jnp.take_along_axis(cand_i, where, axis=1))
