"""Hugging Face configs and weights in jaxinterp's (TransformerLens) layout.

Each supported family is one config function (``config.json`` -> :class:`TransformerConfig`)
and one weight function (flat ``{name: array}`` -> per-layer TransformerLens weights).
The layouts differ only in how the attention projections are packed:

* GPT-2 ``Conv1D`` stores ``[in, out]``; ``c_attn`` is ``[d, 3 d]`` = ``[Q | K | V]``,
  each ``[d, (h e)]``, so ``W_Q = c_attn[:, :d].reshape(d, h, e).transpose(1, 0, 2)``.
* GPT-NeoX ``nn.Linear`` stores ``[out, in]``; ``query_key_value`` is ``[(h 3 e), d]``,
  interleaved per head (the forward views its output as ``[.., h, 3 e]`` and chunks the
  last axis), so ``W_Q = w.reshape(h, 3, e, d)[:, 0].transpose(0, 2, 1)``.
* Llama / Mistral / Qwen2 have separate ``q_proj [(h e), d]`` and ``k_proj, v_proj
  [(g e), d]`` (grouped-query attention), a SwiGLU MLP (``gate_proj`` -> ``W_gate``,
  ``up_proj`` -> ``W_in``) and RMSNorm without bias.

Output projections become ``W_O [h, e, d]``, ``W_in [d, m]``, ``W_out [m, d]`` and the
unembedding ``W_U = lm_head.T [d, v]`` (``None`` when tied to ``W_E``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.models import components as C
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.transformer import HookedTransformer

_MODEL_TYPES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(_MODEL_TYPES.values())
_ACTS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu",
         "gelu_fast": "gelu_fast", "relu": "relu", "silu": "silu", "swish": "silu"}
# Non-weight buffers some checkpoints carry (causal masks, rotary tables).
_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")


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


def config_from_hf(config: Mapping, *, dtype: str = "float32") -> TransformerConfig:
    """Translate a Hugging Face ``config.json`` dict into a :class:`TransformerConfig`."""
    arch = hf_architecture(config)

    def get(key: str, default=ConfigError):
        if config.get(key) is None:
            if default is ConfigError:
                raise ConfigError(f"config.json for {arch} lacks the field {key!r}.")
            return default
        return config[key]

    def act(name: str) -> str:
        if name not in _ACTS:
            raise ConfigError(f"{arch}: activation {name!r} is not supported; use one of {sorted(_ACTS)}.")
        return _ACTS[name]

    gpt2 = arch == "GPT2LMHeadModel"
    d, H = (get("n_embd"), get("n_head")) if gpt2 else (get("hidden_size"), get("num_attention_heads"))
    d_head = get("head_dim", None) or d // H  # only the Llama family sets head_dim
    if d_head * H != d and get("head_dim", None) is None:
        raise ConfigError(f"{arch}: hidden size {d} is not divisible by the number of heads {H}.")
    common = dict(original_architecture=arch, dtype=dtype,
                  model_name=str(config.get("_name_or_path") or "hf-model"))
    if gpt2:
        if get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("GPT2LMHeadModel: scale_attn_by_inverse_layer_idx=True is not supported.")
        return TransformerConfig(
            d_model=d, n_layers=get("n_layer"), n_heads=H, d_head=d // H,
            d_mlp=get("n_inner", 4 * d), d_vocab=get("vocab_size"), n_ctx=get("n_positions"),
            act_fn=act(get("activation_function", "gelu_new")), eps=get("layer_norm_epsilon", 1e-5),
            tied_embeddings=get("tie_word_embeddings", True),
            attn_scale=None if get("scale_attn_weights", True) else 1.0, **common)
    if arch == "GPTNeoXForCausalLM":
        theta, factor = _rope(arch, config, default_factor=0.25)
        return TransformerConfig(
            d_model=d, n_layers=get("num_hidden_layers"), n_heads=H, d_head=d // H,
            d_mlp=get("intermediate_size"), d_vocab=get("vocab_size"),
            n_ctx=get("max_position_embeddings"), act_fn=act(get("hidden_act", "gelu")),
            eps=get("layer_norm_eps", 1e-5), positional_embedding_type="rotary",
            rotary_dim=int(d // H * factor), rotary_base=float(theta),
            parallel_attn_mlp=get("use_parallel_residual", True),
            tied_embeddings=get("tie_word_embeddings", False),
            use_attn_bias=get("attention_bias", True), **common)
    # Llama family: Llama, Mistral, Qwen2.
    if get("mlp_bias", False):
        raise ConfigError(f"{arch}: mlp_bias=True is not supported (no gate bias in jaxinterp).")
    n_ctx = get("max_position_embeddings")
    window = get("sliding_window", None)
    if window and (arch == "MistralForCausalLM" or get("use_sliding_window", False)):
        n_ctx = min(n_ctx, window)  # within the window, sliding attention is full attention
    theta, factor = _rope(arch, config, default_factor=1.0)
    return TransformerConfig(
        d_model=d, n_layers=get("num_hidden_layers"), n_heads=H, d_head=d_head,
        d_mlp=get("intermediate_size"), d_vocab=get("vocab_size"), n_ctx=n_ctx,
        act_fn=act(get("hidden_act", "silu")), normalization_type="RMS",
        eps=get("rms_norm_eps", 1e-6), positional_embedding_type="rotary",
        rotary_dim=int(d_head * factor), rotary_base=float(theta),
        n_key_value_heads=get("num_key_value_heads", H), gated_mlp=True,
        use_attn_bias=arch == "Qwen2ForCausalLM" or get("attention_bias", False),
        use_mlp_bias=False, tied_embeddings=get("tie_word_embeddings", False), **common)


def _rope(arch: str, config: Mapping, default_factor: float) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)`` from ``rope_parameters`` (transformers 5) or
    the older top-level fields; scaled rotary variants are refused."""
    params = dict(config.get("rope_scaling") or {}) | dict(config.get("rope_parameters") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
        raise ConfigError(f"{arch}: rope type {kind!r} is not implemented; jaxinterp supports "
                          "only the default (unscaled) rotary embedding.")
    theta = params.get("rope_theta", config.get("rope_theta", config.get("rotary_emb_base", 10000.0)))
    factor = params.get("partial_rotary_factor",
                        config.get("partial_rotary_factor", config.get("rotary_pct", default_factor)))
    return float(theta), float(factor)


class _Reader:
    """Takes tensors by name, checking shapes; collects every problem, then raises once."""

    def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str, embed: str):
        self.tensors, self.used, self.problems = tensors, set(), []
        has_prefix = prefix + embed in tensors or (embed not in tensors)
        self.prefix = prefix if has_prefix else ""

    def __call__(self, name: str, shape: tuple[int, ...], top: bool = False) -> np.ndarray:
        key = name if top else self.prefix + name
        if key not in self.tensors:
            self.problems.append(f"missing tensor {key} (expected shape {list(shape)})")
            return np.zeros(shape, np.float32)
        self.used.add(key)
        found = self.tensors[key]
        if tuple(found.shape) != tuple(shape):
            self.problems.append(f"tensor {key}: expected shape {list(shape)}, found {list(found.shape)}")
            return np.zeros(shape, np.float32)
        return found

    def finish(self, allowed: Callable[[str], bool] = lambda k: False) -> None:
        unexpected = sorted(k for k in self.tensors
                            if k not in self.used and not _BUFFERS.search(k) and not allowed(k))
        if unexpected:
            shown = ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
            self.problems.append(f"{len(unexpected)} unexpected tensor(s): {shown}")
        if self.problems:
            raise CheckpointError("Checkpoint does not match its config:\n  " + "\n  ".join(self.problems))


