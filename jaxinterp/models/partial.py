"""The forward pass in pieces, and from any layer on: layers ``l..L-1`` at chosen tokens.

Activation, attribution and path patching all re-run the end of a forward pass. A change
at layer ``l`` and position ``s`` leaves every earlier layer, and in a causal model every
earlier position, as the *base* run had it. So a patched run needs only the tokens from
``s`` on, in layers ``l`` on, each layer attending over

    keys/values of layer j = [the base run's, at its P positions] ++ [the tokens' own]

and when the metric reads the logits at a few positions only, the last layer needs keys
and values for every token but queries (attention, MLP) only where it is read, and the
unembedding only there::

    x_{j+1}   = block_j(x_j)                           j = l .. L-2, every token
    x_L[read] = block_{L-1}(x_{L-1}; queries at read)
    logits    = unembed(x_L[read]) at read, zeros elsewhere

:func:`run_layers` is that primitive; the model's own forward (``start = 0``, no cache,
every token) is its simplest case. Each layer gets its weights and its
:class:`~jaxinterp.models.components.LayerSpec` (window, rotary frequencies), and a local
layer masks cached keys by their positions too, so Gemma's alternating layers and
Mistral/Phi-3 windows run from any layer. :func:`base_run` is the run the others continue.

Hooks keep their model-wide names (``blocks.{l}.*``). With ``read``, the last layer's hooks
before attention (``HookSpec.at_keys``: residual, ``ln1``, keys, values) cover every
token and the others the read tokens only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxinterp.errors import ShapeError
from jaxinterp.hooks import Handler, handler_scope, layer_scope, run_with_cache, scan_layers
from jaxinterp.models import components as C
from jaxinterp.models.hook_specs import tag

if TYPE_CHECKING:
    from jaxinterp.models.transformer import HookedTransformer

# A handler for the hooks of one layer, made inside the layer: edit(layer, queries).
Edit = Callable[[Any, Array | None], Handler]


def positions_and_mask(tokens, attention_mask=None):
    """Positions ``[b, p]`` and the causal-and-padding attention mask ``[b, q, k]``."""
    seq = tokens.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))[None]
    if attention_mask is None:
        positions = jnp.broadcast_to(jnp.arange(seq), tokens.shape)
        return positions, causal
    am = jnp.asarray(attention_mask).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(am, axis=-1) - 1, 0)
    return positions, causal & (am[:, None, :] > 0)


def embed(model: HookedTransformer, tokens, positions) -> Float[Array, "b p d"]:
    x = model.W_E[tokens]
    if model.cfg.embed_scale != 1.0:  # in the weights' dtype, as Gemma
        x = x * jnp.asarray(model.cfg.embed_scale, x.dtype)
    x = tag("hook_embed", x)
    if model.cfg.positional_embedding_type == "standard":
        x = x + tag("hook_pos_embed", model.W_pos[positions])
    return x


def unembed(model: HookedTransformer, x) -> Float[Array, "b p v"]:
    return _project(model, _final_norm(model, x))


def _final_norm(model: HookedTransformer, x) -> Float[Array, "b p d"]:
    return C.normalize(model.cfg, model.ln_final, x, "ln_final") if model.cfg.final_norm else x


def _project(model: HookedTransformer, x) -> Float[Array, "b p v"]:
    """The final-normed residual stream to logits."""
    logits = jnp.einsum("bpd,dv->bpv", x, model.unembed_matrix)
    logits = logits if model.b_U is None else logits + model.b_U
    return C.soft_cap(logits, model.cfg.output_logits_soft_cap)


def layer_inputs(model: HookedTransformer, start: int = 0, stop: int | None = None):
    """``(blocks, specs)`` of layers ``start:stop``: the stacked weights and
    :class:`~jaxinterp.models.components.LayerSpec` that ``scan_layers`` runs over."""
    stop = model.cfg.n_layers if stop is None else stop
    params = (model.blocks, C.layer_specs(model.cfg))
    if (start, stop) != (0, model.cfg.n_layers):
        params = jax.tree.map(lambda a: a[start:stop], params)
    return params


class KeysValues(eqx.Module):
    """Every layer's attention keys and values of a run (as attention used them: after
    q/k norm and rotary) and the positions they sit at. Its batch may be smaller than
    the tokens continuing it: continuing row ``i`` reads row ``i % batch``."""

    k: Float[Array, "L b p g e"]
    v: Float[Array, "L b p g e"]
    positions: Int[Array, "b p"]


def _layer(a: Any, j: Any) -> Any:
    """Layer ``j`` (an int or a traced one) of a pytree stacked over layers."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, keepdims=False), a)


