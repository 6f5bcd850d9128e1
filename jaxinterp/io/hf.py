"""Load Hugging Face causal language models into a :class:`HookedTransformer`.

A Hugging Face checkpoint is a folder: ``config.json`` (the architecture and its sizes),
the weights as ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``)
and usually ``tokenizer.json``. Loading is three pure steps, each usable alone::

    cfg     = config_from_hf(json.load(open("config.json")))   # -> TransformerConfig
    tensors = read_safetensors(folder)                           # -> {hf_name: np.ndarray}
    model   = convert_hf_state_dict(cfg, tensors)                # -> HookedTransformer

:func:`load_hf` does all three, for a local folder or a Hub repository id (downloaded
with ``huggingface_hub.snapshot_download``, JSON and safetensors files only). Weights are
read with ``safetensors`` as numpy arrays: pickled ``pytorch_model.bin`` files are never
opened. Supported: GPT-2, GPT-NeoX / Pythia, GPT-J, Llama, Mistral, Qwen2, Qwen3,
Phi-3, Gemma 2 and Gemma 3 (text) (see :mod:`jaxinterp.io.hf_config` for how each config
maps onto a :class:`TransformerConfig` and :mod:`jaxinterp.io.hf_convert` for how each
packs its weights).

Example::

    model, tokenizer = load_hf("EleutherAI/pythia-70m")
    logits = model(jnp.asarray([tokenizer.encode("Hello world")]))
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from jaxinterp.errors import CheckpointError
from jaxinterp.io.hf_convert import (
    SUPPORTED_ARCHITECTURES,
    config_from_hf,
    convert_hf_state_dict,
    hf_architecture,
)
from jaxinterp.models.transformer import HookedTransformer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "config_from_hf",
    "convert_hf_state_dict",
    "download_hf",
    "hf_architecture",
    "load_hf",
    "read_config",
    "read_safetensors",
]

HUB_FILES = ["*.json", "*.safetensors"]  # config, tokenizer, weights; never *.bin
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# safetensors dtypes numpy has no name for: read as raw bytes, viewed with ml_dtypes.
_EXOTIC = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
           "F8_E5M2": ml_dtypes.float8_e5m2}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_hf(
    path_or_repo_id: str | os.PathLike,
    *,
    dtype: str = "float32",
    revision: str | None = None,
) -> tuple[HookedTransformer, Any]:
    """Load a Hugging Face checkpoint as a :class:`HookedTransformer` and its tokenizer.

    Args:
        path_or_repo_id: a local folder with ``config.json`` and safetensors weights, or a
            Hub repository id such as ``"gpt2"`` or ``"EleutherAI/pythia-70m"``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: the dtype of the weights.
        revision: a Hub branch, tag or commit (ignored for local folders).

    Returns:
        ``(model, tokenizer)``; the tokenizer (``encode``, ``decode``, ``vocab_size``,
        ``bos_token_id``, ``eos_token_id``) is ``None`` when the folder has no
        ``tokenizer.json``.

    Raises:
        CheckpointError: no such folder or repository, missing files, pickled weights
            only, or tensors that do not match the config.
        ConfigError: an unsupported architecture, or a config field asking for something
            not implemented (e.g. a rope scaling type other than linear), named.
    """
    folder = _resolve(path_or_repo_id, revision)
    config = read_config(folder)
    cfg = config_from_hf(config, dtype=dtype)
    cfg = cfg.replace(model_name=str(path_or_repo_id) if not Path(path_or_repo_id).is_dir()
                      else folder.name)
    model = convert_hf_state_dict(cfg, read_safetensors(folder))
    return model, _tokenizer(folder)


def read_config(folder: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a checkpoint folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"No config.json in {folder}; a Hugging Face checkpoint folder needs one.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}.")
    return config


def read_safetensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of ``model.safetensors`` (or of the shards its index lists) as numpy.

    Raises:
        CheckpointError: no safetensors weights (with advice when only pickled ``.bin``
            weights are present), a shard the index names is missing, or a corrupt file.
    """
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e!r}).") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shards that are not in {folder}: {absent}.")
    else:
        pickled = sorted(p.name for pattern in _PICKLES for p in folder.glob(pattern))
        if pickled:
            raise CheckpointError(
                f"{folder} has only pickled weights ({', '.join(pickled)}); jaxinterp never "
                "unpickles files. Convert them to safetensors once, e.g. "
                "AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, "
                "safe_serialization=True).")
        raise CheckpointError(f"No model.safetensors or model.safetensors.index.json in {folder}.")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors.update(_read_file(file))
    return tensors


def _read_file(path: Path) -> dict[str, np.ndarray]:
    """One safetensors file; bfloat16 / float8 tensors are read directly from their bytes."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        out = {}
        with safe_open(str(path), framework="numpy") as f:
            for name, info in header.items():
                if info["dtype"] in _EXOTIC:
                    dt = np.dtype(_EXOTIC[info["dtype"]])
                    start, end = info["data_offsets"]
                    raw = np.fromfile(path, dtype=np.uint8, count=end - start, offset=8 + n + start)
                    out[name] = raw.view(dt).reshape(info["shape"])
                else:
                    out[name] = f.get_tensor(name)
        return out
    except Exception as e:  # any parse error becomes one clear message
        raise CheckpointError(f"Could not read safetensors file {path} (corrupt or truncated?): "
                              f"{type(e).__name__}: {e}") from None


def download_hf(repo_id: str, revision: str | None = None) -> Path:
    """Download a Hub repository's JSON and safetensors files; returns the local folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is not a local folder, and downloading from the Hub "
                              "needs `pip install huggingface_hub`.") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except Exception as e:
        raise CheckpointError(
            f"{repo_id!r} is not a local folder, and downloading it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {e}). Offline? Pass a local folder with config.json "
            "and model.safetensors instead.") from None


def _resolve(path_or_repo_id: str | os.PathLike, revision: str | None) -> Path:
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that contains it.")
    text = str(path_or_repo_id)
    if isinstance(path_or_repo_id, str) and _REPO_ID.match(text):
        return download_hf(text, revision)
    raise CheckpointError(f"No checkpoint folder at {path} (and {text!r} is not a Hub repository id).")


def _tokenizer(folder: Path) -> Any:
    """The folder's ``tokenizer.json`` behind jaxinterp's tokenizer interface, or ``None``."""
    if not (folder / "tokenizer.json").is_file():
        return None
    from jaxinterp.data.tokenizers import load_tokenizer

    return load_tokenizer(folder)
