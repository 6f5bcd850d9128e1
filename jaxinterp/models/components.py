"""The pieces of a transformer block, as pure functions of one layer's parameters.

Shapes use the axis vocabulary of :mod:`jaxinterp.typing`: ``b`` batch, ``q``/``k`` query
and key positions, ``d`` d_model, ``h`` heads, ``g`` key/value heads, ``e`` d_head,
``m`` d_mlp, ``r`` rotary_dim / 2. Every intermediate TransformerLens exposes is tagged
with :func:`~jaxinterp.models.hook_specs.tag`, which reads the hook's axes from the one
registry of hook points (:mod:`jaxinterp.models.hook_specs`).

A block is ``x + attn(ln1(x))`` then ``+ mlp(ln2(.))`` (or both from ``x`` when
``parallel_attn_mlp``); Gemma normalises each sublayer's output too (``ln1_post``,
``ln2_post``) before it is added. What may differ from layer to layer (the attention
window, the rotary frequencies) comes in as a :class:`LayerSpec` of arrays, so one traced
layer serves local and global layers alike under ``lax.scan``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxinterp.errors import ConfigError
from jaxinterp.hooks import is_hooked
from jaxinterp.models import derivatives as D
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
    q_norm: NormParams | None = None  # RMSNorm over d_head (use_qk_norm)
    k_norm: NormParams | None = None


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
    ln1_post: NormParams | None = None  # on the attention output (Gemma)
    ln2_post: NormParams | None = None  # on the MLP output (Gemma)


class LayerSpec(eqx.Module):
    """What differs between the layers of one model, as arrays scanned with the weights.

    ``window``: a query at position ``p`` sees keys at positions ``> p - window`` (a huge
    number on global layers). ``inv_freq``: the rotary inverse frequencies ``[r]``.
    """

    window: Int[Array, ""]
    inv_freq: Float[Array, " r"]


def layer_specs(cfg: TransformerConfig) -> LayerSpec:
    """Every layer's :class:`LayerSpec`, stacked on a leading ``n_layers`` axis."""
    return LayerSpec(jnp.asarray(cfg.layer_windows()), jnp.asarray(cfg.layer_inv_freq()))


def uniform_spec(cfg: TransformerConfig) -> LayerSpec:
    """The one :class:`LayerSpec` of a model whose layers are all alike."""
    one = cfg if cfg.n_layers else cfg.replace(n_layers=1, attn_types=None)
    windows, inv_freq = one.layer_windows(), one.layer_inv_freq()
    if (windows != windows[0]).any() or (inv_freq != inv_freq[0]).any():
        raise ConfigError(
            f"{cfg.model_name}: its layers differ (attn_types {cfg.layer_attn_types}); pass each "
            "layer's spec, jax.tree.map(lambda a: a[l], layer_specs(cfg)), to block/attention/rotary")
    return LayerSpec(jnp.asarray(windows[0]), jnp.asarray(inv_freq[0]))


def normalize(cfg: TransformerConfig, p: NormParams | None, x: Float[Array, "... d"], name: str,
              kind: str | None = None):
    """LayerNorm or RMSNorm over the last axis, hooking ``{name}.hook_scale`` and
    ``{name}.hook_normalized``. ``kind`` overrides ``cfg.normalization_type``."""
    kind = cfg.normalization_type if kind is None else kind
    if kind is None or p is None:
        return x
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if kind == "LN":
        x = x - x.mean(-1, keepdims=True)
    scale = tag(f"{name}.hook_scale", jnp.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps))
    x = tag(f"{name}.hook_normalized", x / scale)
    if p.w is not None:
        x = x * p.w.astype(jnp.float32)
    if p.b is not None:
        x = x + p.b.astype(jnp.float32)
    return x.astype(dtype)