def _gpt2(cfg: TransformerConfig, r: _Reader) -> tuple[dict, list[dict]]:
    d, H, e, m, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab

    def heads(w: np.ndarray) -> np.ndarray:  # [d, (h e)] -> [h, d, e]
        return w.reshape(d, H, e).transpose(1, 0, 2)

    layers = []
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        wq, wk, wv = np.split(r(p + "attn.c_attn.weight", (d, 3 * d)), 3, axis=1)
        bq, bk, bv = np.split(r(p + "attn.c_attn.bias", (3 * d,)), 3)
        layers.append({
            "ln1.w": r(p + "ln_1.weight", (d,)), "ln1.b": r(p + "ln_1.bias", (d,)),
            "W_Q": heads(wq), "W_K": heads(wk), "W_V": heads(wv),
            "b_Q": bq.reshape(H, e), "b_K": bk.reshape(H, e), "b_V": bv.reshape(H, e),
            "W_O": r(p + "attn.c_proj.weight", (d, d)).reshape(H, e, d), "b_O": r(p + "attn.c_proj.bias", (d,)),
            "ln2.w": r(p + "ln_2.weight", (d,)), "ln2.b": r(p + "ln_2.bias", (d,)),
            "W_in": r(p + "mlp.c_fc.weight", (d, m)), "b_in": r(p + "mlp.c_fc.bias", (m,)),
            "W_out": r(p + "mlp.c_proj.weight", (m, d)), "b_out": r(p + "mlp.c_proj.bias", (d,)),
        })
    top = {"W_E": r("wte.weight", (V, d)), "W_pos": r("wpe.weight", (cfg.n_ctx, d)),
           "ln_final.w": r("ln_f.weight", (d,)), "ln_final.b": r("ln_f.bias", (d,))}
    if not cfg.tied_embeddings:
        top["W_U"] = r("lm_head.weight", (V, d), top=True).T
    return top, layers


