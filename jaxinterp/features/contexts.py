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
of new (feature, slot) pairs, ``max_new`` at a time (one ``while_loop`` inside the one
compiled program, shared by the top-k and the interval samples: :func:`build_windows`).
Windows come from the sparse activations (each token's strongest features), so no
``[batch, pos, d_sae]`` array is ever gathered from.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

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
    return Windows(jnp.full(shape, -jnp.inf, jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32),
                   jnp.full(shape, -1, jnp.int32),
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


class Pending(eqx.Module):
    """New contexts of one chunk whose windows are still to be built: per (feature,
    candidate), whether it was taken, the slot it took, its chunk row and window start."""

    take: Bool[Array, "s c"]
    slot: Int[Array, "s c"]
    row: Int[Array, "s c"]
    start: Int[Array, "s c"]


def _running_count(mask: Bool[Array, "s n"]) -> Int[Array, "s n"]:
    """``cumsum(mask, 1)`` as a product with a triangular matrix (exact for 0/1 entries; one
    matrix product compiles to far less than a scan)."""
    n = mask.shape[1]
    tri = (jnp.arange(n)[:, None] <= jnp.arange(n)[None, :]).astype(jnp.float32)
    return jnp.dot(mask.astype(jnp.float32), tri, precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)


def _assign(state: Windows, chunk: Chunk, keep_old: Array, take_new: Array, values_new: Array,
            priority_new: Array, row_new: Array, start_new: Array) -> tuple[Windows, Pending]:
    """Kept old slots stay; the ``r``-th new context of a feature takes its ``r``-th free
    slot. New candidates are ``[s, c]``: value, priority, chunk row and window start. The
    windows (``acts``, ``tokens``) of the new contexts are left to :func:`build_windows`."""
    slots, c = keep_old.shape[1], take_new.shape[1]
    cum_free = _running_count(~keep_old)                                    # [s, slots]
    cum_take = _running_count(take_new)                                     # [s, c]
    # candidate of rank r = cum_take - 1 -> the free slot of rank r; free slot of rank q -> candidate of rank q
    slot = jnp.where(take_new, (cum_free[:, None, :] <= (cum_take - 1)[:, :, None]).sum(-1), slots)
    src = (cum_take[:, None, :] <= (cum_free - 1)[:, :, None]).sum(-1)      # [s, slots]; c: none
    filled = ~keep_old & (src < c)
    src = jnp.minimum(src, c - 1)

    def put(old: Array, new: Array, empty: Array) -> Array:
        return jnp.where(keep_old, old, jnp.where(filled, jnp.take_along_axis(new, src, 1), empty))

    out = Windows(put(state.values, values_new, -jnp.inf), put(state.priority, priority_new, -jnp.inf),
                  put(state.seq, chunk.seq[row_new], -1), put(state.start, start_new, 0), state.acts, state.tokens)
    return out, Pending(take_new, slot, row_new, start_new)


def build_windows(chunk: Chunk, groups: list[tuple[Windows, Pending]], max_new: int) -> list[Windows]:
    """Writes the windows of every group's new contexts, ``max_new`` (feature, candidate)
    pairs per round of one ``while_loop`` shared by all groups (their slots side by side)."""
    ctx = groups[0][0].acts.shape[-1]
    sizes = [w.values.shape[1] for w, _ in groups]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    acts = jnp.concatenate([w.acts for w, _ in groups], 1)                 # [s, all slots, ctx]
    tokens = jnp.concatenate([w.tokens for w, _ in groups], 1)
    take = jnp.concatenate([p.take for _, p in groups], 1)                 # [s, all candidates]
    slot = jnp.concatenate([p.slot + off for (_, p), off in zip(groups, offsets, strict=True)], 1)
    row = jnp.concatenate([p.row for _, p in groups], 1)
    start = jnp.concatenate([p.start for _, p in groups], 1)
    n_slots, n_cand = acts.shape[1], take.shape[1]
    flat = take.reshape(-1)
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
        f, c = which // n_cand, which % n_cand
        w_acts, w_tokens = chunk.window(f, row[f, c], start[f, c], ctx)
        target = jnp.where(valid, slot[f, c], n_slots)                     # invalid: dropped
        acts = acts.at[f, target].set(w_acts, mode="drop")
        tokens = tokens.at[f, target].set(w_tokens, mode="drop")
        return i + 1, acts, tokens

    _, acts, tokens = jax.lax.while_loop(lambda c: c[0] * max_new < total, round_,
                                         (jnp.zeros((), jnp.int32), acts, tokens))
    return [Windows(w.values, w.priority, w.seq, w.start, acts[:, off:off + n], tokens[:, off:off + n])
            for (w, _), off, n in zip(groups, offsets, sizes, strict=True)]


def update_top(state: Windows, chunk: Chunk) -> tuple[Windows, Pending]:
    """Merges a chunk into each feature's top-``k`` contexts (by max activation); the new
    contexts' windows are built by :func:`build_windows`."""
    k = state.values.shape[1]
    fresh = jnp.where(chunk.v.T > 0, chunk.v.T, -jnp.inf)                    # only contexts where it fires
    candidates = jnp.concatenate([state.values, fresh], axis=1)               # [s, k + b]
    values, where = jax.lax.top_k(candidates, k)
    chosen = (where[:, :, None] == jnp.arange(candidates.shape[1])[None, None, :]) & jnp.isfinite(values)[:, :, None]
    chosen = chosen.any(1)                                                    # [s, k + b]
    rows = jnp.broadcast_to(jnp.arange(fresh.shape[1], dtype=jnp.int32)[None, :], fresh.shape)
    return _assign(state, chunk, chosen[:, :k], chosen[:, k:], chunk.v.T, jnp.zeros_like(fresh), rows, chunk.start.T)


def interval_candidates(chunk: Chunk, exponent: Int[Array, " s"], n_intervals: int, per: int, seed: int,
                        ctx: int, before: int) -> tuple[Array, Array, Array, Array]:
    """Each (feature, interval)'s ``per`` highest-priority active tokens of the chunk, as
    ``[s, n_intervals * per]`` value, priority, chunk row and window start (``per`` rounds,
    one ``lax.scan``, of scatter-max over the sparse activations)."""
    b, p = chunk.tokens.shape
    s = chunk.v.shape[1]
    n = jnp.arange(b * p)
    token = jnp.broadcast_to((chunk.seq[n // p] * p + n % p)[:, None], chunk.idx.shape)   # global position
    prio = jnp.where(chunk.val > 0, priorities(token, chunk.idx, seed), -jnp.inf)
    interval = interval_index(chunk.val, exponent[chunk.idx], n_intervals)
    local = jnp.broadcast_to(n[:, None], chunk.idx.shape)

    def round_(prio, _):
        best = jnp.full((s, n_intervals), -jnp.inf, jnp.float32).at[chunk.idx, interval].max(prio)
        win = jnp.isfinite(prio) & (prio == best[chunk.idx, interval])
        at = jnp.full((s, n_intervals), -1, jnp.int32).at[chunk.idx, interval].max(jnp.where(win, local, -1))
        return jnp.where(win, -jnp.inf, prio), (best, at)

    _, (prio_new, at) = jax.lax.scan(round_, prio, None, length=per)      # [per, s, n_intervals]
    prio_new, at = (jnp.moveaxis(x, 0, -1).reshape(s, n_intervals * per) for x in (prio_new, at))
    t = jnp.maximum(at, 0)                                                  # the chosen token's activation
    hit = chunk.idx[t] == jnp.arange(s)[:, None, None]                      # [s, C, L]
    value = jnp.where(at >= 0, jnp.where(hit, chunk.val[t], 0.0).sum(-1), -jnp.inf)
    row = t // p
    start = jnp.clip(t % p - before, 0, p - ctx)
    return value, prio_new, row, start


def update_intervals(state: Windows, chunk: Chunk, exponent: Int[Array, " s"], n_intervals: int, seed: int,
                     before: int) -> tuple[Windows, Pending]:
    """Merges a chunk into each feature's per-interval random token samples (``n_intervals x
    per_interval`` unordered slots); ``exponent`` is the (already grown) histogram range
    ``2**exponent`` of each feature, which decides every sample's interval. The new
    samples' windows are built by :func:`build_windows`."""
    s, slots = state.values.shape
    per = slots // n_intervals
    ctx = state.acts.shape[-1]
    new_val, new_prio, row, start = interval_candidates(chunk, exponent, n_intervals, per, seed, ctx, before)
    values = jnp.concatenate([state.values, new_val], axis=1)                        # [s, C]
    prio = jnp.where(values > 0, jnp.concatenate([state.priority, new_prio], axis=1), -jnp.inf)
    interval = interval_index(jnp.maximum(values, 0.0), exponent[:, None], n_intervals)
    mine = interval[:, None, :] == jnp.arange(n_intervals)[None, :, None]            # [s, B, C]
    top_prio, where = jax.lax.top_k(jnp.where(mine, prio[:, None, :], -jnp.inf), per)   # [s, B, per]
    # an interval with fewer members returns -inf picks that may repeat another interval's: any, not set
    picked = (where[..., None] == jnp.arange(values.shape[1])) & jnp.isfinite(top_prio)[..., None]
    chosen = picked.any((1, 2))                                                       # [s, C]
    return _assign(state, chunk, chosen[:, :slots], chosen[:, slots:], new_val, new_prio, row, start)
