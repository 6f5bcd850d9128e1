"""Contexts for every feature, streamed: the top-activating ones and samples by activation level.

A *context* is one sequence of the token source; its score for feature ``s`` is the
feature's largest activation in it, ``v[b, s] = max_p a[b, p, s]``, at position
``argmax_p``. Each kept context stores a window of ``ctx`` tokens around that position
(shifted to stay inside the sequence) with the feature's activation on every token, so a
reader sees where it fires and how strongly, and nothing has to be recomputed later.

* **Top-k** (:func:`update_top`): per feature, the ``k`` contexts with the largest ``v``;
  each chunk's candidates merge in with one ``lax.top_k`` over ``k + batch`` scores
  (ties keep the earlier context, as in :mod:`jaxinterp.features.topk`).
* **Interval samples** (:func:`update_intervals`): the range ``[0, R_s)`` of the feature's
  histogram (:mod:`jaxinterp.features.histogram`) is cut into ``n_intervals`` equal
  intervals (SAEDashboard's "quantile" groups); each keeps a uniform random sample of
  ``per_interval`` *tokens* whose activation falls in it, shown with the window around
  them. Every active (token, feature) pair has a priority ``u`` in ``[0, 1)``, a hash of
  the token's position in the stream and the feature (:func:`priorities`, so the sample
  does not depend on how the stream is chunked), and an interval keeps its highest
  priorities. When the range doubles, intervals merge, and the top priorities of a merged
  interval are among those its parts kept, so the sample is exactly what one pass over
  the final intervals would draw.

Slots are an unordered set per feature (sorted on the host at the end): a kept context
never moves, a new one takes a freed slot. Only *new* contexts need their windows, and
after the first chunks few contexts are new, so windows are built for a compacted list
of new (feature, slot) pairs, ``max_new`` at a time (a ``while_loop`` inside the one
compiled program). Windows come from the sparse activations (each token's strongest
features), so no ``[batch, pos, d_sae]`` array is ever gathered from.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.features.histogram import interval_index


class Windows(eqx.Module):
    """Kept contexts, ``[d_sae, slots]`` (``ctx`` tokens each); empty slots have ``seq = -1``."""

    values: Float[Array, "s slots"]      # the feature's max activation in the context (-inf: empty)
    priority: Float[Array, "s slots"]    # sampling priority (interval samples)
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
    """One chunk of sequences: sparse activations ``val``/``idx [batch * pos, L]`` (each
    token's strongest features), ``tokens [batch, pos]``, sequence ids ``seq [batch]`` (-1:
    padding row), and per (sequence, feature) the max ``v [batch, d_sae]`` (``-inf`` for
    padding rows) and the window ``start``."""

    val: Float[Array, "n l"]
    idx: Int[Array, "n l"]
    tokens: Int[Array, "b p"]
    seq: Int[Array, " b"]
    v: Float[Array, "b s"]
    start: Int[Array, "b s"]

    @classmethod
    def build(cls, val: Array, idx: Array, tokens: Array, seq: Array, d_sae: int, ctx: int, before: int
              ) -> Chunk:
        """``v`` by a scatter-max of the sparse activations, the argmax (first position
        reaching the max) by a scatter-min, and the window start around it."""
        b, p = tokens.shape
        row = jnp.broadcast_to((jnp.arange(b * p) // p)[:, None], idx.shape)
        pos = jnp.broadcast_to((jnp.arange(b * p) % p)[:, None], idx.shape)
        v = jnp.zeros((b, d_sae), jnp.float32).at[row, idx].max(val)
        at_max = (val > 0) & (val == v[row, idx])
        arg = jnp.full((b, d_sae), p, jnp.int32).at[row, idx].min(jnp.where(at_max, pos, p))
        start = jnp.clip(jnp.where(arg < p, arg, 0) - before, 0, p - ctx)
        return cls(val, idx, tokens, seq, jnp.where(seq[:, None] >= 0, v, -jnp.inf), start)

    def window(self, feature: Int[Array, " m"], row: Int[Array, " m"], start: Int[Array, " m"], ctx: int
               ) -> tuple[Float[Array, "m ctx"], Int[Array, "m ctx"]]:
        """Feature ``feature[i]``'s activations and the tokens on ``ctx`` positions of chunk
        row ``row[i]`` from ``start[i]`` (read from the sparse activations)."""
        p = self.tokens.shape[1]
        pos = start[:, None] + jnp.arange(ctx)[None, :]                    # [m, ctx]
        t = row[:, None] * p + pos
        hit = self.idx[t] == feature[:, None, None]                        # [m, ctx, L]
        acts = jnp.where(hit, self.val[t], 0.0).sum(-1)
        return acts, self.tokens[row[:, None], pos]


def priorities(token: Int[Array, "..."], feature: Int[Array, "..."], seed: int) -> Float[Array, "..."]:
    """A uniform-looking priority in ``[0, 1)`` for (global token index, feature): an
    integer hash (murmur3's finaliser), the same in numpy and JAX."""
    x = (jnp.asarray(token).astype(jnp.uint32) * jnp.uint32(0x9E3779B1)
         ^ jnp.asarray(feature).astype(jnp.uint32) * jnp.uint32(0x85EBCA77) ^ jnp.uint32(seed * 0xC2B2AE3D % 2**32))
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        x = x ^ (x >> shift)
        if mult is not None:
            x = x * jnp.uint32(mult)
    return (x >> 8).astype(jnp.float32) / jnp.float32(2**24)


def _fill(state: Windows, chunk: Chunk, keep_old: Array, take_new: Array, values_new: Array,
          priority_new: Array, row_new: Array, start_new: Array, max_new: int) -> Windows:
    """Kept old slots stay; the ``r``-th new context of a feature takes its ``r``-th free
    slot. New candidates are ``[s, c]``: value, priority, chunk row and window start."""
    s, slots = keep_old.shape
    ctx = state.acts.shape[-1]
    free_rank = jnp.where(~keep_old, jnp.cumsum(~keep_old, 1) - 1, slots)     # [s, slots]
    slot_of_rank = jnp.full((s, slots + 1), 0, jnp.int32).at[
        jnp.arange(s)[:, None], free_rank].set(jnp.arange(slots, dtype=jnp.int32)[None, :])
    new_rank = jnp.cumsum(take_new, 1) - 1                                   # [s, b]
    slot = jnp.where(take_new, jnp.take_along_axis(slot_of_rank, jnp.minimum(new_rank, slots), 1), slots)
    feature = jnp.broadcast_to(jnp.arange(s)[:, None], slot.shape)

    def put(old: Array, new: Array, empty: Array) -> Array:
        cleared = jnp.where(keep_old, old, empty)
        return jnp.concatenate([cleared, jnp.zeros_like(cleared[:, :1])], 1).at[feature, slot].set(new)[:, :slots]

    out = Windows(put(state.values, values_new, -jnp.inf), put(state.priority, priority_new, -jnp.inf),
                  put(state.seq, chunk.seq[row_new], -1), put(state.start, start_new, 0), state.acts, state.tokens)
    # Windows of the new contexts, max_new (feature, row) pairs per round.
    flat = take_new.reshape(-1)
    total = flat.sum()
    rank = jnp.cumsum(flat) - 1

    def round_(carry):
        i, acts, tokens = carry
        lo = i * max_new
        dest = jnp.where(flat & (rank >= lo) & (rank < lo + max_new), rank - lo, max_new)
        which = jnp.full(max_new + 1, -1, jnp.int32).at[dest].set(jnp.arange(flat.shape[0], dtype=jnp.int32))
        which = which[:max_new]
        valid = which >= 0
        which = jnp.maximum(which, 0)
        f, c = which // take_new.shape[1], which % take_new.shape[1]
        w_acts, w_tokens = chunk.window(f, row_new[f, c], start_new[f, c], ctx)
        target = jnp.where(valid, slot[f, c], slots)                          # invalid: dropped
        acts = acts.at[f, target].set(w_acts, mode="drop")
        tokens = tokens.at[f, target].set(w_tokens, mode="drop")
        return i + 1, acts, tokens

    _, acts, tokens = jax.lax.while_loop(lambda c: c[0] * max_new < total, round_, (jnp.zeros((), jnp.int32), out.acts, out.tokens))
    return Windows(out.values, out.priority, out.seq, out.start, acts, tokens)


def update_top(state: Windows, chunk: Chunk, max_new: int) -> Windows:
    """Merges a chunk into each feature's top-``k`` contexts (by max activation)."""
    k = state.values.shape[1]
    fresh = jnp.where(chunk.v.T > 0, chunk.v.T, -jnp.inf)                    # only contexts where it fires
    candidates = jnp.concatenate([state.values, fresh], axis=1)               # [s, k + b]
    values, where = jax.lax.top_k(candidates, k)
    chosen = jnp.zeros(candidates.shape, bool).at[jnp.arange(candidates.shape[0])[:, None], where].set(
        jnp.isfinite(values))
    rows = jnp.broadcast_to(jnp.arange(fresh.shape[1], dtype=jnp.int32)[None, :], fresh.shape)
    return _fill(state, chunk, chosen[:, :k], chosen[:, k:], chunk.v.T, jnp.zeros_like(fresh), rows, chunk.start.T,
                 max_new)


def interval_candidates(chunk: Chunk, exponent: Int[Array, " s"], n_intervals: int, per: int, seed: int,
                        ctx: int, before: int) -> tuple[Array, Array, Array, Array]:
    """Each (feature, interval)'s ``per`` highest-priority active tokens of the chunk, as
    ``[s, n_intervals * per]`` value, priority, chunk row and window start (``per`` rounds
    of scatter-max over the sparse activations)."""
    b, p = chunk.tokens.shape
    s = chunk.v.shape[1]
    n = jnp.arange(b * p)
    token = jnp.broadcast_to((chunk.seq[n // p] * p + n % p)[:, None], chunk.idx.shape)   # global position
    prio = jnp.where(chunk.val > 0, priorities(token, chunk.idx, seed), -jnp.inf)
    interval = interval_index(chunk.val, exponent[chunk.idx], n_intervals)
    local = jnp.broadcast_to(n[:, None], chunk.idx.shape)
    values, prios, where = [], [], []
    for _ in range(per):
        best = jnp.full((s, n_intervals), -jnp.inf).at[chunk.idx, interval].max(prio)
        win = jnp.isfinite(prio) & (prio == best[chunk.idx, interval])
        at = jnp.full((s, n_intervals), -1, jnp.int32).at[chunk.idx, interval].max(jnp.where(win, local, -1))
        value = jnp.zeros((s, n_intervals)).at[chunk.idx, interval].max(jnp.where(win, chunk.val, 0.0))
        values.append(jnp.where(at >= 0, value, -jnp.inf))
        prios.append(best)
        where.append(at)
        prio = jnp.where(win, -jnp.inf, prio)
    stack = lambda xs: jnp.stack(xs, -1).reshape(s, n_intervals * per)  # noqa: E731
    value, prio_new, at = stack(values), stack(prios), stack(where)
    row = jnp.maximum(at, 0) // p
    start = jnp.clip(jnp.maximum(at, 0) % p - before, 0, p - ctx)
    return value, prio_new, row, start


def update_intervals(state: Windows, chunk: Chunk, exponent: Int[Array, " s"], n_intervals: int, seed: int,
                     max_new: int, before: int) -> Windows:
    """Merges a chunk into each feature's per-interval random token samples (``n_intervals x
    per_interval`` unordered slots); ``exponent`` is the (already grown) histogram range
    ``2**exponent`` of each feature, which decides every sample's interval."""
    s, slots = state.values.shape
    per = slots // n_intervals
    ctx = state.acts.shape[-1]
    new_val, new_prio, row, start = interval_candidates(chunk, exponent, n_intervals, per, seed, ctx, before)
    values = jnp.concatenate([state.values, new_val], axis=1)                        # [s, C]
    prio = jnp.where(values > 0, jnp.concatenate([state.priority, new_prio], axis=1), -jnp.inf)
    interval = interval_index(jnp.maximum(values, 0.0), exponent[:, None], n_intervals)
    mine = interval[:, None, :] == jnp.arange(n_intervals)[None, :, None]            # [s, B, C]
    top_prio, where = jax.lax.top_k(jnp.where(mine, prio[:, None, :], -jnp.inf), per)   # [s, B, per]
    # an interval with fewer members returns -inf picks that may repeat another interval's: max, not set
    chosen = jnp.zeros(values.shape, bool).at[jnp.arange(s)[:, None, None], where].max(jnp.isfinite(top_prio))
    return _fill(state, chunk, chosen[:, :slots], chosen[:, slots:], new_val, new_prio, row, start, max_new)
