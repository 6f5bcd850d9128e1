"""Patched forward passes that recompute only what a patch can change.

A patch at layer ``l`` whose first changed position is ``s`` leaves every activation at
layers before ``l`` and, in a causal model, at positions before ``s`` equal to the
unpatched (*base*) run's. The patched run therefore only needs queries at positions
``>= s`` in layers ``>= l``, attending over

    [base keys/values at positions < s]  ++  [recomputed keys/values at positions >= s]

which is what ``components.block`` computes when handed a key/value buffer whose first
``P`` slots hold the base run's keys and values (``kv``, written at ``cache_index=P``).

Packing. A target starting at ``s`` needs ``n = P - s`` query tokens. Two targets share
one *row* of ``R`` tokens (pairing ``s`` with ``P - 1 - s`` fills ``R = P + 1`` exactly);
a segment mask keeps them from seeing each other. A *chunk* of ``C`` rows is one batch
for the block, and one compiled program runs a chunk through layers ``min(l)..L-1``
(a ``fori_loop`` whose start is an array, so every chunk and every sweep of the same
shape reuses it). Tokens enter at their own start layer (``where(j == l, base, state)``)
and the component patch is applied there through a hook handler. Finally each target's
residual is reassembled (base before ``s``, recomputed after), unembedded position by
position so XLA drops the positions the metric never reads, and measured.

Shapes: ``C`` rows, ``B`` batch, ``R`` packed tokens, ``P`` positions, ``L`` layers.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.hooks import Handler, handler_scope, run_with_cache
from jaxinterp.interp.metrics import batch_mean
from jaxinterp.models import components as C
from jaxinterp.models.hook_specs import spec, tag
from jaxinterp.models.transformer import (
    HookedTransformer,
    embed,
    positions_and_mask,
    run_blocks,
    unembed,
)


def kv_hooks(model: HookedTransformer) -> tuple[str, str]:
    """The hooks holding the keys (after rotary) and values that attention attends over."""
    rotary = model.cfg.positional_embedding_type == "rotary"
    return ("attn.hook_rot_k" if rotary else "attn.hook_k"), "attn.hook_v"


def forward_cache(model: HookedTransformer, tokens: Int[Array, "b p"], attention_mask: Any,
                  suffixes: tuple[str, ...]) -> tuple[Array, Array, dict[str, Array]]:
    """One forward pass: ``(logits, final_resid, {suffix: [L, ...] stacked activations})``.

    The logits come from :func:`unembed_by_position`: under ``jit``, positions that
    nothing downstream reads are never unembedded.
    """
    positions, mask = positions_and_mask(tokens, attention_mask)

    def body(t):
        return run_blocks(model, embed(model, t, positions), positions, mask)

    L = model.cfg.n_layers
    final, cache = run_with_cache(body, tokens, names=[f"blocks.*.{s}" for s in suffixes])
    stacked = {s: jnp.stack([cache[f"blocks.{i}.{s}"] for i in range(L)]) for s in suffixes}
    return unembed_by_position(model, final), final, stacked


def collect(model: HookedTransformer, tokens: Int[Array, "b p"], attention_mask: Any,
            suffixes: tuple[str, ...], metric: Any) -> tuple[Array, Array, dict[str, Array]]:
    """:func:`forward_cache` with the batch-mean metric in place of the logits."""
    logits, final, stacked = forward_cache(model, tokens, attention_mask, suffixes)
    return batch_mean(metric, logits), final, stacked


def position_groups(n_pos: int) -> list[tuple[int, int]]:
    """Slices of positions unembedded separately (each alone up to 64, the last always alone)."""
    if n_pos <= 64:
        return [(p, p + 1) for p in range(n_pos)]
    step = -(-(n_pos - 1) // 32)
    return [(a, min(a + step, n_pos - 1)) for a in range(0, n_pos - 1, step)] + [(n_pos - 1, n_pos)]


def unembed_by_position(model: HookedTransformer, x: Float[Array, "b p d"]) -> Float[Array, "b p v"]:
    """``unembed`` as one matmul per position group, so unread positions compile away."""
    return jnp.concatenate([unembed(model, x[:, a:b]) for a, b in position_groups(x.shape[1])], 1)


class BaseRun(eqx.Module):
    """What a patched run reuses from the run it patches."""

    resid_pre: Float[Array, "L b p d"]
    k: Float[Array, "L b p g e"]
    v: Float[Array, "L b p g e"]
    final: Float[Array, "b p d"]
    positions: Int[Array, "b p"]
    valid: Array  # bool [b, p]: 1 = real token (the attention mask)


class _Replace(Handler):
    """At hook ``suffix`` in the block at layer ``j``: patch the source in where selected."""

    def __init__(self, suffix: str, fn):
        self.suffix, self.fn = suffix, fn

    def wants(self, name: str) -> bool:
        return name == self.suffix

    def handle(self, site, x, frames_above):
        return self.fn(x) if site.name() == self.suffix else x


def _gather_tokens(src: Array, tok_pos: Int[Array, "c t"]) -> Array:
    """``src [B, P, ...]`` at each token's position -> ``[C, B, T, ...]``."""
    return jnp.moveaxis(src[:, tok_pos], 0, 1)


