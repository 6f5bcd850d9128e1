"""Contexts for every feature, streamed: the top-activating ones and samples by activation level.

A *context* is one sequence of the token source; its score for feature ``s`` is the
feature's largest activation in it, ``v[b, s] = max_p a[b, p, s]``, at position
``argmax_p``. Each kept context stores a window of ``ctx`` tokens around that position
(shifted to stay inside the sequence) with the feature's activation on every token, so a
reader sees where it fires and how strongly, and nothing has to be recomputed later.

* **Top-k** (:func:`update_top`): per feature, the ``k`` contexts with the largest ``v``,
  merged chunk by chunk with one ``lax.top_k`` over ``k + batch`` candidates (as in
  :mod:`jaxinterp.features.topk`); ties keep the earlier context.
* **Interval samples** (:func:`update_intervals`): the range ``[0, R_s)`` of the feature's
  histogram (:mod:`jaxinterp.features.histogram`) is cut into ``n_intervals`` equal
  intervals (SAEDashboard's "quantile" groups), and each keeps a uniform random sample of
  ``per_interval`` contexts whose ``v`` falls in it. Every context draws a priority
  ``u ~ U[0, 1)`` (:func:`priorities`); an interval keeps its ``per_interval`` highest
  priorities. When the range doubles, intervals merge, and the top priorities of a merged
  interval are among those its parts kept, so the sample stays exactly the one a single
  pass over the final intervals would draw.

Everything is vectorised over features: no Python loop runs over them, and the state is
``d_sae x slots x ctx`` whatever the length of the token stream.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.features.histogram import interval_index


class Windows(eqx.Module):
    """Kept contexts, ``[d_sae, slots]`` (``ctx`` tokens each). Empty slots: ``seq = -1``."""

    values: Float[Array, "s slots"]      # the feature's max activation in the context
    priority: Float[Array, "s slots"]    # sampling priority (interval samples); -inf = empty
    seq: Int[Array, "s slots"]           # sequence id in the token stream
    start: Int[Array, "s slots"]         # position of the window's first token
    acts: Float[Array, "s slots ctx"]    # the feature's activation on each window token
    tokens: Int[Array, "s slots ctx"]    # the window's token ids


def init_windows(d_sae: int, slots: int, ctx: int) -> Windows:
    shape = (d_sae, slots)
    return Windows(jnp.full(shape, -jnp.inf), jnp.full(shape, -jnp.inf), jnp.full(shape, -1, jnp.int32),
                   jnp.zeros(shape, jnp.int32), jnp.zeros((*shape, ctx), jnp.float32),
                   jnp.zeros((*shape, ctx), jnp.int32))


class Chunk(eqx.Module):
    """One chunk's candidates: activations ``[batch, pos, d_sae]``, tokens, sequence ids
    (-1 for padding rows), per-(sequence, feature) max ``v`` and window ``start``."""

    acts: Float[Array, "b p s"]
    tokens: Int[Array, "b p"]
    seq: Int[Array, " b"]
    v: Float[Array, "b s"]
    start: Int[Array, "b s"]

    @classmethod
    def build(cls, acts: Array, tokens: Array, seq: Array, ctx: int, before: int) -> Chunk:
        """``v = max_p acts`` (``-inf`` for padding rows) and the window start around the argmax."""
        p = acts.shape[1]
        v = jnp.where(seq[:, None] >= 0, acts.max(1), -jnp.inf)
        start = jnp.clip(acts.argmax(1).astype(jnp.int32) - before, 0, p - ctx)
        return cls(acts, tokens, seq, v, start)


def priorities(key: jax.Array, chunk_index: Int[Array, ""], batch: int, d_sae: int) -> Float[Array, "b s"]:
    """Each (sequence, feature) pair's sampling priority in chunk ``chunk_index``."""
    return jax.random.uniform(jax.random.fold_in(key, chunk_index), (batch, d_sae))


def _gather(chunk: Chunk, rows: Int[Array, "s slots"], ctx: int) -> tuple[Array, Array, Array]:
    """Window start, activations and tokens of chunk row ``rows[s, j]`` for feature ``s``."""
    feature = jnp.arange(rows.shape[0])[:, None]
    start = chunk.start[rows, feature]                          # [s, slots]
    pos = start[..., None] + jnp.arange(ctx)                    # [s, slots, ctx]
    acts = chunk.acts[rows[..., None], pos, feature[..., None]]
    return start, acts, chunk.tokens[rows[..., None], pos]


def _select(old: Windows, chunk: Chunk, where: Int[Array, "s slots"], values: Array, priority: Array
            ) -> Windows:
    """New windows: slot ``j`` of feature ``s`` is old slot ``where`` or chunk row ``where - old``."""
    n_old, ctx = old.values.shape[1], old.acts.shape[-1]
    from_chunk = where >= n_old
    row = jnp.where(from_chunk, where - n_old, 0)
    keep = jnp.where(from_chunk, 0, where)
    start, acts, tokens = _gather(chunk, row, ctx)

    def pick(new: Array, prev: Array) -> Array:
        prev = jnp.take_along_axis(prev, keep.reshape(*keep.shape, *([1] * (prev.ndim - 2))), 1)
        return jnp.where(from_chunk.reshape(*from_chunk.shape, *([1] * (new.ndim - 2))), new, prev)

    seq = jnp.where(from_chunk, chunk.seq[row], jnp.take_along_axis(old.seq, keep, 1))
    seq = jnp.where(jnp.isfinite(values) & jnp.isfinite(priority), seq, -1)
    return Windows(values, priority, seq, pick(start, old.start), pick(acts, old.acts), pick(tokens, old.tokens))


def update_top(state: Windows, chunk: Chunk) -> Windows:
    """Merges a chunk into each feature's top-``k`` contexts (by max activation)."""
    candidates = jnp.concatenate([state.values, chunk.v.T], axis=1)   # [s, k + b]
    values, where = jax.lax.top_k(candidates, state.values.shape[1])
    return _select(state, chunk, where, values, jnp.zeros_like(values))


def update_intervals(state: Windows, chunk: Chunk, priority: Float[Array, "b s"], exponent: Int[Array, " s"],
                     n_intervals: int) -> Windows:
    """Merges a chunk into each feature's per-interval random samples (``state`` slots are
    ``n_intervals x per_interval``, interval-major). ``exponent`` is the (already grown)
    histogram range ``2**exponent`` of each feature."""
    s, slots = state.values.shape
    per = slots // n_intervals
    values = jnp.concatenate([state.values, chunk.v.T], axis=1)                    # [s, C]
    prio = jnp.concatenate([state.priority, jnp.where(chunk.v.T > 0, priority.T, -jnp.inf)], axis=1)
    prio = jnp.where(values > 0, prio, -jnp.inf)
    interval = interval_index(jnp.maximum(values, 0.0), exponent[:, None], n_intervals)
    mine = interval[:, None, :] == jnp.arange(n_intervals)[None, :, None]          # [s, B, C]
    score = jnp.where(mine, prio[:, None, :], -jnp.inf)
    top_prio, where = jax.lax.top_k(score, per)                                   # [s, B, per]
    where = where.reshape(s, slots)
    top_prio = top_prio.reshape(s, slots)
    kept = jnp.where(jnp.isfinite(top_prio), jnp.take_along_axis(values, where, 1), -jnp.inf)
    return _select(state, chunk, where, kept, top_prio)
