"""``from_pretrained``: one entry point for Hugging Face folders, Hub ids and GGUF files.

TransformerLens users start with ``HookedTransformer.from_pretrained("gpt2")``. Here::

    model = ji.from_pretrained("path/to/pythia-70m")        # a local HF folder
    model = ji.from_pretrained("EleutherAI/pythia-70m")     # the Hub (needs network)
    model = ji.from_pretrained("model.Q4_1.gguf")           # a GGUF file
    tokens = model.to_tokens("The Eiffel Tower is in")

The returned model carries its tokenizer and its default for prepending a BOS token
(from ``tokenizer_config.json``'s ``add_bos_token`` or the GGUF metadata), so
``to_tokens``/``to_str_tokens``/``to_string`` and string prompts work on it. Weights load
from safetensors or GGUF only, never from pickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jaxinterp.errors import CheckpointError
from jaxinterp.models.transformer import HookedTransformer

_GGUF_MAGIC = b"GGUF"


def _is_gguf(path: Path) -> bool:
    if path.suffix == ".gguf":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32") -> tuple[HookedTransformer, Any]:
    """:func:`jaxinterp.io.gguf.load_gguf`, returning a model that carries the tokenizer."""
    from jaxinterp.io import gguf

    model, tokenizer = gguf.load_gguf(path, dtype=dtype)
    return model.with_tokenizer(tokenizer, bool(getattr(tokenizer, "add_bos_token", False))), tokenizer


def load_hf(path_or_repo_id: str | os.PathLike, *, dtype: str = "float32",
            revision: str | None = None) -> tuple[HookedTransformer, Any]:
    """:func:`jaxinterp.io.hf.load_hf`, returning a model that carries the tokenizer."""
    from jaxinterp.io import hf

    folder = hf._resolve(path_or_repo_id, revision)
    model, tokenizer = hf.load_hf(path_or_repo_id, dtype=dtype, revision=revision)
    if tokenizer is None:
        return model, None
    return model.with_tokenizer(tokenizer, _hf_add_bos(folder)), tokenizer


def _hf_add_bos(folder: Path) -> bool:
    config = Path(folder) / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text()).get("add_bos_token", False))
    except (OSError, ValueError):
        return False


def from_pretrained(name_or_path: str | os.PathLike, *, dtype: str = "float32",
                    revision: str | None = None) -> HookedTransformer:
    """A :class:`HookedTransformer` (with its tokenizer) from a GGUF file, a local Hugging
    Face folder, or a Hub repository id (downloaded: safetensors and JSON only).

    Raises:
        CheckpointError: nothing loadable at ``name_or_path``.
        ConfigError: an architecture or variant jaxinterp does not implement.
    """
    path = Path(name_or_path)
    if path.is_file():
        if not _is_gguf(path):
            raise CheckpointError(f"{path} is a file but not GGUF; pass a GGUF file or a Hugging "
                                  "Face folder (config.json + *.safetensors)")
        return load_gguf(path, dtype=dtype)[0]
    return load_hf(name_or_path, dtype=dtype, revision=revision)[0]
