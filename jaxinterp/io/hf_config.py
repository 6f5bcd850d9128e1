"""Hugging Face ``config.json`` -> :class:`TransformerConfig`, one small function per family.

The families differ in names (``n_embd`` vs ``hidden_size``) and in a few switches that
map onto TransformerLens's config fields:

* **Attention layout.** ``layer_types`` lists ``"sliding_attention"`` / ``"full_attention"``
  per layer (Gemma 2/3, Qwen2/3); older configs imply it (Gemma 2 alternates starting
  local, Gemma 3 has ``sliding_window_pattern`` = 6, Qwen uses ``use_sliding_window`` and
  ``max_window_layers``; Mistral and Phi-3 slide on every layer when ``sliding_window``
  is set). A sliding layer becomes ``"local"`` with ``window_size = sliding_window``.
* **Rotary.** ``rope_parameters`` (transformers 5) or ``rope_theta`` / ``rope_scaling``
  (older files), per layer type for Gemma 3 (``rope_local_base_freq`` before). The
  default and the ``linear`` type (positions divided by ``factor``, on global layers)
  are implemented; any other type raises :class:`ConfigError` naming the field.
* **Gemma.** ``query_pre_attn_scalar`` -> ``attn_scale = sqrt(.)``, the two
  soft-capping values, post-norms, embeddings scaled by ``sqrt(hidden_size)``.

Anything a config asks for that the model does not implement is refused here, with the
field named, before a single weight is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jaxinterp.errors import ConfigError
from jaxinterp.models.config import TransformerConfig

_MODEL_TYPES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(_MODEL_TYPES.values())
LLAMA_LIKE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
              "Phi3ForCausalLM")
GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
_ACTS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu",
         "gelu_fast": "gelu_fast", "relu": "relu", "silu": "silu", "swish": "silu"}
_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def hf_architecture(config: Mapping) -> str:
    """The supported architecture a ``config.json`` names, or a :class:`ConfigError`."""
    names = list(config.get("architectures") or [])
    if not names and config.get("model_type") in _MODEL_TYPES:
        names = [_MODEL_TYPES[config["model_type"]]]
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = names or config.get("model_type")
    raise ConfigError(f"Unsupported Hugging Face architecture {found!r}; supported: "
                      f"{', '.join(SUPPORTED_ARCHITECTURES)}.")


class _Fields:
    """Reads fields of one config, naming the architecture and field in every error."""

    def __init__(self, arch: str, config: Mapping):
        self.arch, self.config = arch, config

    def __call__(self, key: str, default: Any = ConfigError) -> Any:
        if self.config.get(key) is None:
            if default is ConfigError:
                raise ConfigError(f"config.json for {self.arch} lacks the field {key!r}.")
            return default
        return self.config[key]

    def act(self, *keys: str, default: str) -> str:
        key = next((k for k in keys if self.config.get(k) is not None), keys[0])
        name = self(key, default)
        if name not in _ACTS:
            raise ConfigError(f"{self.arch}: {key}={name!r} is not supported; use one of {sorted(_ACTS)}.")
        return _ACTS[name]

    def refuse(self, key: str, why: str, ok: Callable[[Any], bool] = lambda v: not v) -> None:
        if not ok(self.config.get(key)):
            raise ConfigError(f"{self.arch}: {key}={self.config.get(key)!r} is not implemented ({why}).")


def config_from_hf(config: Mapping, *, dtype: str = "float32") -> TransformerConfig:
    """Translate a Hugging Face ``config.json`` dict into a :class:`TransformerConfig`."""
    arch = hf_architecture(config)
    get = _Fields(arch, config)
    common = dict(original_architecture=arch, dtype=dtype,
                  model_name=str(config.get("_name_or_path") or "hf-model"))
    if arch == "GPT2LMHeadModel":
        return _gpt2(get, common)
    if arch == "GPTNeoXForCausalLM":
        return _neox(get, common)
    if arch == "GPTJForCausalLM":
        return _gptj(get, common)
    return _llama_or_gemma(get, common)


def _gpt2(get: _Fields, common: dict) -> TransformerConfig:
    get.refuse("scale_attn_by_inverse_layer_idx", "attention scaled by layer index")
    d, H = get("n_embd"), get("n_head")
    return TransformerConfig(
        d_model=d, n_layers=get("n_layer"), n_heads=H, d_head=d // H,
        d_mlp=get("n_inner", 4 * d), d_vocab=get("vocab_size"), n_ctx=get("n_positions"),
        act_fn=get.act("activation_function", default="gelu_new"),
        eps=get("layer_norm_epsilon", 1e-5), tied_embeddings=get("tie_word_embeddings", True),
        attn_scale=None if get("scale_attn_weights", True) else 1.0, **common)


def _neox(get: _Fields, common: dict) -> TransformerConfig:
    d, H = get("hidden_size"), get("num_attention_heads")
    rope = _rope(get, get.config, "rope_parameters", default_factor=0.25)
    return TransformerConfig(
        d_model=d, n_layers=get("num_hidden_layers"), n_heads=H, d_head=d // H,
        d_mlp=get("intermediate_size"), d_vocab=get("vocab_size"),
        n_ctx=get("max_position_embeddings"), act_fn=get.act("hidden_act", default="gelu"),
        eps=get("layer_norm_eps", 1e-5), positional_embedding_type="rotary",
        rotary_dim=int(d // H * rope["factor"]), rotary_base=rope["theta"],
        rotary_scaling_factor=rope["linear"], parallel_attn_mlp=get("use_parallel_residual", True),
        tied_embeddings=get("tie_word_embeddings", False),
        use_attn_bias=get("attention_bias", True), **common)


def _gptj(get: _Fields, common: dict) -> TransformerConfig:
    d, H = get("n_embd"), get("n_head")
    return TransformerConfig(
        d_model=d, n_layers=get("n_layer"), n_heads=H, d_head=d // H, d_mlp=get("n_inner", 4 * d),
        d_vocab=get("vocab_size"), n_ctx=get("n_positions"),
        act_fn=get.act("activation_function", default="gelu_new"),
        eps=get("layer_norm_epsilon", 1e-5), positional_embedding_type="rotary",
        rotary_dim=get("rotary_dim", d // H), rotary_adjacent_pairs=True, parallel_attn_mlp=True,
        use_attn_bias=False, use_unembed_bias=True,
        tied_embeddings=get("tie_word_embeddings", False), **common)


def _llama_or_gemma(get: _Fields, common: dict) -> TransformerConfig:
    """Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3."""
    arch = get.arch
    gemma = arch in GEMMA
    get.refuse("mlp_bias", "no gate bias in jaxinterp")
    get.refuse("use_bidirectional_attention", "bidirectional attention")
    d, H = get("hidden_size"), get("num_attention_heads")
    d_head = get("head_dim", None) or d // H
    if get("head_dim", None) is None and d_head * H != d:
        raise ConfigError(f"{arch}: hidden size {d} is not divisible by the number of heads {H}.")
    n_layers = get("num_hidden_layers")
    window, attn_types = _attention_layout(get, n_layers)
    global_rope, local_rope = _rope_by_layer_type(get)
    if window is not None and "local" in (attn_types or ("local",)) and local_rope["linear"] != 1.0:
        raise ConfigError(f"{arch}: linear rope scaling (rope_parameters/rope_scaling factor "
                          f"{local_rope['linear']}) is implemented on global layers only, and this "
                          "model has sliding-window layers.")
    extra: dict = {}
    if gemma:
        scalar = get("query_pre_attn_scalar", d_head)
        extra = dict(attn_scale=float(scalar) ** 0.5, use_normalization_before_and_after=True,
                     attn_scores_soft_cap=get("attn_logit_softcapping", None),
                     output_logits_soft_cap=get("final_logit_softcapping", None),
                     embed_scale=float(d) ** 0.5, use_qk_norm=arch == "Gemma3ForCausalLM")
    elif arch == "Qwen3ForCausalLM":
        extra = dict(use_qk_norm=True)
    return TransformerConfig(
        d_model=d, n_layers=n_layers, n_heads=H, d_head=d_head, d_mlp=get("intermediate_size"),
        d_vocab=get("vocab_size"), n_ctx=get("max_position_embeddings"),
        act_fn=get.act("hidden_activation", "hidden_act", default="gelu_pytorch_tanh" if gemma else "silu"),
        normalization_type="RMS", eps=get("rms_norm_eps", 1e-6), positional_embedding_type="rotary",
        rotary_dim=_rotary_dim(d_head, global_rope["factor"]), rotary_base=global_rope["theta"],
        rotary_base_local=local_rope["theta"] if local_rope is not global_rope else None,
        rotary_scaling_factor=global_rope["linear"], window_size=window, attn_types=attn_types,
        n_key_value_heads=get("num_key_value_heads", H), gated_mlp=True,
        use_attn_bias=arch == "Qwen2ForCausalLM" or get("attention_bias", False),
        use_mlp_bias=False, tied_embeddings=get("tie_word_embeddings", gemma), **extra, **common)


def _rotary_dim(d_head: int, factor: float) -> int | None:
    """Rotary dims per head (``None``: all of them, as the presets say it)."""
    return None if int(d_head * factor) == d_head else int(d_head * factor)


def _attention_layout(get: _Fields, n_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    """``(window_size, attn_types)`` from ``layer_types`` / ``sliding_window`` and friends."""
    arch, config = get.arch, get.config
    window = get("sliding_window", None)
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and not get("use_sliding_window", False):
        window = None
    kinds = config.get("layer_types")
    if kinds is None:
        if arch in ("MistralForCausalLM", "Phi3ForCausalLM"):
            return window, None  # every layer slides when a window is set
        if arch == "Gemma2ForCausalLM":
            kinds = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        elif arch == "Gemma3ForCausalLM":
            every = get("sliding_window_pattern", 6)
            kinds = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layers)]
        elif arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and window is not None:
            first = get("max_window_layers", n_layers)
            kinds = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
        else:
            return None, None
    bad = sorted({k for k in kinds if k not in _LAYER_TYPES})
    if bad or len(kinds) != n_layers:
        raise ConfigError(f"{arch}: layer_types {bad or kinds} is not implemented; expected "
                          f"{n_layers} entries of {sorted(_LAYER_TYPES)}.")
    if window is None:  # sliding layers without a window attend to everything
        return None, None
    return window, tuple(_LAYER_TYPES[k] for k in kinds)


def _rope_by_layer_type(get: _Fields) -> tuple[dict, dict]:
    """Rotary settings of global and local layers (the same dict when they agree)."""
    config = get.config
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and "full_attention" in params:  # per layer type
        full = _rope(get, params["full_attention"] or {}, "rope_parameters.full_attention", 1.0)
        local = _rope(get, params.get("sliding_attention") or {},
                      "rope_parameters.sliding_attention", 1.0)
        return full, local
    full = _rope(get, config, "rope_parameters", 1.0)
    if get.arch == "Gemma3ForCausalLM":  # older files: rope_local_base_freq
        theta = get("rope_local_base_freq", 10000.0)
        return full, dict(theta=float(theta), factor=full["factor"], linear=1.0)
    return full, full


def _rope(get: _Fields, where: Mapping, field: str, default_factor: float) -> dict:
    """``{theta, factor (partial rotary), linear (scaling)}`` from ``where``, which is a
    ``rope_parameters`` entry or a whole config (``rope_parameters`` / ``rope_scaling`` /
    top-level fields). Rotary types other than default and linear are refused."""
    if field == "rope_parameters":  # a whole config: rope_parameters, else rope_scaling
        params = dict(where.get("rope_scaling") or {}) | dict(where.get("rope_parameters") or {})
        if (where.get("rope_parameters") or {}).get("rope_type", "default") == "default" \
                and where.get("rope_scaling"):
            field = "rope_scaling"
    else:
        params = dict(where)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", None):
        raise ConfigError(f"{get.arch}: {field} asks for rope type {kind!r}, which is not "
                          "implemented; jaxinterp supports the default rotary embedding and "
                          "linear scaling.")
    linear = float(params.get("factor", 1.0)) if kind == "linear" else 1.0
    config = get.config
    theta = params.get("rope_theta", config.get("rope_theta", config.get("rotary_emb_base", 10000.0)))
    factor = params.get("partial_rotary_factor",
                        config.get("partial_rotary_factor", config.get("rotary_pct", default_factor)))
    return dict(theta=float(theta), factor=float(factor), linear=linear)