def _per_token(plan: dict, name: str, tok_seg: Int[Array, "c t"]) -> Int[Array, "c t"]:
    return jnp.take_along_axis(plan[name], tok_seg, axis=1)


def _mask(plan: dict, q_pos, q_seg, valid, n_pos: int, n_dummy: int = 0) -> Array:
    """Attention mask ``[C, B, T, P + R + n_dummy]`` of query tokens ``(q_pos, q_seg)``.

    Keys: the base run's positions before the query's segment start, then the packed
    tokens of its own segment up to its position, then ``n_dummy`` unused slots.
    """
    k_pos, k_seg = plan["tok_pos"], plan["tok_seg"]
    start = _per_token(plan, "seg_start", q_seg)  # [C, T]
    base = jnp.arange(n_pos)[None, None, :] < start[:, :, None]  # [C, T, P]
    own = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_pos[:, None, :] <= q_pos[:, :, None])
    base = base[:, None] & valid[None, :, None, :]  # [C, B, T, P]
    own = own[:, None] & jnp.moveaxis(valid[:, k_pos], 0, 1)[:, :, None, :]  # [C, B, T, R]
    dummy = jnp.zeros(own.shape[:3] + (n_dummy,), bool)
    return jnp.concatenate([base, own, dummy], axis=-1)


def _patch_fn(suffix: str, src: Array, plan: dict, j: Array, q_pos, q_seg, mask: Array):
    """Replacement at hook ``suffix`` for query tokens ``(q_pos, q_seg)`` (flattened ``[C*B, ...]``).

    A token is patched when its target enters at layer ``j`` and selects its position
    (and, along a head axis, the target's head). Patterns are gathered from the source's
    ``[query, key]`` grid at the packed layout's key positions.
    """
    n_rows, n_pos = q_pos.shape[0], src.shape[-1] if suffix == "attn.hook_pattern" else 0
    want_pos, want_head = _per_token(plan, "seg_pos", q_seg), _per_token(plan, "seg_head", q_seg)
    sel = (_per_token(plan, "seg_layer", q_seg) == j) & ((want_pos < 0) | (q_pos == want_pos))

    def fn(x):
        xs = x.reshape(n_rows, -1, *x.shape[1:])
        if suffix == "attn.hook_pattern":  # [C, B, H, T(query), K(key)]
            n_key = xs.shape[-1]
            keys = jnp.concatenate([jnp.broadcast_to(jnp.arange(n_pos), (n_rows, n_pos)), plan["tok_pos"],
                                    jnp.zeros((n_rows, n_key - n_pos - plan["tok_pos"].shape[1]), jnp.int32)], 1)
            new = jnp.moveaxis(src[:, :, q_pos[:, :, None], keys[:, None, :]], 2, 0)
            new = jnp.where(mask[:, :, None], new, 0)  # masked keys of the packed layout stay 0
            heads = jnp.arange(xs.shape[2])
            m = sel[:, None, :] & ((want_head[:, None, :] < 0) | (heads[None, :, None] == want_head[:, None, :]))
            m = m[:, None, :, :, None]
        else:
            new = _gather_tokens(src, q_pos)
            m = sel[:, None, :]
            if spec(suffix).axis("head") is not None:
                heads = jnp.arange(xs.shape[3])
                m = m[..., None] & ((want_head[:, None, :, None] < 0) | (heads == want_head[:, None, :, None]))
            m = m.reshape(m.shape + (1,) * (xs.ndim - m.ndim))
        return jnp.where(m, new.astype(x.dtype), xs).reshape(x.shape)

    return fn


def keys_values(cfg, p: C.BlockParams, x: Float[Array, "b t d"], positions: Int[Array, "b t"]):
    """``(resid_pre, keys, values)`` as ``components.block`` computes them (same hooks, maths)."""
    x = tag("hook_resid_pre", x)
    xn = C.normalize(cfg, p.ln1, x, "ln1")
    a = p.attn
    k = jnp.einsum("bkd,gde->bkge", xn, a.W_K)
    k = tag("attn.hook_k", k if a.b_K is None else k + a.b_K)
    v = jnp.einsum("bkd,gde->bkge", xn, a.W_V)
    v = tag("attn.hook_v", v if a.b_V is None else v + a.b_V)
    if cfg.positional_embedding_type == "rotary":
        k = tag("attn.hook_rot_k", C.rotary(cfg, k, positions))
    return x, k, v