def activation(name: str, x: Array) -> Array:
    """The MLP nonlinearity; the GELUs and SiLU carry closed-form derivatives (one saved array
    in a backward pass, see :mod:`jaxinterp.models.derivatives`)."""
    if name == "gelu_new":
        return D.gelu_new(x)
    if name == "gelu":
        return D.gelu(x)
    if name == "gelu_fast":
        return D.gelu_fast(x)
    if name == "relu":
        return jax.nn.relu(x)
    if name == "silu":
        return D.silu(x)
    raise ValueError(f"unknown activation {name!r}")


def rotary(cfg: TransformerConfig, x: Float[Array, "b p h e"], positions: Int[Array, "b p"],
           inv_freq: Float[Array, " r"] | None = None):
    """Rotary embedding on the first ``rotary_dim`` dims of each head.

    Pair ``(x_i, x_j)`` turns by the angle ``position * inv_freq[i]``. The pairs are
    ``(i, i + rotary_dim / 2)`` (rotate-half, GPT-NeoX and Hugging Face Llama), or
    ``(2i, 2i + 1)`` with ``cfg.rotary_adjacent_pairs`` (GPT-J).
    """
    rd = cfg.rotary_dim_
    inv_freq = uniform_spec(cfg).inv_freq if inv_freq is None else inv_freq
    angles = (positions[..., None].astype(jnp.float32) * inv_freq)[:, :, None, :]  # b p 1 r
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x_rot, x_pass = x[..., :rd].astype(jnp.float32), x[..., rd:]
    if cfg.rotary_adjacent_pairs:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x_rot.shape)
    else:
        x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2 :]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([out.astype(x.dtype), x_pass], axis=-1)


def soft_cap(x: Array, cap: float | None) -> Array:
    """``cap * tanh(x / cap)``: squashes ``x`` smoothly into ``(-cap, cap)``."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def _bias(x: Array, b: Array | None) -> Array:
    return x if b is None else x + b


def take_tokens(a: Array, index: Int[Array, "b m"] | None) -> Array:
    """``a[:, index]`` per row (``a`` is ``[b, t, ...]``); ``a`` itself when ``index`` is None."""
    if index is None:
        return a
    return jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), axis=1)


def attention(
    cfg: TransformerConfig,
    p: AttnParams,
    x: Float[Array, "b t d"],
    positions: Int[Array, "b t"],
    mask: Bool[Array, "b q k"],
    kv: tuple[Array, Array] | None = None,
    cache_index: Array | int = 0,
    *,
    spec: LayerSpec | None = None,
    key_positions: Int[Array, "b k"] | None = None,
    queries: Int[Array, "b q"] | None = None,
) -> tuple[Float[Array, "b q h e"], tuple[Array, Array]]:
    """Multi-head (grouped-query) attention with hooks q, k, v, attn_scores, pattern, z.

    Every token of ``x`` gives keys and values; the tokens at ``queries`` (indices into
    ``x``'s positions, per row; default all) also query, so ``q`` and everything after it
    cover those tokens only and ``mask`` has one row per query. Without ``kv`` the keys are
    the tokens' own. With a key/value buffer ``kv = (k_buf, v_buf)`` of shape ``[b, k, g,
    e]``, this call's keys and values are written at ``cache_index`` and attention runs
    over the whole buffer (``mask`` covers it; a local layer also needs the buffer's
    ``key_positions``). ``spec`` is this layer's window and rotary frequencies (default:
    the model's, when all its layers are alike). Returns each head's output ``z`` and the
    (updated) keys and values.
    """
    spec = uniform_spec(cfg) if spec is None else spec
    x_q, q_positions = take_tokens(x, queries), take_tokens(positions, queries)
    q = tag("attn.hook_q", _bias(jnp.einsum("bqd,hde->bqhe", x_q, p.W_Q), p.b_Q))
    k = tag("attn.hook_k", _bias(jnp.einsum("bkd,gde->bkge", x, p.W_K), p.b_K))
    v = tag("attn.hook_v", _bias(jnp.einsum("bkd,gde->bkge", x, p.W_V), p.b_V))
    if p.q_norm is not None:
        q = normalize(cfg, p.q_norm, q, "attn.q_norm", kind="RMS")
        k = normalize(cfg, p.k_norm, k, "attn.k_norm", kind="RMS")
    if cfg.positional_embedding_type == "rotary":
        q = tag("attn.hook_rot_q", rotary(cfg, q, q_positions, spec.inv_freq))
        k = tag("attn.hook_rot_k", rotary(cfg, k, positions, spec.inv_freq))
    if kv is not None:
        k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), cache_index, axis=1)
    if cfg.has_local_attn:  # keys within the layer's window of the query (positions count real tokens)
        if kv is not None and key_positions is None:
            raise ConfigError("attention over a key/value cache on a model with local layers needs "
                              "the cache's key_positions")
        key_pos = positions if kv is None else key_positions
        mask = mask & (q_positions[:, :, None] - key_pos[:, None, :] < spec.window)
    group = cfg.n_heads // cfg.n_kv_heads
    k_h, v_h = (jnp.repeat(t, group, axis=2) if group > 1 else t for t in (k, v))
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k_h).astype(jnp.float32) / cfg.scale
    scores = soft_cap(scores, cfg.attn_scores_soft_cap)
    scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    scores = tag("attn.hook_attn_scores", scores)
    pattern = tag("attn.hook_pattern", D.softmax(scores)).astype(x.dtype)
    z = tag("attn.hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v_h))
    return z, (k, v)


def head_results(z: Float[Array, "b q h e"], W_O: Float[Array, "h e d"]) -> Float[Array, "b q h d"]:
    """Each head's write to the residual stream, ``z_h W_O[h]`` (``attn.hook_result``'s
    layout, without ``b_O``)."""
    return jnp.einsum("bqhe,hed->bqhd", z, W_O)


def attn_output(cfg: TransformerConfig, p: BlockParams, z: Float[Array, "b q h e"]) -> Float[Array, "b q d"]:
    """What a block's attention writes to the residual stream from its heads' outputs:
    ``ln1_post(sum_h z_h W_O[h] + b_O)`` (hooks ``attn.hook_result``, when asked for, and
    ``ln1_post``). Path patching calls it with some heads' ``z`` swapped."""
    a = p.attn
    if is_hooked("attn.hook_result"):
        result = tag("attn.hook_result", head_results(z, a.W_O))
        out = result.sum(axis=2)
    else:
        out = jnp.einsum("bqhe,hed->bqd", z, a.W_O)
    return normalize(cfg, p.ln1_post, _bias(out, a.b_O), "ln1_post")


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



