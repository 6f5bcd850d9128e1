"""The pieces of a transformer block, as pure functions of one layer's parameters.

Shapes use the axis vocabulary of :mod:`jaxinterp.typing`: ``b`` batch, ``q``/``k`` query
and key positions, ``d`` d_model, ``h`` heads, ``g`` key/value heads, ``e`` d_head,
``m`` d_mlp. Every intermediate TransformerLens exposes is tagged with :func:`hook`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxinterp.hooks import is_hooked
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.hook_specs import tag


class NormParams(eqx.Module):
    """LayerNorm / RMSNorm weights. ``w=None`` means folded away (no affine part)."""

    w: Array | None
    b: Array | None = None


class AttnParams(eqx.Module):
    """Attention weights; in a stacked model every leaf has a leading ``n_layers`` axis.

    ``W_K``/``W_V`` have ``n_key_value_heads`` heads (grouped-query attention).
    """

    W_Q: Float[Array, "h d e"]
    W_K: Float[Array, "g d e"]
    W_V: Float[Array, "g d e"]
    W_O: Float[Array, "h e d"]
    b_Q: Float[Array, "h e"] | None = None
    b_K: Float[Array, "g e"] | None = None
    b_V: Float[Array, "g e"] | None = None
    b_O: Float[Array, " d"] | None = None


class MLPParams(eqx.Module):
    """MLP weights. Gated (SwiGLU): ``post = act(x @ W_gate) * (x @ W_in)``."""

    W_in: Float[Array, "d m"]
    W_out: Float[Array, "m d"]
    b_in: Float[Array, " m"] | None = None
    b_out: Float[Array, " d"] | None = None
    W_gate: Float[Array, "d m"] | None = None


class BlockParams(eqx.Module):
    ln1: NormParams | None
    attn: AttnParams
    ln2: NormParams | None = None
    mlp: MLPParams | None = None


def normalize(cfg: TransformerConfig, p: NormParams | None, x: Float[Array, "b p d"], name: str):
    """LayerNorm or RMSNorm, hooking ``{name}.hook_scale`` and ``{name}.hook_normalized``."""
    if cfg.normalization_type is None or p is None:
        return x
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if cfg.normalization_type == "LN":
        x = x - x.mean(-1, keepdims=True)
    scale = tag(f"{name}.hook_scale", jnp.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps))
    x = tag(f"{name}.hook_normalized", x / scale)
    if p.w is not None:
        x = x * p.w.astype(jnp.float32)
    if p.b is not None:
        x = x + p.b.astype(jnp.float32)
    return x.astype(dtype)


def activation(name: str, x: Array) -> Array:
    if name == "gelu_new":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_fast":
        return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))
    if name == "relu":
        return jax.nn.relu(x)
    if name == "silu":
        return jax.nn.silu(x)
    raise ValueError(f"unknown activation {name!r}")


def rotary(cfg: TransformerConfig, x: Float[Array, "b p h e"], positions: Int[Array, "b p"]):
    """Rotary embedding on the first ``rotary_dim`` dims of each head (rotate-half layout,
    as GPT-NeoX and Hugging Face Llama)."""
    rd = cfg.rotary_dim_
    inv_freq = 1.0 / (cfg.rotary_base ** (jnp.arange(0, rd, 2, dtype=jnp.float32) / rd))
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # b p rd/2
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # b p 1 rd
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x_rot, x_pass = x[..., :rd].astype(jnp.float32), x[..., rd:]
    half = rd // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = (x_rot * cos + rotated * sin).astype(x.dtype)
    return jnp.concatenate([out, x_pass], axis=-1)


def _bias(x: Array, b: Array | None) -> Array:
    return x if b is None else x + b


def attention(
    cfg: TransformerConfig,
    p: AttnParams,
    x: Float[Array, "b q d"],
    positions: Int[Array, "b q"],
    mask: Bool[Array, "b q k"],
    kv: tuple[Array, Array] | None = None,
    cache_index: Array | int = 0,
) -> tuple[Float[Array, "b q d"], tuple[Array, Array]]:
    """Multi-head (grouped-query) attention with hooks q, k, v, attn_scores, pattern, z, result.

    Without ``kv`` the keys are the queries' own positions. With a key/value cache
    ``kv = (k_cache, v_cache)`` of shape ``[b, k, g, e]``, this call's keys and values are
    written at ``cache_index`` and attention runs over the whole cache (``mask`` covers it).
    Returns the attention output and the (updated) keys and values.
    """
    q = tag("attn.hook_q", _bias(jnp.einsum("bqd,hde->bqhe", x, p.W_Q), p.b_Q))
    k = tag("attn.hook_k", _bias(jnp.einsum("bkd,gde->bkge", x, p.W_K), p.b_K))
    v = tag("attn.hook_v", _bias(jnp.einsum("bkd,gde->bkge", x, p.W_V), p.b_V))
    if cfg.positional_embedding_type == "rotary":
        q = tag("attn.hook_rot_q", rotary(cfg, q, positions))
        k = tag("attn.hook_rot_k", rotary(cfg, k, positions))
    if kv is not None:
        k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), cache_index, axis=1)
    group = cfg.n_heads // cfg.n_kv_heads
    k_h, v_h = (jnp.repeat(t, group, axis=2) if group > 1 else t for t in (k, v))
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k_h).astype(jnp.float32) / cfg.scale
    scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    scores = tag("attn.hook_attn_scores", scores)
    pattern = tag("attn.hook_pattern", jax.nn.softmax(scores, axis=-1)).astype(x.dtype)
    z = tag("attn.hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v_h))
    if is_hooked("attn.hook_result"):
        result = tag("attn.hook_result", jnp.einsum("bqhe,hed->bqhd", z, p.W_O))
        out = result.sum(axis=2)
    else:
        out = jnp.einsum("bqhe,hed->bqd", z, p.W_O)
    return _bias(out, p.b_O), (k, v)


def mlp(cfg: TransformerConfig, p: MLPParams, x: Float[Array, "b p d"]) -> Float[Array, "b p d"]:
    """GELU/ReLU MLP, or gated (SwiGLU) when ``W_gate`` is present; hooks pre, pre_linear, post."""
    if p.W_gate is not None:
        pre = tag("mlp.hook_pre", jnp.einsum("bpd,dm->bpm", x, p.W_gate))
        pre_linear = tag("mlp.hook_pre_linear", _bias(jnp.einsum("bpd,dm->bpm", x, p.W_in), p.b_in))
        post = activation(cfg.act_fn, pre) * pre_linear
    else:
        pre = tag("mlp.hook_pre", _bias(jnp.einsum("bpd,dm->bpm", x, p.W_in), p.b_in))
        post = activation(cfg.act_fn, pre)
    post = tag("mlp.hook_post", post)
    return _bias(jnp.einsum("bpm,md->bpd", post, p.W_out), p.b_out)


def block(cfg: TransformerConfig, p: BlockParams, x, positions, mask, kv=None, cache_index=0):
    """One transformer block (sequential, or parallel attention+MLP as in GPT-NeoX)."""
    x = tag("hook_resid_pre", x)
    attn_out, kv = attention(cfg, p.attn, normalize(cfg, p.ln1, x, "ln1"), positions, mask, kv, cache_index)
    attn_out = tag("hook_attn_out", attn_out)
    if p.mlp is None:
        return tag("hook_resid_post", x + attn_out), kv
    if cfg.parallel_attn_mlp:
        mlp_out = tag("hook_mlp_out", mlp(cfg, p.mlp, normalize(cfg, p.ln2, x, "ln2")))
        return tag("hook_resid_post", x + attn_out + mlp_out), kv
    x = tag("hook_resid_mid", x + attn_out)
    mlp_out = tag("hook_mlp_out", mlp(cfg, p.mlp, normalize(cfg, p.ln2, x, "ln2")))
    return tag("hook_resid_post", x + mlp_out), kv
