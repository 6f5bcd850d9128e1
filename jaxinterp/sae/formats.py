"""SAE files: SAELens 6.x both ways, Gemma Scope ``params.npz``, EleutherAI sparsify.

**SAELens** (a folder): ``cfg.json`` (``architecture``, ``d_in``, ``d_sae``, ``dtype``,
``apply_b_dec_to_input``, ``normalize_activations``, architecture fields such as ``k``
or ``d_out``, and ``metadata`` with ``hook_name``, ``model_name``, ``sae_lens_version``)
and ``sae_weights.safetensors`` with the parameters under their own names (``W_enc
[d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold``, ``b_gate``,
``b_mag``, ``r_mag``, ``W_skip [d_out, d_in]``). Architectures map one to one, except that
BatchTopK and Matryoshka SAEs are saved as ``jumprelu`` with their inference threshold
(as SAELens saves them), and transcoders as ``transcoder``, ``skip_transcoder`` or
``jumprelu_transcoder``.

**Gemma Scope**: one ``params.npz`` per SAE with ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``
and ``threshold`` (JumpReLU, no decoder-bias subtraction on input).

**sparsify** (EleutherAI, a folder): ``cfg.json`` (``d_in``, ``k``, ``num_latents`` or
``expansion_factor``, ``normalize_decoder``, ``transcode``, ``skip_connection``) and
``sae.safetensors`` with ``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``W_dec
[d_sae, d_out]``, ``b_dec`` and optionally ``W_skip``. Activation: ``relu`` of the top k.
An autoencoder subtracts ``b_dec`` from its input; a transcoder does not.

Files are read with safetensors / ``np.load(allow_pickle=False)``, never pickle, and
checked against the config before anything is built: a missing or misshaped tensor or
an unknown architecture raises :class:`~jaxinterp.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import CheckpointError
from jaxinterp.io.weights import load_weights, save_weights
from jaxinterp.sae.config import SAEConfig
from jaxinterp.sae.sae import SAE

SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout written here (SAELens >= 6)
_SAELENS_ARCH = {  # SAELens architecture key -> (our architecture, transcoder?, skip?)
    "standard": ("standard", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("standard", True, False),
    "skip_transcoder": ("standard", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
}


def _tensors(sae: SAE) -> dict[str, Any]:
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "b_mag", "r_mag", "W_skip")
    return {n: getattr(sae, n) for n in names if getattr(sae, n) is not None}


def _saelens_architecture(cfg: SAEConfig) -> str:
    arch = "jumprelu" if cfg.architecture in ("batchtopk", "matryoshka_batchtopk") else cfg.architecture
    if not cfg.is_transcoder:
        return arch
    if cfg.skip_connection and arch == "standard":
        return "skip_transcoder"
    if arch in ("standard", "jumprelu") and not cfg.skip_connection:
        return {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}[arch]
    raise CheckpointError(f"SAELens has no {cfg.architecture} transcoder"
                          f"{' with a skip connection' if cfg.skip_connection else ''}; "
                          "save it with save_sparsify (TopK) or as jaxinterp weights.")


def save_saelens(sae: SAE, folder: str | os.PathLike, *, model_name: str = "") -> Path:
    """Write ``sae`` as a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    cfg = sae.cfg
    arch = _saelens_architecture(cfg)
    out: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype,
        "device": "cpu", "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION,
                     "sae_lens_training_version": SAELENS_FORMAT_VERSION,
                     "hook_name": cfg.hook_name or None, "model_name": model_name or None,
                     "jaxinterp_architecture": cfg.architecture},
    }
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
        out["metadata"]["hook_name_out"] = cfg.hook_name_out or None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "sae_weights.safetensors", _tensors(sae))
    (folder / "cfg.json").write_text(json.dumps(out, indent=1))
    return folder


def load_saelens(folder: str | os.PathLike, *, dtype: str | None = None) -> SAE:
    """Read a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``) as an :class:`SAE`."""
    folder = Path(folder)
    raw = _read_json(folder / "cfg.json")
    arch_key = raw.get("architecture", "standard")
    if arch_key not in _SAELENS_ARCH:
        raise CheckpointError(f"{folder}/cfg.json: unknown SAELens architecture {arch_key!r}; "
                              f"supported: {', '.join(_SAELENS_ARCH)}.")
    arch, transcoder, skip = _SAELENS_ARCH[arch_key]
    norm = raw.get("normalize_activations") or "none"
    if norm != "none":
        raise CheckpointError(f"{folder}/cfg.json: normalize_activations={norm!r} is applied at "
                              "run time by SAELens; fold it into the weights (or scale inputs) first.")
    meta = raw.get("metadata") or {}
    try:
        cfg = SAEConfig(
            d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=arch,
            d_out=int(raw["d_out"]) if transcoder else None, skip_connection=skip,
            k=int(raw.get("k", 32)) if arch == "topk" else 32,
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", not transcoder)),
            hook_name=meta.get("hook_name") or raw.get("hook_name") or "",
            hook_name_out=meta.get("hook_name_out") or raw.get("hook_name_out") or "",
            dtype=dtype or _dtype_name(raw.get("dtype", "float32")),
        )
    except KeyError as e:
        raise CheckpointError(f"{folder}/cfg.json has no {e.args[0]!r} entry.") from None
    if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):
        raise CheckpointError(f"{folder}: rescale_acts_by_decoder_norm=True TopK SAEs are not "
                              "supported; save them from SAELens as an inference model first.")
    return build_sae(cfg, _flat(load_weights(folder / "sae_weights.safetensors")), str(folder))


