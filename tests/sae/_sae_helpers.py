"""Helpers shared by the SAE tests: random SAEs and a numpy forward pass."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import SAE, SAEConfig, init_sae


def randomised(cfg: SAEConfig, seed: int = 0) -> SAE:
    """An SAE whose every parameter is random (biases and thresholds included)."""
    sae = jax.eval_shape(lambda key: init_sae(cfg, key), jax.random.key(seed))  # shapes only: no compile
    leaves, treedef = jax.tree.flatten(sae)
    rng = np.random.default_rng(seed + 1)  # numpy: no XLA compile per shape
    new = [jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype) for x in leaves]
    sae = jax.tree.unflatten(treedef, new)
    if sae.threshold is not None:
        sae = eqx.tree_at(lambda s: s.threshold, sae, jnp.abs(sae.threshold))
    return sae


def np_forward(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(acts, reconstruction) computed with numpy, one formula per architecture."""
    p = {k: None if v is None else np.asarray(v, np.float64) for k, v in vars(sae).items() if k != "cfg"}
    cfg = sae.cfg
    x = np.asarray(x, np.float64)
    xin = x - p["b_dec"] if cfg.apply_b_dec_to_input else x
    if cfg.architecture == "gated":
        z = xin @ p["W_enc"]
        acts = (z + p["b_gate"] > 0) * np.maximum(z * np.exp(p["r_mag"]) + p["b_mag"], 0)
    else:
        pre = xin @ p["W_enc"] + p["b_enc"]
        if cfg.architecture == "standard":
            acts = np.maximum(pre, 0)
        elif cfg.architecture == "topk":
            acts = np.zeros_like(pre)
            for row, out in zip(pre, acts, strict=True):
                top = np.argsort(-row)[: cfg.k]
                out[top] = np.maximum(row[top], 0)
        else:
            acts = np.where(pre > p["threshold"], np.maximum(pre, 0), 0)
    out = acts @ p["W_dec"] + p["b_dec"]
    if p["W_skip"] is not None:
        out = out + x @ p["W_skip"].T
    return acts, out