def _tile(a: Array, batch: int) -> Array:
    """Rows ``i % len(a)`` of ``a`` for ``batch`` rows (``batch`` a multiple of ``len(a)``)."""
    reps = batch // a.shape[0]
    return a if reps == 1 else jnp.tile(a, (reps,) + (1,) * (a.ndim - 1))


def run_layers(
    model: HookedTransformer,
    x: Float[Array, "b t d"],
    positions: Int[Array, "b t"],
    mask: Bool[Array, "b t k"],
    *,
    start: int | Int[Array, ""] = 0,
    stop: int | None = None,
    cache: KeysValues | None = None,
    read: Int[Array, "b m"] | None = None,
    edit: Edit | None = None,
    remat: bool = False,
    unroll: int = 1,
) -> tuple[Float[Array, "b t d"], tuple[Array, Array] | None]:
    """Runs layers ``start..stop-1`` on the residual stream ``x`` of tokens at ``positions``.

    Args:
      model: the transformer.
      x: the residual stream entering layer ``start``, one row per sequence.
      positions: each token's position (rotary, windows; its row of ``cache`` has the rest).
      mask: which keys each token sees: ``[b, t, t]`` (the tokens themselves), or with a
        cache ``[b, t, P + t]`` (the cache's ``P`` positions, then the tokens).
      start: first layer, an int or a traced one (then the layers run in a ``fori_loop``
        and one compiled program serves every start; keys/values are not returned).
      stop: one past the last layer (default all).
      cache: keys/values of a base run the tokens continue (see :class:`KeysValues`).
      read: ``[b, m]`` indices of tokens: the last layer queries only there and the
        result is the residual stream at them, ``[b, m, d]``.
      edit: ``edit(layer, queries)`` returns a :class:`~jaxinterp.hooks.Handler`
        installed inside each layer (``queries`` is ``read`` in the last layer, else None).
        Plain hooks transforms around the call work too when ``start`` is an int.
      remat: rematerialise each layer in the backward pass.
      unroll: layers per scan step.

    Returns:
      ``(x, (k, v))``: the residual stream after layer ``stop - 1`` (at ``read``, when
      given) and the keys and values of each layer run, ``[n, b, k, g, e]`` (with a cache
      the whole buffer), or ``None`` for a traced ``start``.
    """
    cfg = model.cfg
    stop = cfg.n_layers if stop is None else stop
    traced = not isinstance(start, int)
    if not traced and not 0 <= start <= stop <= cfg.n_layers:
        raise ShapeError(f"layer range {start}:{stop} is outside 0:{cfg.n_layers}")
    if read is not None and not (traced or start < stop):
        raise ShapeError("read= needs at least one layer to run")
    specs = C.layer_specs(cfg)
    key_positions, n_cached = None, 0
    if cache is not None:
        n_cached = cache.k.shape[2]
        key_positions = jnp.concatenate([_tile(cache.positions, x.shape[0]), positions], 1)

    def layer(j, p, spec, h, queries=None):
        kv = None
        if cache is not None:  # the base run's keys/values, then room for the tokens' own
            kv = tuple(jnp.concatenate([_tile(_layer(a, j), h.shape[0]),
                                        jnp.zeros(h.shape[:2] + a.shape[3:], a.dtype)], 1)
                       for a in (cache.k, cache.v))
        rows = mask if queries is None else C.take_tokens(mask, queries)
        with handler_scope(edit(j, queries)) if edit is not None else contextlib.nullcontext():
            return C.block(cfg, p, h, positions, rows, kv, n_cached, spec=spec,
                           key_positions=key_positions, queries=queries)

    last = stop - (read is not None)  # the layers before it run on every token
    kv = None
    if traced:
        def body(j, h):
            with layer_scope("blocks", j, cfg.n_layers):
                return layer(j, _layer(model.blocks, j), _layer(specs, j), h)[0]

        x = jax.lax.fori_loop(start, last, body, x)
    elif last > start:
        n, whole = last - start, (start, last) == (0, cfg.n_layers)

        def one(h, xs):  # the whole model scans its weights; a part indexes them (no copy)
            params, j = xs
            p, spec = params if whole else (_layer(model.blocks, j), _layer(specs, j))
            return layer(j, p, spec, h)

        index = jnp.arange(start, last)
        x, kv = scan_layers(one, x, layer_inputs(model) if whole else index, n_layers=n,
                            first_layer=start, extra=index, remat=remat, unroll=unroll)
    if read is not None:
        j = stop - 1
        with layer_scope("blocks", j):
            x, kv_last = layer(j, _layer(model.blocks, j), _layer(specs, j), x, read)
        if not traced:
            kv = tuple(b[None] if kv is None else jnp.concatenate([a, b[None]])
                       for a, b in zip(kv or (None, None), kv_last, strict=True))
    return x, kv


