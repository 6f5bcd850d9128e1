"""Dataset examples: the inputs of a dataset that most activate each target.

Feature visualisation shows what a unit *can* respond to; dataset examples show what it
*does* respond to in real data, and the two are read side by side (Olah et al. 2017).
One pass over the dataset in fixed-size chunks: each chunk's activation at the
objective's hook gives scores ``[n, target]`` (every target of the
:class:`~jaxinterp.features.objectives.Objective` at once, vmapped), merged into a
running per-target top-k on the device by :func:`~jaxinterp.features.topk.update_topk`.

With ``per_position=True`` every (item, position) pair is a candidate, scored by the
target's activation at that position: the usual "top contexts" of a text neuron (the
token where it fires, with its prefix), or the image location where a channel fires most.
The scores are the objective's ``value`` (after ReLU/JumpReLU), the same number
:func:`~jaxinterp.features.visualize.visualize` reports, so the two compare directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.features.objectives import Objective, check_objective
from jaxinterp.features.topk import init_topk, update_topk
from jaxinterp.hooks import run_with_cache


@dataclasses.dataclass(frozen=True)
class Examples:
    """Per target, the ``k`` best items: ``values [target, k]`` (descending), ``items
    [target, k]`` (indices into the dataset, -1 for an empty slot) and, with
    ``per_position``, ``positions [target, k, n_axes]`` (``(y, x)`` or ``(pos,)``)."""

    values: np.ndarray
    items: np.ndarray
    positions: np.ndarray | None = None

    @property
    def top(self) -> np.ndarray:
        """The best value per target, ``[target]``."""
        return self.values[:, 0]


def dataset_examples(model: Callable, objective: Objective, inputs: np.ndarray, *, k: int = 8,
                     batch_size: int = 256, per_position: bool = False, progress: bool = False,
                     **model_kwargs) -> Examples:
    """The ``k`` inputs (or input positions) of ``inputs [N, ...]`` that most activate each target.

    ``model(inputs[i:j], **model_kwargs)`` must reach the objective's hook. One compiled
    program per run (the last chunk is padded and its padding never enters).
    """
    if not isinstance(objective, Objective):
        raise ConfigError(f"dataset_examples needs an Objective, got {type(objective).__name__}")
    inputs = np.asarray(inputs)
    n = len(inputs)
    if n == 0 or k < 1 or batch_size < 1:
        raise ShapeError(f"need a non-empty dataset, k >= 1 and batch_size >= 1; got {n} items, k={k}")
    batch_size = min(batch_size, n)
    hook = objective.hook
    spec = jax.ShapeDtypeStruct((batch_size, *inputs.shape[1:]), inputs.dtype)
    act_shape = jax.eval_shape(lambda x: run_with_cache(model, x, names=[hook], **model_kwargs)[1][hook], spec).shape
    if per_position:
        objective = dataclasses.replace(objective, position=None) if objective.position is not None else objective
    objective = check_objective(objective, tuple(act_shape))
    spatial = tuple(act_shape[1:-1])
    n_pos = int(np.prod(spatial)) if per_position else 1

    @jax.jit
    def update(state, x, ids):
        _, cache = run_with_cache(model, x, names=[hook], **model_kwargs)
        act = cache[hook]
        if per_position:
            scores = jax.vmap(lambda o: o.per_position(act), out_axes=-1)(objective)  # [b, *pos, t]
            scores = scores.reshape(-1, scores.shape[-1])
            ids = (ids[:, None] * n_pos + jnp.arange(n_pos)[None]).reshape(-1)
            ids = jnp.where(ids >= 0, ids, -1)
        else:
            scores = jax.vmap(lambda o: o.value(act), out_axes=-1)(objective)  # [b, t]
        return update_topk(state, scores, ids)

    state = init_topk(objective.n_targets, min(k, n * n_pos))
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="dataset examples"):
        chunk = inputs[start:start + batch_size]
        ids = np.arange(start, start + len(chunk), dtype=np.int32)
        if len(chunk) < batch_size:  # pad the last chunk to the compiled shape
            pad = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            ids = np.concatenate([ids, np.full(pad, -1, np.int32)])
        state = update(state, jnp.asarray(chunk), jnp.asarray(ids))
    values, ids = np.asarray(state.values), np.asarray(state.ids)
    if not per_position:
        return Examples(values, ids)
    items = np.where(ids >= 0, ids // n_pos, -1)
    flat = np.where(ids >= 0, ids % n_pos, 0)
    positions = np.stack(np.unravel_index(flat, spatial), axis=-1)
    return Examples(values, items, positions)
