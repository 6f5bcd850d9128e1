"""How good an SAE is: reconstruction, sparsity, feature density, and loss when spliced in.

Over held-out activations ``x`` (target ``y``, which is ``x`` for an autoencoder), with
``y_hat = sae(x)`` and ``f = encode(x)``:

* ``l0``: mean number of active latents per token, ``mean_t |{i: f_ti > 0}|``.
* ``mse``: ``mean_t ||y_t - y_hat_t||^2``;  ``fve`` (fraction of variance explained):
  ``1 - sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean(y)||^2``.
* ``cosine``: mean cosine similarity of ``y_hat_t`` with ``y_t``.
* ``shrinkage``: ``mean_t ||y_hat_t|| / ||y_t||`` (below 1: the L1 penalty shrinks).
* densities: the fraction of tokens each latent fires on; ``dead_frac`` (never fired on
  the evaluation tokens) and ``dense_frac`` (density above 0.1), and their log10
  histogram as a PNG.

Spliced into the model at its hook (:func:`spliced_loss`):

* ``ce_loss_recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean)``: 1 is a perfect
  substitute, 0 as bad as ablating the site; given for zero- and mean-ablation.
* ``kl``: mean over tokens of ``KL(p_clean || p_sae)`` of the next-token distributions.

Everything is streamed in chunks with one compiled program per chunk shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.hooks import patch, run_with_cache, run_with_hooks
from jaxinterp.models.loss import token_losses
from jaxinterp.sae.callbacks import DENSE_THRESHOLD
from jaxinterp.sae.sae import SAE
from jaxinterp.sae.splice import splice


@eqx.filter_jit
def _chunk_sums(sae: SAE, x: Array, y: Array) -> dict[str, Array]:
    f = sae.encode(x)
    y_hat = sae.decode(f) + sae.skip(x)
    y, y_hat = y.astype(jnp.float32), y_hat.astype(jnp.float32)
    norm_y, norm_hat = jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(y_hat, axis=-1)
    safe = jnp.maximum(norm_y, 1e-12)
    return {
        "n": jnp.asarray(x.shape[0], jnp.float32),
        "sq_err": ((y - y_hat) ** 2).sum(),
        "sum_y": y.sum(0),
        "sum_y2": (y**2).sum(),
        "cosine": ((y * y_hat).sum(-1) / (safe * jnp.maximum(norm_hat, 1e-12))).sum(),
        "shrinkage": (norm_hat / safe).sum(),
        "l0": (f > 0).sum().astype(jnp.float32),
        "fires": (f > 0).sum(0).astype(jnp.float32),
    }


def evaluate_sae(sae: SAE, batches: Iterable[Any]) -> dict[str, Any]:
    """Reconstruction and density metrics over batches of activations.

    Args:
        sae: the SAE (or transcoder).
        batches: arrays ``[n, d_in]``, or ``(x, y)`` pairs for a transcoder.

    Returns:
        ``{"l0", "mse", "fve", "cosine", "shrinkage", "dead_frac", "dense_frac",
        "n_tokens"}`` and ``"density"`` (a numpy array ``[d_sae]``).
    """
    total: dict[str, Array] | None = None
    for batch in batches:
        x, y = batch if isinstance(batch, tuple) else (batch, batch)
        x = jnp.asarray(x).reshape(-1, sae.cfg.d_in)
        y = jnp.asarray(y).reshape(x.shape[0], -1)
        sums = _chunk_sums(sae, x, y)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError("evaluate_sae got no batches.")
    t = {k: np.asarray(v, np.float64) for k, v in jax.device_get(total).items()}
    n = t["n"]
    variance = t["sum_y2"] - (t["sum_y"] ** 2).sum() / n
    density = t["fires"] / n
    return {
        "l0": float(t["l0"] / n), "mse": float(t["sq_err"] / n),
        "fve": float(1 - t["sq_err"] / max(variance, 1e-30)),
        "cosine": float(t["cosine"] / n), "shrinkage": float(t["shrinkage"] / n),
        "dead_frac": float((density == 0).mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).mean()),
        "n_tokens": int(n), "density": density,
    }


def spliced_loss(
    model: Callable, tokens_batches: Iterable[Float[Array, "b p"]], sae: SAE, *,
    mean_activation: Array | None = None,
) -> dict[str, float]:
    """Next-token loss with the SAE spliced in, against the clean model and ablations.

    Args:
        model: a model with hook points (``HookedTransformer``).
        tokens_batches: token batches ``[batch, pos]``.
        sae: spliced at ``sae.cfg.hook_name`` (a transcoder: read there, written at
            ``hook_name_out``).
        mean_activation: the site's mean activation for mean-ablation (default: the mean
            over the first batch).

    Returns:
        ``ce_clean``, ``ce_sae``, ``ce_zero_ablation``, ``ce_mean_ablation``,
        ``ce_loss_recovered`` (zero-ablation baseline), ``ce_loss_recovered_mean``,
        ``kl`` (clean vs spliced) and ``kl_zero_ablation``.
    """
    site = sae.cfg.hook_name_out if sae.cfg.is_transcoder else sae.cfg.hook_name
    sums: dict[str, float] = {}
    count = 0
    for tokens in tokens_batches:
        tokens = jnp.asarray(tokens)
        if mean_activation is None:
            mean_activation = _site_mean(model, tokens, site)
        out = _spliced_chunk(model, sae, tokens, mean_activation, site)
        for k, v in jax.device_get(out).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
    if count == 0:
        raise ValueError("spliced_loss got no token batches.")
    m = {k: v / count for k, v in sums.items()}

    def recovered(ablated: float) -> float:
        gap = ablated - m["ce_clean"]
        return float((ablated - m["ce_sae"]) / gap) if abs(gap) > 1e-12 else float("nan")

    m["ce_loss_recovered"] = recovered(m["ce_zero_ablation"])
    m["ce_loss_recovered_mean"] = recovered(m["ce_mean_ablation"])
    return m


@eqx.filter_jit
def _site_mean(model, tokens, site: str) -> Array:
    _, cache = run_with_cache(model, tokens, names=site)
    act = cache[site]
    return act.reshape(-1, *act.shape[2:]).mean(0)


@eqx.filter_jit
def _spliced_chunk(model, sae: SAE, tokens, mean_activation, site: str) -> dict[str, Array]:
    clean = model(tokens)
    spliced = run_with_hooks(model, tokens, interventions=splice(sae))
    zero = run_with_hooks(model, tokens, interventions=[patch(site, 0.0)])
    mean = run_with_hooks(model, tokens, interventions=[patch(site, mean_activation)])
    logp = jax.nn.log_softmax(clean[:, :-1].astype(jnp.float32), -1)

    def kl(other: Array) -> Array:
        other = jax.nn.log_softmax(other[:, :-1].astype(jnp.float32), -1)
        return (jnp.exp(logp) * (logp - other)).sum(-1).mean()

    ce = {name: token_losses(logits, tokens).mean() for name, logits in
          (("ce_clean", clean), ("ce_sae", spliced), ("ce_zero_ablation", zero),
           ("ce_mean_ablation", mean))}
    return {**ce, "kl": kl(spliced), "kl_zero_ablation": kl(zero)}


def density_histogram_png(density: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Histogram of log10 feature density (dead latents, density 0, counted in the title)."""
    from jaxinterp.viz._figure import figure, save

    density = np.asarray(density, np.float64)
    alive = density[density > 0]
    fig = figure((6, 3.5))
    ax = fig.subplots()
    if alive.size:
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    ax.axvline(np.log10(DENSE_THRESHOLD), color="tab:red", lw=1, ls="--", label="dense (0.1)")
    ax.set_xlabel("log10 feature density (fraction of tokens a latent fires on)")
    ax.set_ylabel("latents")
    dead = int((density == 0).sum())
    ax.set_title(f"{title}{': ' if title else ''}{density.size} latents, {dead} dead")
    ax.legend(fontsize=8)
    return save(fig, path)
