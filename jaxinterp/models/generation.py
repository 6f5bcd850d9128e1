"""Autoregressive generation with a key/value cache, greedy or sampled.

A transformer's keys and values at a position never change once computed, so generation
keeps them in a cache of fixed size ``max_len`` and each step runs the model on the new
tokens only, attending over the whole cache:

    cache = init_kv_cache(cfg, batch, max_len)
    logits, cache = decode_step(model, cache, prompt, attention_mask)   # prefill, one call
    repeat: token = pick(logits[:, -1]); logits, cache = decode_step(model, cache, token)

Slots are written left to right at ``cache.index``; ``cache.mask`` marks slots that hold
real tokens (left padding does not), and ``cache.next_pos`` is each row's next position
id, so a left-padded prompt sees exactly the positions of its unpadded run. The cache has
a static shape, so the whole loop is one ``lax.scan`` over one compiled step. Layers run
under :func:`jaxinterp.hooks.scan_layers`, so ``decode_step`` works under
``run_with_cache`` / ``run_with_hooks``, and :func:`generate` takes ``interventions``
(e.g. a steering vector) applied at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxinterp.errors import ShapeError, TokenError
from jaxinterp.hooks import Intervention, run_with_hooks, scan_layers
from jaxinterp.models import components as C
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.transformer import (
    HookedTransformer,
    check_tokens,
    embed,
    layer_inputs,
    unembed,
)


class KVCache(eqx.Module):
    """Keys and values of every layer for ``max_len`` slots, plus the bookkeeping."""

    k: Float[Array, "l b k g e"]
    v: Float[Array, "l b k g e"]
    mask: Bool[Array, "b k"]  # slot holds a real (non-padding) token
    next_pos: Int[Array, " b"]  # position id of each row's next real token
    index: Int[Array, ""]  # next free slot

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_kv_cache(cfg: TransformerConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens (prompt included)."""
    shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.d_head)
    dtype = cfg.jnp_dtype if dtype is None else dtype
    return KVCache(
        k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch, max_len), bool), next_pos=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def decode_step(
    model: HookedTransformer,
    cache: KVCache,
    tokens: Int[Array, "b q"],
    attention_mask: Int[Array, "b q"] | None = None,
) -> tuple[Float[Array, "b q v"], KVCache]:
    """Runs the model on ``tokens`` (the prompt, or one new token per row) against ``cache``.

    The new keys/values go to slots ``index : index + q``; ``attention_mask`` (1 = real,
    0 = padding) marks padding, which gets no position and is never attended to.

    Returns:
      The logits for ``tokens`` and the updated cache.
    """
    cfg = model.cfg
    b, q = tokens.shape
    if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + q > cache.max_len:
        raise TokenError(f"kv cache is full: {int(cache.index)} + {q} tokens > max_len {cache.max_len}")
    am = jnp.ones((b, q), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    positions = jnp.maximum(cache.next_pos[:, None] + jnp.cumsum(am, axis=-1) - 1, 0)
    slots = jax.lax.dynamic_update_slice(cache.mask, am > 0, (0, cache.index))
    query_slot = cache.index + jnp.arange(q)
    causal = jnp.arange(cache.max_len)[None, :] <= query_slot[:, None]  # [q, k]
    mask = causal[None] & slots[:, None, :]  # [b, q, k]
    key_positions = jnp.maximum(jnp.cumsum(slots, axis=-1) - 1, 0)  # each slot's position id

    def one(x, p_kv):
        (p, spec), (k, v) = p_kv
        return C.block(cfg, p, x, positions, mask, kv=(k, v), cache_index=cache.index, spec=spec,
                       key_positions=key_positions)

    x = embed(model, tokens, positions)
    x, kv = scan_layers(one, x, layer_inputs(model), n_layers=cfg.n_layers, extra=(cache.k, cache.v))
    k, v = (cache.k, cache.v) if kv is None else kv
    new = KVCache(k, v, slots, cache.next_pos + am.sum(-1), cache.index + q)
    return unembed(model, x), new


def sample_logits(
    logits: Float[Array, "b v"],
    key: jax.Array | None,
    temperature: float | Array = 0.0,
    top_k: int | None = None,
    top_p: float | Array | None = None,
) -> Int[Array, " b"]:
    """Picks one token per row: argmax when ``temperature == 0``, else a sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` tokens and/or the
    smallest set whose probability reaches ``top_p`` (nucleus sampling)."""
    if isinstance(temperature, (int, float)) and temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the better tokens
        keep_sorted = before < top_p  # the best token is always kept
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("max_new_tokens", "greedy", "top_k", "eos_token_id", "pad_token_id"))
def _generate(model, tokens, attention_mask, key, temperature, top_p, interventions, *,
              max_new_tokens, greedy, top_k, eos_token_id, pad_token_id):
    b, p = tokens.shape

    def forward(cache, toks, am=None):
        if interventions:
            return run_with_hooks(decode_step, model, cache, toks, am, interventions=interventions)
        return decode_step(model, cache, toks, am)

    def pick(logits, k):
        return sample_logits(logits, k, 0.0 if greedy else temperature, top_k, top_p)

    cache = init_kv_cache(model.cfg, b, p + max_new_tokens)
    logits, cache = forward(cache, tokens, attention_mask)

    def step(carry, k):
        cache, last_logits, done = carry
        tok = pick(last_logits, k)
        if eos_token_id is not None:
            tok = jnp.where(done, pad_token_id, tok)
            done = done | (tok == eos_token_id)
        logits, cache = forward(cache, tok[:, None])
        return (cache, logits[:, -1], done), tok

    keys = jax.random.split(key, max_new_tokens)
    done = jnp.zeros((b,), bool)
    _, new = jax.lax.scan(step, (cache, logits[:, -1], done), keys)
    return jnp.concatenate([tokens, new.T.astype(tokens.dtype)], axis=1)