def load_gemma_scope(path: str | os.PathLike, *, hook_name: str = "", dtype: str = "float32") -> SAE:
    """A Gemma Scope JumpReLU SAE from its ``params.npz`` (a file, or the folder holding it)."""
    path = Path(path)
    path = path / "params.npz" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"No Gemma Scope params.npz at {path}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise CheckpointError(f"Could not read {path} as npz: {type(e).__name__}: {e}") from None
    if "W_enc" not in arrays or np.ndim(arrays["W_enc"]) != 2:
        raise CheckpointError(f"{path} has no 2-D W_enc; Gemma Scope files hold W_enc [d_in, d_sae], "
                              f"W_dec, b_enc, b_dec, threshold (found {sorted(arrays)}).")
    d_in, d_sae = arrays["W_enc"].shape
    cfg = SAEConfig(d_in=int(d_in), d_sae=int(d_sae), architecture="jumprelu",
                    apply_b_dec_to_input=False, hook_name=hook_name, dtype=dtype)
    return build_sae(cfg, arrays, str(path))


def load_sparsify(folder: str | os.PathLike, *, hook_name: str = "", dtype: str = "float32") -> SAE:
    """An EleutherAI sparsify TopK SAE or transcoder (``cfg.json`` + ``sae.safetensors``)."""
    folder = Path(folder)
    raw = _read_json(folder / "cfg.json")
    if raw.get("activation", "topk") != "topk":
        raise CheckpointError(f"{folder}: sparsify activation {raw.get('activation')!r} is not "
                              "supported (only 'topk').")
    try:
        d_in, k = int(raw["d_in"]), int(raw["k"])
    except KeyError as e:
        raise CheckpointError(f"{folder}/cfg.json has no {e.args[0]!r} entry.") from None
    d_sae = int(raw.get("num_latents") or 0) or d_in * int(raw.get("expansion_factor", 32))
    arrays = _flat(load_weights(folder / "sae.safetensors"))
    if "encoder.weight" in arrays:
        arrays["W_enc"] = np.asarray(arrays.pop("encoder.weight")).T
    if "encoder.bias" in arrays:
        arrays["b_enc"] = arrays.pop("encoder.bias")
    transcoder = bool(raw.get("transcode", False))
    d_out = int(np.shape(arrays["W_dec"])[-1]) if transcoder and "W_dec" in arrays else None
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, d_out=d_out,
                    skip_connection=bool(raw.get("skip_connection", False)) and transcoder,
                    apply_b_dec_to_input=not transcoder, hook_name=hook_name, dtype=dtype)
    return build_sae(cfg, arrays, str(folder))


def save_sparsify(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write a TopK SAE in sparsify's layout (``encoder.weight`` is ``W_enc`` transposed)."""
    cfg = sae.cfg
    if cfg.architecture != "topk" or (cfg.skip_connection and not cfg.is_transcoder):
        raise CheckpointError("sparsify holds TopK SAEs and transcoders only.")
    if cfg.apply_b_dec_to_input == cfg.is_transcoder:
        raise CheckpointError("sparsify subtracts b_dec from the input exactly for autoencoders.")
    folder = Path(folder)
    tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec,
               "b_dec": sae.b_dec}
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    save_weights(folder / "sae.safetensors", tensors)
    out = {"activation": "topk", "expansion_factor": 0, "normalize_decoder": True,
           "num_latents": cfg.d_sae, "k": cfg.k, "multi_topk": False,
           "skip_connection": cfg.skip_connection, "transcode": cfg.is_transcoder, "d_in": cfg.d_in}
    (folder / "cfg.json").write_text(json.dumps(out, indent=1))
    return folder


def build_sae(cfg: SAEConfig, arrays: dict[str, Any], where: str) -> SAE:
    """An SAE of ``cfg`` from named arrays, after checking every tensor's presence and shape."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_target
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if cfg.architecture == "gated":
        shapes.update(b_gate=(d_sae,), b_mag=(d_sae,), r_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if cfg.architecture in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
        shapes["threshold"] = (d_sae,)
    if cfg.skip_connection:
        shapes["W_skip"] = (d_out, d_in)
    missing = sorted(n for n in shapes if n not in arrays)
    bad = [f"{n}: {list(np.shape(arrays[n]))}, expected {list(s)}"
           for n, s in shapes.items() if n in arrays and tuple(np.shape(arrays[n])) != s]
    if missing or bad:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"misshaped {'; '.join(bad)}"] if bad else [])
        raise CheckpointError(f"SAE tensors in {where} do not fit a {cfg.architecture} SAE with "
                              f"d_in={d_in}, d_sae={d_sae}: {'; '.join(parts)}.")
    dtype = jnp.dtype(cfg.dtype)
    values = {n: jnp.asarray(arrays[n]).astype(dtype) for n in shapes}
    return SAE(cfg=cfg, **{n: values.get(n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")},
               **{n: values.get(n) for n in ("threshold", "b_gate", "b_mag", "r_mag", "W_skip")})


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"No {path.name} at {path.parent}.")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    return data


def _dtype_name(name: str) -> str:
    name = str(name).replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16", "float64") else "float32"
