"""Transformer configuration, with TransformerLens field names.

One frozen dataclass describes every family jaxinterp runs: GPT-2 (learned positions,
LayerNorm, GELU), GPT-NeoX / Pythia (partial rotary, parallel attention and MLP), Llama
style (RMSNorm, rotary, SwiGLU, grouped-query attention; Mistral, Qwen2/3, Phi-3), Gemma 2
and 3 (soft-capping, local/global layers, pre- and post-norms), GPT-J and attention-only
models. Derived sizes are properties; a new variant is a new preset function, not a new flag.

Layers may differ in two ways, both fixed by the config: ``attn_types[l]`` is ``"local"``
(attend only to the ``window_size`` most recent positions, the query's own included) or
``"global"``, and local layers use ``rotary_base_local`` when it is set. The model reads
the per-layer values as arrays (:meth:`TransformerConfig.layer_windows`,
:meth:`TransformerConfig.layer_inv_freq`), scanned with the layers' weights, so one
traced layer serves every layer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ConfigError

ActFn = Literal["gelu_new", "gelu", "gelu_fast", "relu", "silu"]
Norm = Literal["LN", "RMS", None]
PosEmbed = Literal["standard", "rotary", "none"]

_ACTS = ("gelu_new", "gelu", "gelu_fast", "relu", "silu")
AttnType = Literal["global", "local"]


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
    # Gemma / GPT-J / Qwen3 variations (TransformerLens names) -----------------------------
    window_size: int | None = None  # local layers attend to this many most recent positions
    attn_types: tuple[AttnType, ...] | None = None  # per layer; None: all local if window_size
    rotary_base_local: float | None = None  # rotary base of local layers (Gemma 3)
    rotary_scaling_factor: float = 1.0  # linear rotary scaling (positions / factor), global layers
    rotary_adjacent_pairs: bool = False  # GPT-J rotates (x[2i], x[2i+1]); else (x[i], x[i+r/2])
    use_qk_norm: bool = False  # RMSNorm over d_head on q and k before rotary (Qwen3, Gemma 3)
    use_normalization_before_and_after: bool = False  # ln1_post / ln2_post on sublayer outputs
    attn_scores_soft_cap: float | None = None  # scores -> cap * tanh(scores / cap)
    output_logits_soft_cap: float | None = None  # logits -> cap * tanh(logits / cap)
    embed_scale: float = 1.0  # hook_embed = W_E[tokens] * embed_scale (Gemma: sqrt(d_model))
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
        if self.attn_types is not None:  # JSON gives a list; the config must stay hashable
            object.__setattr__(self, "attn_types", tuple(self.attn_types))
            need(len(self.attn_types) == self.n_layers,
                 f"attn_types has {len(self.attn_types)} entries for {self.n_layers} layers")
            bad = sorted({t for t in self.attn_types if t not in ("global", "local")})
            need(not bad, f"attn_types entries must be 'global' or 'local', got {bad}")
            need(self.window_size is not None or "local" not in self.attn_types,
                 "attn_types has local layers but window_size is not set")
        # A window longer than the context is allowed: it simply never cuts anything off.
        need(self.window_size is None or self.window_size >= 1,
             f"window_size must be >= 1, got {self.window_size}")
        for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
            cap = getattr(self, name)
            need(cap is None or cap > 0, f"{name} must be positive (or None), got {cap}")
        need(self.rotary_scaling_factor > 0,
             f"rotary_scaling_factor must be positive, got {self.rotary_scaling_factor}")

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
    def layer_attn_types(self) -> tuple[str, ...]:
        """``"local"`` or ``"global"`` for each layer."""
        if self.attn_types is not None:
            return self.attn_types
        return ("local" if self.window_size is not None else "global",) * self.n_layers

    @property
    def has_local_attn(self) -> bool:
        """Whether some layer's window can cut anything off (a window of ``n_ctx`` or more
        never does, as positions stay below ``n_ctx``)."""
        return "local" in self.layer_attn_types and self.window_size < self.n_ctx

    def layer_windows(self) -> np.ndarray:
        """int32[n_layers]: how many recent positions each layer's queries see (a huge
        number for global layers)."""
        big = np.iinfo(np.int32).max
        return np.asarray([self.window_size if t == "local" else big for t in self.layer_attn_types],
                          np.int32)

    def layer_inv_freq(self) -> np.ndarray:
        """float32[n_layers, rotary_dim / 2]: each layer's rotary inverse frequencies,
        ``1 / (base ** (2i / rotary_dim)) / scale`` (scale = ``rotary_scaling_factor`` on
        global layers, 1 on local ones)."""
        rd = self.rotary_dim_ if self.positional_embedding_type == "rotary" else 0
        exponent = np.arange(0, rd, 2, dtype=np.float32) / np.float32(max(rd, 1))
        rows = []
        for kind in self.layer_attn_types:
            local = kind == "local"
            base = self.rotary_base_local if local and self.rotary_base_local is not None else self.rotary_base
            scale = 1.0 if local else self.rotary_scaling_factor
            inv = np.float32(1.0) / (np.float32(base) ** exponent)
            rows.append((inv / np.float32(scale)).astype(np.float32))
        return np.stack(rows) if rows else np.zeros((0, rd // 2), np.float32)

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


def _alternating(n_layers: int, every: int) -> tuple[str, ...]:
    """Local layers with a global one every ``every`` layers (the last of each group)."""
    return tuple("global" if (i + 1) % every == 0 else "local" for i in range(n_layers))


def gemma2_config(d_model=2304, n_layers=26, n_heads=8, n_key_value_heads=4, d_head=256,
                  d_mlp=9216, d_vocab=256000, n_ctx=8192, window_size=4096,
                  query_pre_attn_scalar=256.0, **kw):
    """Gemma 2: local (sliding window) and global layers alternating, attention and output
    soft-capping, RMSNorm before and after each sublayer, GeGLU, embeddings scaled by
    sqrt(d_model). The defaults are Gemma 2 2B's shape."""
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new", normalization_type="RMS", eps=1e-6,
        positional_embedding_type="rotary", rotary_base=10000.0,
        n_key_value_heads=n_key_value_heads, gated_mlp=True, use_attn_bias=False,
        use_mlp_bias=False, tied_embeddings=True, attn_scale=query_pre_attn_scalar**0.5,
        window_size=window_size, attn_types=_alternating(n_layers, 2),
        use_normalization_before_and_after=True, attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0, embed_scale=d_model**0.5,
        original_architecture="Gemma2ForCausalLM",
    ), kw)


