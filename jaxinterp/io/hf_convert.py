"""Hugging Face weights in jaxinterp's (TransformerLens) layout.

Each family is one weight function (flat ``{name: array}`` -> per-layer TransformerLens
weights); :mod:`jaxinterp.io.hf_config` translates the configs. The layouts differ in how
the projections are packed:

* GPT-2 ``Conv1D`` stores ``[in, out]``; ``c_attn`` is ``[d, 3 d]`` = ``[Q | K | V]``,
  each ``[d, (h e)]``, so ``W_Q = c_attn[:, :d].reshape(d, h, e).transpose(1, 0, 2)``.
* GPT-NeoX ``nn.Linear`` stores ``[out, in]``; ``query_key_value`` is ``[(h 3 e), d]``,
  interleaved per head (the forward views its output as ``[.., h, 3 e]`` and chunks the
  last axis), so ``W_Q = w.reshape(h, 3, e, d)[:, 0].transpose(0, 2, 1)``.
* Llama / Mistral / Qwen2/3 / Gemma have separate ``q_proj [(h e), d]`` and ``k_proj,
  v_proj [(g e), d]`` (grouped-query attention), a gated MLP (``gate_proj`` -> ``W_gate``,
  ``up_proj`` -> ``W_in``) and RMSNorm without bias. Phi-3 fuses ``qkv_proj`` =
  ``[Q | K | V]`` rows and ``gate_up_proj`` = ``[gate | up]`` rows; they are split here.
* Gemma's RMSNorm multiplies by ``1 + w``; the stored weight becomes ``w + 1`` (in
  float32), so the model's norm is the usual ``x / rms(x) * w``. Gemma 2/3 name their
  norms ``input_layernorm`` (ln1), ``post_attention_layernorm`` (ln1_post),
  ``pre_feedforward_layernorm`` (ln2) and ``post_feedforward_layernorm`` (ln2_post).
* GPT-J has separate bias-free ``q/k/v/out_proj``, one LayerNorm ``ln_1`` read by both
  attention and MLP (copied into ``ln2``) and a biased ``lm_head``.

Output projections become ``W_O [h, e, d]``, ``W_in [d, m]``, ``W_out [m, d]`` and the
unembedding ``W_U = lm_head.T [d, v]`` (``None`` when tied to ``W_E``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.io.hf_config import (
    GEMMA,
    SUPPORTED_ARCHITECTURES,
    config_from_hf,
    hf_architecture,
)
from jaxinterp.models import components as C
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.transformer import HookedTransformer

__all__ = ["SUPPORTED_ARCHITECTURES", "config_from_hf", "convert_hf_state_dict", "hf_architecture"]

# Non-weight buffers some checkpoints carry (causal masks, rotary tables).
_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")


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


def _heads_in(w: np.ndarray, n: int, e: int, d: int) -> np.ndarray:  # [(n e), d] -> [n, d, e]
    return w.reshape(n, e, d).transpose(0, 2, 1)


def _llama(cfg: TransformerConfig, r: _Reader) -> tuple[dict, list[dict]]:
    """Llama, Mistral, Qwen2, Qwen3, Phi-3 (fused projections) and Gemma 2/3 (four norms)."""
    d, H, G, e, m, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    arch = cfg.original_architecture
    gemma, phi3 = arch in GEMMA, arch == "Phi3ForCausalLM"
    o_bias = cfg.use_attn_bias and arch != "Qwen2ForCausalLM"

    def norm(name: str, size: int = d) -> np.ndarray:  # Gemma scales by (1 + w)
        w = r(name, (size,))
        return w.astype(np.float32) + 1.0 if gemma else w

    layers = []
    for i in range(cfg.n_layers):
        p, a = f"layers.{i}.", f"layers.{i}.self_attn."
        if phi3:
            wq, wk, wv = np.split(r(a + "qkv_proj.weight", ((H + 2 * G) * e, d)), [H * e, (H + G) * e])
            gate, up = np.split(r(p + "mlp.gate_up_proj.weight", (2 * m, d)), 2)
        else:
            wq, wk, wv = (r(a + f"{n}_proj.weight", (k * e, d)) for n, k in (("q", H), ("k", G), ("v", G)))
            gate, up = r(p + "mlp.gate_proj.weight", (m, d)), r(p + "mlp.up_proj.weight", (m, d))
        layer = {
            "ln1.w": norm(p + "input_layernorm.weight"),
            "W_Q": _heads_in(wq, H, e, d), "W_K": _heads_in(wk, G, e, d), "W_V": _heads_in(wv, G, e, d),
            "W_O": r(a + "o_proj.weight", (d, H * e)).T.reshape(H, e, d),
            "W_gate": gate.T, "W_in": up.T, "W_out": r(p + "mlp.down_proj.weight", (d, m)).T,
        }
        if gemma:
            layer |= {"ln1_post.w": norm(p + "post_attention_layernorm.weight"),
                      "ln2.w": norm(p + "pre_feedforward_layernorm.weight"),
                      "ln2_post.w": norm(p + "post_feedforward_layernorm.weight")}
        else:
            layer["ln2.w"] = norm(p + "post_attention_layernorm.weight")
        if cfg.use_qk_norm:
            layer |= {"q_norm.w": norm(a + "q_norm.weight", e), "k_norm.w": norm(a + "k_norm.weight", e)}
        if cfg.use_attn_bias:
            layer |= {"b_Q": r(a + "q_proj.bias", (H * e,)).reshape(H, e),
                      "b_K": r(a + "k_proj.bias", (G * e,)).reshape(G, e),
                      "b_V": r(a + "v_proj.bias", (G * e,)).reshape(G, e),
                      "b_O": r(a + "o_proj.bias", (d,)) if o_bias else np.zeros(d, np.float32)}
        layers.append(layer)
    top = {"W_E": r("embed_tokens.weight", (V, d)), "ln_final.w": norm("norm.weight")}
    if not cfg.tied_embeddings:
        top["W_U"] = r("lm_head.weight", (V, d), top=True).T
    return top, layers


def _gptj(cfg: TransformerConfig, r: _Reader) -> tuple[dict, list[dict]]:
    d, H, e, m, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    layers = []
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        ln_w, ln_b = r(p + "ln_1.weight", (d,)), r(p + "ln_1.bias", (d,))
        layers.append({
            "ln1.w": ln_w, "ln1.b": ln_b, "ln2.w": ln_w, "ln2.b": ln_b,  # one norm, read twice
            **{f"W_{n.upper()}": _heads_in(r(p + f"attn.{n}_proj.weight", (d, d)), H, e, d) for n in "qkv"},
            "W_O": r(p + "attn.out_proj.weight", (d, d)).T.reshape(H, e, d),
            "W_in": r(p + "mlp.fc_in.weight", (m, d)).T, "b_in": r(p + "mlp.fc_in.bias", (m,)),
            "W_out": r(p + "mlp.fc_out.weight", (d, m)).T, "b_out": r(p + "mlp.fc_out.bias", (d,)),
        })
    top = {"W_E": r("wte.weight", (V, d)), "ln_final.w": r("ln_f.weight", (d,)),
           "ln_final.b": r("ln_f.bias", (d,)), "b_U": r("lm_head.bias", (V,), top=True)}
    if not cfg.tied_embeddings:
        top["W_U"] = r("lm_head.weight", (V, d), top=True).T
    return top, layers


_LLAMA = (_llama, "model.", "embed_tokens.weight", "lm_head.weight")
_FAMILIES = {  # architecture -> (weights function, module prefix, embedding name, head name)
    "GPT2LMHeadModel": (_gpt2, "transformer.", "wte.weight", "lm_head.weight"),
    "GPTNeoXForCausalLM": (_neox, "gpt_neox.", "embed_in.weight", "embed_out.weight"),
    "GPTJForCausalLM": (_gptj, "transformer.", "wte.weight", "lm_head.weight"),
    **{arch: _LLAMA for arch in SUPPORTED_ARCHITECTURES if arch not in
       ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "GPTJForCausalLM")},
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

    def norm(name: str) -> C.NormParams | None:
        return C.NormParams(get(name + ".w"), get(name + ".b")) if name + ".w" in stacked else None

    attn = C.AttnParams(W_Q=get("W_Q"), W_K=get("W_K"), W_V=get("W_V"), W_O=get("W_O"),
                        b_Q=get("b_Q"), b_K=get("b_K"), b_V=get("b_V"), b_O=get("b_O"),
                        q_norm=norm("q_norm"), k_norm=norm("k_norm"))
    mlp = C.MLPParams(W_in=get("W_in"), W_out=get("W_out"), b_in=get("b_in"), b_out=get("b_out"),
                      W_gate=get("W_gate"))
    blocks = C.BlockParams(ln1=C.NormParams(get("ln1.w"), get("ln1.b")), attn=attn,
                           ln2=C.NormParams(get("ln2.w"), get("ln2.b")), mlp=mlp,
                           ln1_post=norm("ln1_post"), ln2_post=norm("ln2_post"))
    return HookedTransformer(
        cfg=cfg, W_E=arr(top["W_E"]), blocks=blocks, W_pos=arr(top.get("W_pos")),
        ln_final=C.NormParams(arr(top["ln_final.w"]), arr(top.get("ln_final.b"))),
        W_U=arr(top.get("W_U")), b_U=arr(top.get("b_U")),
    )
