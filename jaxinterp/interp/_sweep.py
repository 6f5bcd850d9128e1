"""Many patched runs at once, each recomputing only what its patch can change.

A target (one patched run) enters at layer ``l`` with its first changed position ``s``.
It needs the tokens ``s..P-1`` in layers ``l..L-1``, attending over the base run's keys and
values before ``s``: :func:`jaxinterp.models.partial.run_layers` with the base run as its
cache (and, when the metric declares the positions it reads, the last layer's queries
only there).

Packing. A target starting at ``s`` needs ``n = P - s`` tokens. Two targets share one
*row* of ``R`` tokens (pairing ``s`` with ``P - 1 - s`` fills ``R = P + 1`` exactly); a
segment mask keeps them from seeing each other. A *chunk* of ``C`` rows, times the
prompts' batch ``B``, is one batch for ``run_layers``, whose start is an array (the
chunk's first layer), so every chunk and every sweep of the same shape reuses one
compiled program. Inside each layer ``j`` a handler lets each token enter at its own
target's layer (its residual stream becomes the base run's at ``hook_resid_pre``) and
patches the target's component from the source run where the target selects it (its
position and head, read from the hook's axes in :mod:`jaxinterp.models.hook_specs`).
Finally each target's residual stream at the read positions (base before ``s``,
recomputed after) is unembedded there and measured.

Shapes: ``C`` rows, ``B`` batch, ``R`` packed tokens, ``P`` positions, ``L`` layers.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxinterp.hooks import Handler
from jaxinterp.interp.metrics import batch_mean
from jaxinterp.models.hook_specs import BY_NAME, HookSpec, spec
from jaxinterp.models.partial import BaseRun, logits_at, run_layers
from jaxinterp.models.transformer import HookedTransformer

RESID_PRE = BY_NAME["hook_resid_pre"]


def _per_token(plan: dict, name: str, tok_seg: Int[Array, "c t"]) -> Int[Array, "c t"]:
    return jnp.take_along_axis(plan[name], tok_seg, axis=1)


def token_mask(plan: dict, valid: Array, n_pos: int) -> Array:
    """Attention mask ``[C, B, R, P + R]`` of the packed tokens: the base run's positions
    before the token's segment start, then its own segment's tokens up to it."""
    k_pos, k_seg = plan["tok_pos"], plan["tok_seg"]
    start = _per_token(plan, "seg_start", k_seg)  # [C, R]
    base = jnp.arange(n_pos)[None, None, :] < start[:, :, None]  # [C, R, P]
    own = (k_seg[:, :, None] == k_seg[:, None, :]) & (k_pos[:, None, :] <= k_pos[:, :, None])
    base = base[:, None] & valid[None, :, None, :]  # [C, B, R, P]
    own = own[:, None] & jnp.moveaxis(valid[:, k_pos], 0, 1)[:, :, None, :]  # [C, B, R, R]
    return jnp.concatenate([base, own], axis=-1)


def _align(a: Array, a_axes: tuple[str, ...], out_axes: tuple[str, ...]) -> Array:
    """``a`` (axes ``a_axes``) transposed and expanded to broadcast against ``out_axes``."""
    order = [name for name in out_axes if name in a_axes]
    a = jnp.transpose(a, [a_axes.index(name) for name in order])
    size = dict(zip(order, a.shape, strict=True))
    return a.reshape([size.get(name, 1) for name in out_axes])


class Tokens(eqx.Module):
    """Which packed tokens a layer's hooks cover: position and segment ``[C, T]`` and
    their rows of the attention mask ``[C, B, T, K]``."""

    pos: Int[Array, "c t"]
    seg: Int[Array, "c t"]
    mask: Array


def replace(hook: HookSpec, x: Array, src: Array, plan: dict, j: Array, tok: Tokens,
            by_target: bool) -> Array:
    """``x`` (``[C*B, ...]``, ``hook``'s axes) with the source ``src [B, ...]`` (the same
    hook over all ``P`` positions) put in at the tokens whose target enters at layer
    ``j``; with ``by_target`` only where the target selects (its position and head)."""
    axes = ("row",) + hook.axes
    n_rows = tok.pos.shape[0]
    keys = None
    if "key_pos" in hook.axes:  # the packed layout's keys: the P cached positions, then the tokens
        keys = jnp.concatenate([jnp.broadcast_to(jnp.arange(src.shape[hook.axes.index("key_pos")]),
                                                 (n_rows, src.shape[hook.axes.index("key_pos")])),
                                plan["tok_pos"]], 1)
    index = tuple((tok.pos[:, :, None] if keys is not None else tok.pos) if a == "pos" else
                  keys[:, None, :] if a == "key_pos" else slice(None) for a in hook.axes)
    new = jnp.moveaxis(src[index], hook.axes.index("pos"), 0)  # [C, B, ...]
    select = _per_token(plan, "seg_layer", tok.seg) == j  # [C, T]
    if by_target:
        want = _per_token(plan, "seg_pos", tok.seg)
        select &= (want < 0) | (tok.pos == want)
    select = _align(select, ("row", "pos"), axes)
    if by_target and "head" in hook.axes:
        want = _per_token(plan, "seg_head", tok.seg)[:, :, None]  # [C, T, 1]
        heads = jnp.arange(x.shape[hook.axes.index("head")])
        select = select & _align((want < 0) | (heads == want), ("row", "pos", "head"), axes)
    if keys is not None:  # keys a query does not see keep their (masked) value
        select = select & _align(tok.mask, ("row", "batch", "pos", "key_pos"), axes)
    xs = x.reshape((n_rows, -1) + x.shape[1:])
    return jnp.where(select, new.astype(x.dtype), xs).reshape(x.shape)


class _Patch(Handler):
    """Inside layer ``j``: tokens enter at their target's layer (``hook_resid_pre``), and the
    component ``hook`` is patched from the source."""

    def __init__(self, hook: HookSpec, base: BaseRun, source: Array, plan: dict, j: Array,
                 tokens: Tokens, queries: Tokens | None):
        self.hook, self.base, self.source, self.plan, self.j = hook, base, source, plan, j
        self.tokens, self.queries = tokens, queries

    def wants(self, name: str) -> bool:
        s = spec(name)
        return s is not None and s.name in (RESID_PRE.name, self.hook.name)

    def handle(self, site, x, frames_above):
        hook = BY_NAME.get(site.suffix)
        if hook is None or not self.wants(hook.name):
            return x
        tok = self.tokens if self.queries is None or hook.at_keys else self.queries
        at = jax.lax.dynamic_index_in_dim
        if hook is RESID_PRE:
            x = replace(hook, x, at(self.base.resid_pre, self.j, keepdims=False), self.plan, self.j, tok, False)
        if hook is self.hook:
            x = replace(hook, x, at(self.source, self.j, keepdims=False), self.plan, self.j, tok, True)
        return x


def run_chunk(model: HookedTransformer, base: BaseRun, source: Array, plan: dict, metric: Any,
              suffix: str, read: tuple[int, ...] | None) -> Float[Array, "c 2"]:
    """Metric (batch mean) of the two targets packed in each row of one chunk.

    ``read``: the positions the metric reads (``None``: all); the last layer queries only
    there, and only those positions are unembedded.
    """
    hook = BY_NAME[suffix]
    n_pos, batch = base.final.shape[1], base.final.shape[0]
    tok_pos, tok_seg = plan["tok_pos"], plan["tok_seg"]
    n_rows, n_tok = tok_pos.shape

    def flat(a):
        return a.reshape((n_rows * batch,) + a.shape[2:])

    def per_row(a):  # [C, ...] -> [C*B, ...], each row for every prompt of the batch
        return flat(jnp.broadcast_to(a[:, None], (n_rows, batch) + a.shape[1:]))

    mask = token_mask(plan, base.valid, n_pos)
    tokens = Tokens(tok_pos, tok_seg, mask)
    positions = flat(jnp.moveaxis(base.positions[:, tok_pos], 0, 1))
    start, offset = plan["seg_start"][:, :2, None], plan["seg_offset"][:, :2, None]  # [C, 2, 1]
    queries, index = None, None
    if read is not None:  # each segment's tokens at the read positions (clipped where not recomputed)
        m = jnp.asarray(read, jnp.int32)
        q_pos = jnp.broadcast_to(jnp.tile(m, 2), (n_rows, 2 * len(read)))
        q_seg = jnp.broadcast_to(jnp.repeat(jnp.arange(2, dtype=jnp.int32), len(read)), q_pos.shape)
        index = jnp.clip((offset + m - start).reshape(n_rows, -1), 0, n_tok - 1)  # [C, 2|M|]
        rows = jnp.take_along_axis(mask, index[:, None, :, None], axis=2)
        queries = Tokens(q_pos, q_seg, rows)

    def edit(j, q):
        return _Patch(hook, base, source, plan, j, tokens, None if q is None else queries)

    x = jnp.zeros((n_rows * batch, n_tok, model.cfg.d_model), base.final.dtype)
    x, _ = run_layers(model, x, positions, flat(mask), start=plan["first_layer"], cache=base.kv,
                      read=None if index is None else per_row(index), edit=edit)
    q = jnp.arange(n_pos) if read is None else jnp.asarray(read)
    if read is None:  # each target's final residual: base before its start, recomputed after
        x = x.reshape(n_rows, batch, n_tok, -1)
        take = jnp.clip(offset + q - start, 0, n_tok - 1)  # [C, 2, P]
        x = jax.vmap(lambda s, i: s[:, i])(x, take)  # [C, B, 2, P, d]
    else:
        x = x.reshape(n_rows, batch, 2, len(read), -1)
    x = jnp.where((q >= start)[:, None, :, :, None], x, base.final[:, q][None, :, None])
    x = jnp.moveaxis(x, 2, 1)  # [C, 2, B, |q|, d]

    def measure(resid):
        return batch_mean(metric, logits_at(model, resid, read, n_pos))

    return jax.vmap(jax.vmap(measure))(x)


def changed(base: Array, source: Array, hook: HookSpec) -> Array:
    """Where patching the source in can change anything: ``[L, P, H]`` (``H`` = 1 without a
    head axis), true where the stacked activations ``[L, B, ...]`` differ at that layer,
    position and head (any example, any other axis)."""
    axes = ("layer",) + hook.axes
    diff = base != source
    keep = tuple(a for a in axes if a in ("layer", "pos", "head"))
    diff = diff.any(axis=tuple(i for i, a in enumerate(axes) if a not in keep))
    return _align(diff, keep, ("layer", "pos", "head"))


run_chunk_jit = eqx.filter_jit(run_chunk)
changed_jit = eqx.filter_jit(changed)
