"""Transformer configuration, with TransformerLens field names.

One frozen dataclass describes every family jaxinterp runs: GPT-2 (learned positions,
LayerNorm, GELU), GPT-NeoX / Pythia (partial rotary, parallel attention and MLP), Llama
style (RMSNorm, rotary, SwiGLU, grouped-query attention) and attention-only models.
Derived sizes are properties; a new variant is a new preset function, not a new flag.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from jaxinterp.errors import ConfigError

ActFn = Literal["gelu_new", "gelu", "gelu_fast", "relu", "silu"]
Norm = Literal["LN", "RMS", None]
PosEmbed = Literal["standard", "rotary", "none"]

_ACTS = ("gelu_new", "gelu", "gelu_fast", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of a decoder-only transformer.

    Attributes follow TransformerLens: ``d_model, n_layers, n_heads, d_head, d_mlp,
    d_vocab, n_ctx``. ``d_mlp=None`` or ``attn_only=True`` gives an attention-only model;
    ``n_layers=0`` is the direct path (embed then unembed). ``n_key_value_heads`` below
    ``n_heads`` is grouped-query attention.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None
    act_fn: ActFn = "gelu_new"
    normalization_type: Norm = "LN"
    eps: float = 1e-5
    positional_embedding_type: PosEmbed = "standard"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    n_key_value_heads: int | None = None
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    attn_only: bool = False
    tied_embeddings: bool = False
    use_attn_bias: bool = True  # b_Q, b_K, b_V, b_O
    use_mlp_bias: bool = True  # b_in, b_out
    use_unembed_bias: bool = False  # b_U
    final_norm: bool = True
    attn_scale: float | None = None  # defaults to sqrt(d_head)
    init_range: float = 0.02
    dtype: str = "float32"
    original_architecture: str | None = None
    model_name: str = "custom"

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(f"Invalid TransformerConfig: {msg}")

        for name in ("d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.n_layers >= 0, f"n_layers must be >= 0, got {self.n_layers}")
        need(self.act_fn in _ACTS, f"act_fn must be one of {_ACTS}, got {self.act_fn!r}")
        need(
            self.normalization_type in ("LN", "RMS", None),
            f"normalization_type must be 'LN', 'RMS' or None, got {self.normalization_type!r}",
        )
        need(
            self.positional_embedding_type in ("standard", "rotary", "none"),
            "positional_embedding_type must be 'standard', 'rotary' or 'none', "
            f"got {self.positional_embedding_type!r}",
        )
        need(
            self.n_heads % self.n_kv_heads == 0,
            f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads ({self.n_kv_heads})",
        )
        if self.has_mlp:
            need(self.d_mlp is not None and self.d_mlp > 0, "d_mlp must be set unless attn_only")
        if self.positional_embedding_type == "rotary":
            rd = self.rotary_dim_
            need(0 < rd <= self.d_head and rd % 2 == 0, f"rotary_dim must be even and <= d_head, got {rd}")
        need(self.dtype in ("float32", "bfloat16", "float16"), f"dtype {self.dtype!r} not supported")

    # Derived sizes -------------------------------------------------------------
    @property
    def has_mlp(self) -> bool:
        return not self.attn_only and self.d_mlp is not None

    @property
    def n_kv_heads(self) -> int:
        return self.n_key_value_heads or self.n_heads

    @property
    def rotary_dim_(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.d_head

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.d_head**0.5

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**d)


# Presets: small functions, one per family --------------------------------------


def _preset(defaults: dict, overrides: dict) -> TransformerConfig:
    """Preset defaults, any of which a caller may override by keyword."""
    return TransformerConfig(**(defaults | overrides))


def gpt2_config(d_model=768, n_layers=12, n_heads=12, d_vocab=50257, n_ctx=1024, **kw):
    """GPT-2: learned positions, LayerNorm, tanh-GELU MLP of width 4 d_model."""
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=4 * d_model, d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new",
        normalization_type="LN", original_architecture="GPT2LMHeadModel",
    ), kw)


def neox_config(d_model=512, n_layers=6, n_heads=8, d_vocab=50304, n_ctx=2048, rotary_pct=0.25, **kw):
    """GPT-NeoX / Pythia: partial rotary, parallel attention + MLP, exact GELU."""
    d_head = kw.get("d_head", d_model // n_heads)
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="rotary", rotary_dim=int(d_head * rotary_pct),
        parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM",
    ), kw)


def llama_config(d_model=576, n_layers=30, n_heads=9, n_key_value_heads=3, d_mlp=1536,
                 d_vocab=49152, n_ctx=2048, rotary_base=100000.0, eps=1e-5, **kw):
    """Llama style: RMSNorm, full rotary, SwiGLU, grouped-query attention, no biases.

    The defaults are SmolLM2-135M's shape.
    """
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=d_mlp, d_vocab=d_vocab, n_ctx=n_ctx, act_fn="silu", normalization_type="RMS",
        eps=eps, positional_embedding_type="rotary", rotary_base=rotary_base,
        n_key_value_heads=n_key_value_heads, gated_mlp=True, use_attn_bias=False,
        use_mlp_bias=False, tied_embeddings=True, original_architecture="LlamaForCausalLM",
    ), kw)


def attn_only_config(n_layers=2, d_model=256, n_heads=8, d_vocab=512, n_ctx=256, **kw):
    """Attention-only transformer of the circuits papers (0 to N layers)."""
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_model // n_heads,
        d_vocab=d_vocab, n_ctx=n_ctx, attn_only=True,
    ), kw)