def logits_at(model: HookedTransformer, x: Float[Array, "b m d"], read: Sequence[int] | None,
              n_pos: int) -> Float[Array, "b n_pos v"]:
    """Logits for ``n_pos`` positions from the residual stream at the ``read`` ones.

    ``read`` (sorted ints): ``x`` holds those positions; the others' logits are zeros, so
    only the read positions are unembedded (a metric must read nothing else). ``None``:
    ``x`` holds every position, unembedded in groups so that, under ``jit``, groups that
    nothing reads compile away. The groups are one ``lax.split``, whose transpose is one
    concatenation: slicing each group instead would transpose to one full-size padded
    cotangent per group, summed (with the weights traced, XLA cannot drop the unread
    groups' zero products).
    """
    if read is None:  # the final norm once (its hooks see every position), the projection by groups
        groups = jax.lax.split(_final_norm(model, x), [b - a for a, b in position_groups(n_pos)], axis=1)
        return jnp.concatenate([_project(model, g) for g in groups], 1)
    logits = unembed(model, x)
    b, v = logits.shape[0], logits.shape[-1]
    parts, at = [], 0
    for i, p in enumerate(read):
        if p > at:
            parts.append(jnp.zeros((b, p - at, v), logits.dtype))
        parts.append(logits[:, i:i + 1])
        at = p + 1
    if at < n_pos:
        parts.append(jnp.zeros((b, n_pos - at, v), logits.dtype))
    return jnp.concatenate(parts, 1)


def position_groups(n_pos: int) -> list[tuple[int, int]]:
    """Slices of positions unembedded separately (each alone up to 64, the last always alone)."""
    if n_pos <= 64:
        return [(p, p + 1) for p in range(n_pos)]
    step = -(-(n_pos - 1) // 32)
    return [(a, min(a + step, n_pos - 1)) for a in range(0, n_pos - 1, step)] + [(n_pos - 1, n_pos)]


class BaseRun(eqx.Module):
    """What a run continuing another reuses: each layer's input residual stream and
    keys/values, the final residual stream, and which tokens are real."""

    resid_pre: Float[Array, "L b p d"]
    kv: KeysValues
    final: Float[Array, "b p d"]
    valid: Bool[Array, "b p"]  # 1 = real token (the attention mask)

    @property
    def positions(self) -> Int[Array, "b p"]:
        return self.kv.positions


def base_run(model: HookedTransformer, tokens: Int[Array, "b p"], attention_mask: Any = None,
             names: Sequence[str] = ()) -> tuple[BaseRun, Any]:
    """One forward pass keeping what :func:`run_layers` continues from, and the cache of
    the hooks ``names`` (patterns, as for ``run_with_cache``)."""
    positions, mask = positions_and_mask(tokens, attention_mask)

    def forward(t):
        return run_layers(model, embed(model, t, positions), positions, mask)

    (final, (k, v)), cache = run_with_cache(forward, tokens, names=["blocks.*.hook_resid_pre", *names])
    valid = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
    run = BaseRun(cache.stacked("blocks.*.hook_resid_pre"), KeysValues(k, v, positions), final, valid)
    return run, cache