def block(cfg: TransformerConfig, p: BlockParams, x, positions, mask, kv=None, cache_index=0, *,
          spec: LayerSpec | None = None, key_positions=None, queries=None):
    """One transformer block (sequential, or parallel attention+MLP as in GPT-NeoX/GPT-J).

    ``spec``, ``kv``, ``cache_index``, ``key_positions`` and ``queries`` are passed to
    :func:`attention`. With ``queries`` the block returns the residual stream at those
    tokens only (the hooks before attention see every token; see ``HookSpec.at_keys``).
    """
    x = tag("hook_resid_pre", x)
    z, kv = attention(cfg, p.attn, normalize(cfg, p.ln1, x, "ln1"), positions, mask, kv, cache_index,
                      spec=spec, key_positions=key_positions, queries=queries)
    x = take_tokens(x, queries)
    attn_out = tag("hook_attn_out", attn_output(cfg, p, z))
    if p.mlp is None:
        return tag("hook_resid_post", x + attn_out), kv
    if not cfg.parallel_attn_mlp:
        x = tag("hook_resid_mid", x + attn_out)
    mlp_out = normalize(cfg, p.ln2_post, mlp(cfg, p.mlp, normalize(cfg, p.ln2, x, "ln2")), "ln2_post")
    mlp_out = tag("hook_mlp_out", mlp_out)
    if cfg.parallel_attn_mlp:
        return tag("hook_resid_post", x + attn_out + mlp_out), kv
    return tag("hook_resid_post", x + mlp_out), kv