def _neox(cfg: TransformerConfig, r: _Reader) -> tuple[dict, list[dict]]:
    d, H, e, m, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        qkv = r(p + "attention.query_key_value.weight", (3 * d, d)).reshape(H, 3, e, d)
        layer = {
            "ln1.w": r(p + "input_layernorm.weight", (d,)), "ln1.b": r(p + "input_layernorm.bias", (d,)),
            "W_Q": qkv[:, 0].transpose(0, 2, 1), "W_K": qkv[:, 1].transpose(0, 2, 1),
            "W_V": qkv[:, 2].transpose(0, 2, 1),
            "W_O": r(p + "attention.dense.weight", (d, d)).T.reshape(H, e, d),
            "ln2.w": r(p + "post_attention_layernorm.weight", (d,)),
            "ln2.b": r(p + "post_attention_layernorm.bias", (d,)),
            "W_in": r(p + "mlp.dense_h_to_4h.weight", (m, d)).T, "b_in": r(p + "mlp.dense_h_to_4h.bias", (m,)),
            "W_out": r(p + "mlp.dense_4h_to_h.weight", (d, m)).T, "b_out": r(p + "mlp.dense_4h_to_h.bias", (d,)),
        }
        if cfg.use_attn_bias:
            b = r(p + "attention.query_key_value.bias", (3 * d,)).reshape(H, 3, e)
            layer |= {"b_Q": b[:, 0], "b_K": b[:, 1], "b_V": b[:, 2], "b_O": r(p + "attention.dense.bias", (d,))}
        layers.append(layer)
    top = {"W_E": r("embed_in.weight", (V, d)), "ln_final.w": r("final_layer_norm.weight", (d,)),
           "ln_final.b": r("final_layer_norm.bias", (d,))}
    if not cfg.tied_embeddings:
        top["W_U"] = r("embed_out.weight", (V, d), top=True).T
    return top, layers


def _llama(cfg: TransformerConfig, r: _Reader) -> tuple[dict, list[dict]]:
    d, H, G, e, m, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    o_bias = cfg.use_attn_bias and cfg.original_architecture != "Qwen2ForCausalLM"
    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        layer = {
            "ln1.w": r(p + "input_layernorm.weight", (d,)),
            "W_Q": r(p + "self_attn.q_proj.weight", (H * e, d)).reshape(H, e, d).transpose(0, 2, 1),
            "W_K": r(p + "self_attn.k_proj.weight", (G * e, d)).reshape(G, e, d).transpose(0, 2, 1),
            "W_V": r(p + "self_attn.v_proj.weight", (G * e, d)).reshape(G, e, d).transpose(0, 2, 1),
            "W_O": r(p + "self_attn.o_proj.weight", (d, H * e)).T.reshape(H, e, d),
            "ln2.w": r(p + "post_attention_layernorm.weight", (d,)),
            "W_gate": r(p + "mlp.gate_proj.weight", (m, d)).T,
            "W_in": r(p + "mlp.up_proj.weight", (m, d)).T,
            "W_out": r(p + "mlp.down_proj.weight", (d, m)).T,
        }
        if cfg.use_attn_bias:
            layer |= {"b_Q": r(p + "self_attn.q_proj.bias", (H * e,)).reshape(H, e),
                      "b_K": r(p + "self_attn.k_proj.bias", (G * e,)).reshape(G, e),
                      "b_V": r(p + "self_attn.v_proj.bias", (G * e,)).reshape(G, e),
                      "b_O": r(p + "self_attn.o_proj.bias", (d,)) if o_bias else np.zeros(d, np.float32)}
        layers.append(layer)
    top = {"W_E": r("embed_tokens.weight", (V, d)), "ln_final.w": r("norm.weight", (d,))}
    if not cfg.tied_embeddings:
        top["W_U"] = r("lm_head.weight", (V, d), top=True).T
    return top, layers