def run_chunk(model: HookedTransformer, base: BaseRun, source: Array, plan: dict,
              metric: Any, suffix: str, read: tuple[int, ...] | None) -> Float[Array, "c 2"]:
    """Metric (batch mean) of the two targets packed in each row of one chunk.

    ``read``: the positions the metric reads (``None``: all). When known, the last layer
    computes keys and values for every packed token but queries only at ``read``.
    """
    cfg = model.cfg
    L, P = cfg.n_layers, base.final.shape[1]
    tok_pos, tok_seg = plan["tok_pos"], plan["tok_seg"]
    n_rows, n_tok = tok_pos.shape
    batch = base.final.shape[0]
    tok_layer = _per_token(plan, "seg_layer", tok_seg)  # [C, R]
    row_mask = _mask(plan, tok_pos, tok_seg, base.valid, P)  # [C, B, R, P+R]

    def flat(a):
        return a.reshape((n_rows * batch,) + a.shape[2:])

    positions = flat(_gather_tokens(base.positions, tok_pos))

    def params_at(j):
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, j, keepdims=False), model.blocks)

    def enter(j, state):  # tokens whose target starts at layer j take the base residual
        return jnp.where((tok_layer == j)[:, None, :, None], _gather_tokens(base.resid_pre[j], tok_pos), state)

    def buffer(a, packed=None, n_extra=0):  # base keys/values, packed tokens' slots, spare slots
        a = jnp.broadcast_to(a[None], (n_rows,) + a.shape)
        packed = jnp.zeros((n_rows, batch, n_tok) + a.shape[3:], a.dtype) if packed is None else packed
        spare = jnp.zeros((n_rows, batch, n_extra) + a.shape[3:], a.dtype)
        return flat(jnp.concatenate([a, packed, spare], 2))

    def layer(j, state):
        state = enter(j, state)
        kv = (buffer(base.k[j]), buffer(base.v[j]))
        with handler_scope(_Replace(suffix, _patch_fn(suffix, source[j], plan, j, tok_pos, tok_seg, row_mask))):
            out, _ = C.block(cfg, params_at(j), flat(state), positions, flat(row_mask), kv, P)
        return out.reshape(state.shape)

    state = jnp.zeros((n_rows, batch, n_tok, cfg.d_model), base.final.dtype)
    q = jnp.arange(P)
    start, off = plan["seg_start"][:, :2, None], plan["seg_off"][:, :2, None]  # [C, 2, 1]
    if read is None:
        state = jax.lax.fori_loop(plan["l_min"], L, layer, state)
        # Each target's final residual: base before its start, recomputed after.
        idx = jnp.clip(off + q - start, 0, n_tok - 1)  # [C, 2, P]
        take = jax.vmap(lambda s, i: s[:, i])(state, idx)  # [C, B, 2, P, d]
        final = jnp.where((q >= start)[:, None, :, :, None], take, base.final[None, :, None])
    else:
        state = enter(L - 1, jax.lax.fori_loop(plan["l_min"], L - 1, layer, state))
        j, params = L - 1, params_at(L - 1)
        fn = _patch_fn(suffix, source[j], plan, j, tok_pos, tok_seg, row_mask)
        with handler_scope(_Replace(suffix, fn)):
            _, k_new, v_new = keys_values(cfg, params, flat(state), positions)
        # Queries: each segment's tokens at the read positions (clipped where not recomputed).
        m = jnp.asarray(read, jnp.int32)
        q_pos = jnp.broadcast_to(jnp.tile(m, 2), (n_rows, 2 * len(read)))
        q_seg = jnp.broadcast_to(jnp.repeat(jnp.arange(2, dtype=jnp.int32), len(read)), q_pos.shape)
        idx = jnp.clip(_per_token(plan, "seg_off", q_seg) + q_pos - _per_token(plan, "seg_start", q_seg), 0, n_tok - 1)
        x_q = jax.vmap(lambda s, i: s[:, i])(state, idx)  # [C, B, 2|M|, d]
        n_q = q_pos.shape[1]
        q_mask = _mask(plan, q_pos, q_seg, base.valid, P, n_q)
        kv = (buffer(base.k[j], k_new.reshape((n_rows, batch) + k_new.shape[1:]), n_q),
              buffer(base.v[j], v_new.reshape((n_rows, batch) + v_new.shape[1:]), n_q))
        with handler_scope(_Replace(suffix, _patch_fn(suffix, source[j], plan, j, q_pos, q_seg, q_mask))):
            out, _ = C.block(cfg, params, flat(x_q), flat(_gather_tokens(base.positions, q_pos)),
                             flat(q_mask), kv, P + n_tok)
        out = out.reshape(n_rows, batch, 2, len(read), -1)  # [C, B, 2, |M|, d]
        hit = (q[None, None, :, None] == m) & (m >= start[..., None])  # [C, 2, P, |M|]
        final = jnp.where(hit.any(-1)[:, None, :, :, None],
                          jnp.einsum("cspm,cbsmd->cbspd", hit.astype(out.dtype), out), base.final[None, :, None])
    final = jnp.moveaxis(final, 2, 1)  # [C, 2, B, P, d]

    def measure(x):
        return batch_mean(metric, unembed_by_position(model, x))

    return jax.vmap(jax.vmap(measure))(final)


run_chunk_jit = eqx.filter_jit(run_chunk)
collect_jit = eqx.filter_jit(collect)
