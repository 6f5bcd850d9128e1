"""A pure functional decoder-only transformer with TransformerLens hook points.

``HookedTransformer`` is an Equinox module: a pytree of arrays plus a static config.
Per-layer weights are stacked on a leading ``n_layers`` axis (``model.blocks.attn.W_Q``
has shape ``[n_layers, n_heads, d_model, d_head]``) and the blocks run under
``lax.scan``, so compile time does not grow with depth. The forward pass is

    x = W_E[tokens] * embed_scale (+ W_pos[positions])   hook_embed, hook_pos_embed
    for each layer: x = block(x)                          blocks.{l}.hook_resid_pre ... resid_post
    logits = soft_cap(ln_final(x) @ W_U + b_U)

Hook names and weight names follow TransformerLens; ``model.hook_names()`` lists them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxinterp.errors import ConfigError, ShapeError, TokenError
from jaxinterp.hooks import scan_layers
from jaxinterp.models import components as C
from jaxinterp.models import tokens as tokens_lib
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.hook_specs import hook_names_for, tag


class HookedTransformer(eqx.Module):
    """Decoder-only transformer; call it on ``tokens [batch, pos]`` to get logits."""

    cfg: TransformerConfig = eqx.field(static=True)
    W_E: Float[Array, "v d"]
    blocks: C.BlockParams
    W_pos: Float[Array, "n_ctx d"] | None = None
    ln_final: C.NormParams | None = None
    W_U: Float[Array, "d v"] | None = None  # None when tied to W_E
    b_U: Float[Array, " v"] | None = None
    # Text handling (static: the model stays a pytree of arrays), see models/tokens.py.
    tokenizer: Any = eqx.field(static=True, default=None)
    default_prepend_bos: bool = eqx.field(static=True, default=False)

    def with_tokenizer(self, tokenizer: Any, prepend_bos: bool | None = None) -> HookedTransformer:
        """A copy carrying ``tokenizer`` (and whether prompts get a BOS by default)."""
        if tokenizer is not None and getattr(tokenizer, "vocab_size", 0) > self.cfg.d_vocab:
            raise ConfigError(f"tokenizer vocabulary ({tokenizer.vocab_size}) is larger than the "
                              f"model's d_vocab ({self.cfg.d_vocab})")
        bos = self.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
        return dataclasses.replace(self, tokenizer=tokenizer, default_prepend_bos=bos)

    def wrap_cache(self, cache: Any) -> Any:
        """The cache ``run_with_cache(model, ...)`` returns: one with TransformerLens's
        residual-stream methods bound to this model (see :mod:`models.residual`)."""
        from jaxinterp.models.residual import ActivationCache

        return ActivationCache.bound(cache, self)

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool | None = None,
                  padding_side: str = "right") -> Int[Array, "batch pos"]:
        """Text to ``[batch, pos]`` ids with this model's tokenizer (see :mod:`models.tokens`)."""
        return tokens_lib.to_tokens(self, text, prepend_bos=prepend_bos, padding_side=padding_side)

    def to_str_tokens(self, tokens: Any, *, prepend_bos: bool | None = None) -> list:
        """Each token of a text or of token ids, as a string."""
        return tokens_lib.to_str_tokens(self, tokens, prepend_bos=prepend_bos)

    def to_string(self, tokens: Any) -> str | list[str]:
        """Token ids back to text (one string per row of a ``[batch, pos]`` array)."""
        return tokens_lib.to_string(self, tokens)

    # TransformerLens-style accessors over the stacked weights -----------------------
    @property
    def W_Q(self):
        return self.blocks.attn.W_Q

    @property
    def W_K(self):
        return self.blocks.attn.W_K

    @property
    def W_V(self):
        return self.blocks.attn.W_V

    @property
    def W_O(self):
        return self.blocks.attn.W_O

    @property
    def W_in(self):
        return self.blocks.mlp.W_in

    @property
    def W_out(self):
        return self.blocks.mlp.W_out

    @property
    def unembed_matrix(self) -> Float[Array, "d v"]:
        return self.W_E.T if self.W_U is None else self.W_U

    def hook_names(self) -> list[str]:
        return hook_names_for(self.cfg)

    def __call__(
        self,
        tokens: Int[Array, "batch pos"] | str | Sequence,
        attention_mask: Int[Array, "batch pos"] | None = None,
        *,
        return_type: str = "logits",
        stop_at_layer: int | None = None,
        remat: bool = False,
    ) -> Array:
        """Logits ``[batch, pos, d_vocab]`` (or the residual stream with ``stop_at_layer``).

        ``attention_mask`` (1 = real token, 0 = padding) supports left- or right-padded
        batches; positions count real tokens only, so a left-padded prompt sees the same
        positions as the unpadded one. ``remat`` recomputes each layer in the backward pass
        to save memory when training. ``tokens`` may also be a string (with a tokenizer),
        a list of ids or a 1-D array: a batch of one.
        """
        tokens = tokens_lib.as_tokens(self, tokens)
        check_tokens(self.cfg, tokens, attention_mask)
        if return_type not in ("logits", "resid"):
            raise ValueError(f"return_type must be 'logits' or 'resid', got {return_type!r}")
        positions, mask = positions_and_mask(tokens, attention_mask)
        x = embed(self, tokens, positions)
        x = run_blocks(self, x, positions, mask, stop=stop_at_layer, remat=remat)
        if stop_at_layer is not None or return_type == "resid":
            return x
        return unembed(self, x)