_FAMILIES = {  # architecture -> (weights function, module prefix, embedding name, head name)
    "GPT2LMHeadModel": (_gpt2, "transformer.", "wte.weight", "lm_head.weight"),
    "GPTNeoXForCausalLM": (_neox, "gpt_neox.", "embed_in.weight", "embed_out.weight"),
    "LlamaForCausalLM": (_llama, "model.", "embed_tokens.weight", "lm_head.weight"),
    "MistralForCausalLM": (_llama, "model.", "embed_tokens.weight", "lm_head.weight"),
    "Qwen2ForCausalLM": (_llama, "model.", "embed_tokens.weight", "lm_head.weight"),
}


def convert_hf_state_dict(cfg: TransformerConfig, tensors: Mapping[str, np.ndarray]) -> HookedTransformer:
    """Build a :class:`HookedTransformer` from a Hugging Face state dict (numpy arrays).

    Args:
        cfg: from :func:`config_from_hf`; ``cfg.original_architecture`` picks the layout
            and ``cfg.dtype`` the dtype of the result.
        tensors: ``{hf_name: array}``, with or without the base-model prefix
            (``transformer.``, ``gpt_neox.``, ``model.``).

    Raises:
        CheckpointError: missing, misshapen or unexpected tensors, all listed at once.
    """
    if cfg.original_architecture not in _FAMILIES:
        raise ConfigError(f"Cannot convert weights for architecture {cfg.original_architecture!r}; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}.")
    weights_fn, prefix, embed_name, head_name = _FAMILIES[cfg.original_architecture]
    reader = _Reader(tensors, prefix, embed_name)
    top, layers = weights_fn(cfg, reader)
    reader.finish(allowed=lambda k: cfg.tied_embeddings and k == head_name)
    return _assemble(cfg, top, layers)


def _assemble(cfg: TransformerConfig, top: dict, layers: list[dict]) -> HookedTransformer:
    """Stack per-layer weights on a leading ``n_layers`` axis and cast to ``cfg.dtype``."""
    dtype = cfg.jnp_dtype

    def arr(x):
        return None if x is None else jnp.asarray(np.asarray(x).astype(dtype))

    stacked = {k: arr(np.stack([layer[k] for layer in layers])) for k in layers[0]} if layers else {}
    get = stacked.get
    attn = C.AttnParams(W_Q=get("W_Q"), W_K=get("W_K"), W_V=get("W_V"), W_O=get("W_O"),
                        b_Q=get("b_Q"), b_K=get("b_K"), b_V=get("b_V"), b_O=get("b_O"))
    mlp = C.MLPParams(W_in=get("W_in"), W_out=get("W_out"), b_in=get("b_in"), b_out=get("b_out"),
                      W_gate=get("W_gate"))
    blocks = C.BlockParams(ln1=C.NormParams(get("ln1.w"), get("ln1.b")), attn=attn,
                           ln2=C.NormParams(get("ln2.w"), get("ln2.b")), mlp=mlp)
    return HookedTransformer(
        cfg=cfg, W_E=arr(top["W_E"]), blocks=blocks, W_pos=arr(top.get("W_pos")),
        ln_final=C.NormParams(arr(top["ln_final.w"]), arr(top.get("ln_final.b"))),
        W_U=arr(top.get("W_U")), b_U=None,
    )