def generate(
    model: HookedTransformer,
    tokens: Int[Array, "batch pos"],
    max_new_tokens: int,
    *,
    attention_mask: Int[Array, "batch pos"] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    interventions: Sequence[Intervention] = (),
) -> Int[Array, "batch pos_plus_new"]:
    """Continues each prompt by ``max_new_tokens`` tokens (one compiled program).

    Args:
      model: the transformer.
      tokens: prompts; a batch of different lengths is left-padded, with ``attention_mask``
        (1 = real, 0 = padding) marking the padding.
      max_new_tokens: how many tokens to append.
      temperature: 0 picks the argmax (greedy); above 0, sample (needs ``key``).
      top_k, top_p: restrict sampling to the ``top_k`` most likely tokens / the nucleus of
        probability ``top_p``.
      eos_token_id: a row that emits it is finished and pads with ``pad_token_id``
        (default ``eos_token_id``) from then on.
      interventions: hook interventions applied at every step, prompt included.

    Returns:
      ``[batch, pos + max_new_tokens]`` tokens: the prompts followed by the new tokens.
    """
    cfg = model.cfg
    tokens = jnp.asarray(tokens)
    check_tokens(cfg, tokens, attention_mask)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if tokens.shape[1] == 0:
        raise ShapeError("generate needs a prompt of at least one token")
    if tokens.shape[1] + max_new_tokens > cfg.n_ctx:
        raise TokenError(f"prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} "
                         f"exceeds the model context n_ctx={cfg.n_ctx}")
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if not isinstance(attention_mask, jax.core.Tracer) and not bool(jnp.all(attention_mask[:, -1] > 0)):
            raise ShapeError("generate needs left-padded prompts: attention_mask[:, -1] must be 1 "
                             "for every row (pad on the left, not the right)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    greedy = temperature == 0
    if not greedy and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key: key=jax.random.key(0)")
    if top_k is not None and not 1 <= top_k <= cfg.d_vocab:
        raise ValueError(f"top_k must be in [1, d_vocab={cfg.d_vocab}], got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens == 0:
        return tokens
    return _generate(
        model, tokens, attention_mask, jax.random.PRNGKey(0) if key is None else key,
        jnp.asarray(temperature if not greedy else 1.0, jnp.float32),
        None if top_p is None else jnp.asarray(top_p, jnp.float32), tuple(interventions),
        max_new_tokens=max_new_tokens, greedy=greedy, top_k=top_k, eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
    )