# Pieces of the forward pass, reusable by patching and generation ------------------


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


def run_blocks(model: HookedTransformer, x, positions, mask, *, start: int = 0,
               stop: int | None = None, remat: bool = False):
    """Runs layers ``start:stop`` of the model on the residual stream ``x``."""
    cfg = model.cfg
    stop = cfg.n_layers if stop is None else stop
    if not 0 <= start <= stop <= cfg.n_layers:
        raise ShapeError(f"layer range {start}:{stop} is outside 0:{cfg.n_layers}")
    params = layer_inputs(model, start, stop)

    def one(h, p_spec):
        p, spec = p_spec
        return C.block(cfg, p, h, positions, mask, spec=spec)[0]

    x, _ = scan_layers(one, x, params, n_layers=stop - start, remat=remat, first_layer=start)
    return x


def layer_inputs(model: HookedTransformer, start: int = 0, stop: int | None = None):
    """``(blocks, specs)`` of layers ``start:stop``: the stacked weights and
    :class:`~jaxinterp.models.components.LayerSpec` that ``scan_layers`` runs over."""
    stop = model.cfg.n_layers if stop is None else stop
    params = (model.blocks, C.layer_specs(model.cfg))
    if (start, stop) != (0, model.cfg.n_layers):
        params = jax.tree.map(lambda a: a[start:stop], params)
    return params


def unembed(model: HookedTransformer, x) -> Float[Array, "b p v"]:
    if model.cfg.final_norm:
        x = C.normalize(model.cfg, model.ln_final, x, "ln_final")
    logits = jnp.einsum("bpd,dv->bpv", x, model.unembed_matrix)
    logits = logits if model.b_U is None else logits + model.b_U
    return C.soft_cap(logits, model.cfg.output_logits_soft_cap)


# Validation, before tracing --------------------------------------------------------


