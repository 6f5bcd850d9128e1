"""The SAE trainer's post-step function: constraints, statistics and dead-latent resampling.

Runs after every optimiser update inside the compiled step (see
:func:`jaxinterp.train.train`'s ``post_step``), for each SAE being trained:

* **Statistics** (the carried state): ``since_fired[i]``, steps since latent ``i`` last
  fired (dead when ``>= dead_steps``); ``density[i]``, the fraction of tokens it fires
  on, a running mean over the first ``DENSITY_WINDOW`` steps and an exponential moving
  average after that.
* **Constraints**: decoder rows projected back to unit norm (``cfg.unit_decoder``);
  JumpReLU thresholds clipped at 0; BatchTopK's inference threshold moved towards the
  smallest positive activation of the batch, ``t <- (1 - lr) t + lr * min_pos`` (SAELens).
* **Resampling** (Towards Monosemanticity), for L1 autoencoders at ``resample_steps``:
  every dead latent takes the direction of a batch input drawn with probability
  proportional to its squared reconstruction loss: decoder row ``v / ||v||``, encoder
  column ``0.2 * mean alive encoder norm * v / ||v||``, bias 0, and its Adam moments
  cleared. (The paper draws from a larger pool of inputs; here it is the current batch.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxinterp.sae.config import SAEConfig
from jaxinterp.sae.sae import SAE
from jaxinterp.sae.sharding import latent_sharding, put, replicated

DENSITY_WINDOW = 1000  # steps: the density estimate's memory
DENSE_THRESHOLD = 0.1  # a latent firing on more than this fraction of tokens is "dense"
_PER_LATENT = ("b_enc", "threshold", "b_gate", "b_mag", "r_mag")


def init_state(cfg: SAEConfig, mesh: Any) -> dict[str, jax.Array]:
    """Fresh statistics for one SAE, placed like its latents."""
    state = {"step": jnp.zeros((), jnp.int32), "since_fired": jnp.zeros(cfg.d_sae, jnp.int32),
             "density": jnp.zeros(cfg.d_sae, jnp.float32)}
    per_latent = latent_sharding(mesh)
    shardings = {"step": replicated(mesh), "since_fired": per_latent, "density": per_latent}
    return put(state, shardings)


@dataclasses.dataclass(frozen=True)
class PostStep:
    """``post_step(params, opt_state, state, aux, key, step)`` for ``train``: a frozen
    dataclass, so equal settings share a compiled step."""

    cfgs: tuple[tuple[str, SAEConfig], ...]
    dead_steps: int
    resample_at: tuple[int, ...] = ()
    threshold_lr: float = 0.01

    def __call__(self, params, opt_state, state, aux, key, step):
        cfgs, dead_steps = dict(self.cfgs), self.dead_steps
        resample_at, threshold_lr = self.resample_at, self.threshold_lr
        trainable_def = jax.tree.structure(eqx.filter(params, eqx.is_inexact_array))
        metrics, new_params, new_state, keep_masks = {}, dict(params), dict(state), {}
        for i, (name, sae) in enumerate(params.items()):
            cfg, a, st = cfgs[name], aux[name], state[name]
            fired = a["fire_count"] > 0
            since = jnp.where(fired, 0, jnp.minimum(st["since_fired"] + 1, 2**30))
            count = st["step"] + 1
            alpha = jnp.maximum(1.0 / count.astype(jnp.float32), 1.0 / DENSITY_WINDOW)
            density = st["density"] + alpha * (a["fire_count"] / a["n_tokens"] - st["density"])
            dead = since >= dead_steps
            sae = _constrain(sae, a, threshold_lr)
            keep = jnp.ones(cfg.d_sae, bool)
            if resample_at and cfg.architecture in ("standard", "gated") and not cfg.is_transcoder:
                when = jnp.isin(count, jnp.asarray(resample_at)) & dead.any()
                sae, keep = jax.lax.cond(
                    when, _resample, lambda s, d, a_, k_: (s, jnp.ones_like(d)),
                    sae, dead, a, jax.random.fold_in(key, i))
                since = jnp.where(keep, since, 0)
            if cfg.unit_decoder:
                sae = eqx.tree_at(lambda s: s.W_dec, sae, sae.W_dec / sae.decoder_norms[:, None])
            new_params[name] = sae
            keep_masks[name] = keep
            new_state[name] = {"step": count, "since_fired": since, "density": density}
            prefix = "" if len(params) == 1 else f"{name}/"
            metrics[f"{prefix}dead_frac"] = dead.astype(jnp.float32).mean()
            metrics[f"{prefix}dense_frac"] = (density > DENSE_THRESHOLD).astype(jnp.float32).mean()
        if resample_at:
            opt_state = _clear_moments(opt_state, new_params, keep_masks, trainable_def)
        return new_params, opt_state, new_state, metrics


def _constrain(sae: SAE, aux: dict, threshold_lr: float) -> SAE:
    arch = sae.cfg.architecture
    if arch == "jumprelu":
        return eqx.tree_at(lambda s: s.threshold, sae, jnp.maximum(sae.threshold, 0.0))
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        moved = (1 - threshold_lr) * sae.threshold + threshold_lr * aux["min_pos"]
        return eqx.tree_at(lambda s: s.threshold, sae, moved.astype(sae.threshold.dtype))
    return sae


def _resample(sae: SAE, dead: jax.Array, aux: dict, key: jax.Array) -> tuple[SAE, jax.Array]:
    """New directions for dead latents, drawn from inputs in proportion to loss squared."""
    x, err = aux["x"], aux["sq_err"]
    logits = 2.0 * jnp.log(jnp.maximum(err, 1e-30))
    rows = jax.random.categorical(key, logits, shape=(sae.cfg.d_sae,))
    v = sae.sae_in(x[rows])
    v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    enc_norms = jnp.linalg.norm(sae.W_enc, axis=0)
    alive = ~dead
    n_alive = jnp.maximum(alive.sum(), 1).astype(jnp.float32)

    def mean_alive(v: jax.Array) -> jax.Array:
        return jnp.where(alive.any(), jnp.where(alive, v, 0.0).sum() / n_alive, 1.0)

    alive_norm = mean_alive(enc_norms)
    dec_scale = 1.0 if sae.cfg.unit_decoder else mean_alive(sae.decoder_norms)
    W_dec = jnp.where(dead[:, None], v * dec_scale, sae.W_dec)
    W_enc = jnp.where(dead[None, :], v.T * (0.2 * alive_norm), sae.W_enc)
    out = eqx.tree_at(lambda s: (s.W_dec, s.W_enc), sae, (W_dec.astype(sae.W_dec.dtype),
                                                         W_enc.astype(sae.W_enc.dtype)))
    for name in _PER_LATENT:
        value = getattr(out, name)
        if value is not None and name != "threshold":
            out = eqx.tree_at(lambda s, n=name: getattr(s, n), out, jnp.where(dead, 0.0, value))
    return out, alive


def _clear_moments(opt_state: Any, params: dict[str, SAE], keep: dict[str, jax.Array],
                   trainable_def: Any) -> Any:
    """Zero the optimiser's per-parameter statistics (Adam's mu and nu) of resampled latents.

    Any subtree of ``opt_state`` shaped like the trainable parameters is such a statistic.
    """
    def mask_for(path: tuple, leaf: Any) -> Any:
        if leaf is None:
            return None
        k = keep[path[0].key]
        name = getattr(path[-1], "name", "")
        if name == "W_enc":
            return k[None, :]
        if name == "W_dec":
            return k[:, None]
        if name in _PER_LATENT:
            return k
        return jnp.ones((), bool)

    masks = jax.tree_util.tree_map_with_path(mask_for, eqx.filter(params, eqx.is_inexact_array))

    def clear(node: Any) -> Any:
        if jax.tree.structure(node) != trainable_def:
            return node
        return jax.tree.map(lambda m, v: jnp.where(m, v, jnp.zeros((), v.dtype)), masks, node)

    return jax.tree.map(clear, opt_state, is_leaf=lambda n: jax.tree.structure(n) == trainable_def)