def gemma3_config(d_model=1152, n_layers=26, n_heads=4, n_key_value_heads=1, d_head=256,
                  d_mlp=6912, d_vocab=262144, n_ctx=32768, window_size=512,
                  query_pre_attn_scalar=256.0, **kw):
    """Gemma 3: as Gemma 2 with q/k RMSNorm instead of soft-capping, five local layers per
    global one, and a rotary base of 10^4 on local layers, 10^6 on global ones. The
    defaults are Gemma 3 1B's shape."""
    return gemma2_config(
        d_model, n_layers, n_heads, n_key_value_heads, d_head, d_mlp, d_vocab, n_ctx,
        window_size, query_pre_attn_scalar, **(dict(
            attn_types=_alternating(n_layers, 6), rotary_base=1e6, rotary_base_local=1e4,
            use_qk_norm=True, attn_scores_soft_cap=None, output_logits_soft_cap=None,
            original_architecture="Gemma3ForCausalLM") | kw))


def qwen3_config(d_model=1024, n_layers=28, n_heads=16, n_key_value_heads=8, d_head=128,
                 d_mlp=3072, d_vocab=151936, n_ctx=40960, **kw):
    """Qwen3: Llama style with RMSNorm on each head's queries and keys (before rotary).
    The defaults are Qwen3 0.6B's shape."""
    return llama_config(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_key_value_heads=n_key_value_heads,
        d_mlp=d_mlp, d_vocab=d_vocab, n_ctx=n_ctx, **(dict(
            d_head=d_head, rotary_base=1e6, eps=1e-6, use_qk_norm=True,
            original_architecture="Qwen3ForCausalLM") | kw))


def phi3_config(d_model=3072, n_layers=32, n_heads=32, n_key_value_heads=None, d_mlp=8192,
                d_vocab=32064, n_ctx=4096, window_size=2047, **kw):
    """Phi-3: Llama style (its fused qkv and gate_up weights are split on loading), with a
    sliding window on every layer. The defaults are Phi-3 mini 4k's shape."""
    return llama_config(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_key_value_heads=n_key_value_heads or n_heads, d_mlp=d_mlp, d_vocab=d_vocab, n_ctx=n_ctx,
        **(dict(rotary_base=10000.0, tied_embeddings=False, window_size=window_size,
            original_architecture="Phi3ForCausalLM") | kw))


def gptj_config(d_model=4096, n_layers=28, n_heads=16, d_vocab=50400, n_ctx=2048, rotary_dim=64,
                **kw):
    """GPT-J: attention and MLP in parallel from one LayerNorm (``ln2`` holds a copy of
    ``ln1``), rotary on the first ``rotary_dim`` dims of each head in GPT-J's
    adjacent-pairs layout, biased MLP and unembedding. The defaults are GPT-J 6B's shape."""
    return _preset(dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=4 * d_model, d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=rotary_dim,
        rotary_adjacent_pairs=True, parallel_attn_mlp=True, use_attn_bias=False,
        use_unembed_bias=True, original_architecture="GPTJForCausalLM",
    ), kw)