def check_tokens(cfg: TransformerConfig, tokens, attention_mask=None) -> None:
    """Raises a clear error for wrong rank/dtype, too-long sequences, out-of-range ids."""
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 2:
        raise ShapeError(f"tokens must have shape [batch, pos], got {shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ShapeError(f"tokens must be integers, got dtype {tokens.dtype}")
    if shape[1] > cfg.n_ctx:
        raise TokenError(f"sequence length {shape[1]} exceeds the model context n_ctx={cfg.n_ctx}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(shape):
        raise ShapeError(f"attention_mask shape {attention_mask.shape} != tokens shape {shape}")
    if not isinstance(tokens, jax.core.Tracer) and shape[0] * shape[1] > 0:
        host = np.asarray(tokens)  # concrete: check on the host, never inside a trace
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= cfg.d_vocab:
            bad = hi if hi >= cfg.d_vocab else lo
            raise TokenError(f"token id {bad} is out of range for d_vocab={cfg.d_vocab}")


# Initialisation ---------------------------------------------------------------------


def init_transformer(cfg: TransformerConfig, key: jax.Array) -> HookedTransformer:
    """Random weights: normal(0, init_range), output projections scaled by 1/sqrt(2 n_layers).

    One compiled program draws every weight, each as a flat vector (eagerly, every draw
    of a new shape compiles its own program, and XLA compiles the random-bit generator
    for rank-4 shapes several times slower than for vectors: seconds for a tiny model).
    """
    if not isinstance(cfg, TransformerConfig):
        raise ConfigError(f"init_transformer needs a TransformerConfig, got {type(cfg).__name__}")
    return _init(cfg, key)


def _init(cfg: TransformerConfig, key: jax.Array) -> HookedTransformer:
    """Every weight is a slice of ONE flat normal draw. Each random-number op costs XLA
    a large fixed compile time on CPU (more for higher ranks), and every eager op of a
    new shape compiles its own program; so a concrete key draws once and the rest is
    assembled on the host (the same values as under ``jit``, where this runs traced)."""
    sizes: list[int] = []

    def count(shape, std=None):
        sizes.append(math.prod(shape))
        return jnp.zeros(shape, cfg.jnp_dtype)

    jax.eval_shape(lambda: _build(cfg, count, jnp))  # traces only: how many numbers to draw
    flat = jax.random.normal(key, (sum(sizes),))
    xp = jnp if isinstance(flat, jax.core.Tracer) else np
    flat = flat if xp is jnp else np.asarray(flat)
    offsets = iter(np.cumsum([0] + sizes[:-1]).tolist())

    def normal(shape, std=cfg.init_range):
        start = next(offsets)
        return (std * flat[start:start + math.prod(shape)].reshape(shape)).astype(cfg.jnp_dtype)

    model = _build(cfg, normal, xp)
    return model if xp is jnp else jax.tree.map(jnp.asarray, model)


def _build(cfg: TransformerConfig, normal, xp) -> HookedTransformer:
    """The model's parameters: ``normal(shape, std)`` for weights, ``xp`` (numpy or
    jax.numpy) for the constant ones."""
    L, d, H, G, e, v = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_vocab
    dtype = cfg.jnp_dtype
    out_scale = cfg.init_range / math.sqrt(2 * max(L, 1))

    def zeros(shape, on=True):
        return xp.zeros(shape, dtype) if on else None

    def norm(shape, on=True, kind=cfg.normalization_type):
        if kind is None or not on:
            return None
        return C.NormParams(xp.ones(shape, dtype), zeros(shape, kind == "LN"))

    ab = cfg.use_attn_bias
    attn = C.AttnParams(
        W_Q=normal((L, H, d, e)), W_K=normal((L, G, d, e)), W_V=normal((L, G, d, e)),
        W_O=normal((L, H, e, d), out_scale),
        b_Q=zeros((L, H, e), ab), b_K=zeros((L, G, e), ab), b_V=zeros((L, G, e), ab), b_O=zeros((L, d), ab),
        q_norm=norm((L, e), cfg.use_qk_norm, "RMS"), k_norm=norm((L, e), cfg.use_qk_norm, "RMS"),
    )
    mlp = None
    if cfg.has_mlp:
        m, mb = cfg.d_mlp, cfg.use_mlp_bias
        mlp = C.MLPParams(
            W_in=normal((L, d, m)), W_out=normal((L, m, d), out_scale),
            b_in=zeros((L, m), mb), b_out=zeros((L, d), mb),
            W_gate=normal((L, d, m)) if cfg.gated_mlp else None,
        )
    post = cfg.use_normalization_before_and_after
    blocks = C.BlockParams(ln1=norm((L, d)), attn=attn, ln2=norm((L, d), cfg.has_mlp), mlp=mlp,
                           ln1_post=norm((L, d), post), ln2_post=norm((L, d), post and cfg.has_mlp))
    return HookedTransformer(
        cfg=cfg,
        W_E=normal((v, d)),
        blocks=blocks,
        W_pos=normal((cfg.n_ctx, d)) if cfg.positional_embedding_type == "standard" else None,
        ln_final=norm((d,)) if cfg.final_norm else None,
        W_U=None if cfg.tied_embeddings else normal((d, v)),
        b_U=zeros((v,), cfg.use_unembed_bias),
    )


def param_count(model: eqx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))))
