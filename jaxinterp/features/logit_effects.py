"""Logit effects: which next tokens a feature promotes and suppresses, read off the weights.

A feature active with strength ``f`` adds ``f * W_dec[i]`` at its site. Its *direct* effect
on the logits is that direction carried to the residual stream and through the
unembedding (the path that skips every later layer)::

    r_i     = W_dec[i]                       residual-stream sites (hook_resid_*, *_out)
            = W_dec[i] @ W_out[l]            MLP neurons (blocks.l.mlp.hook_post)
            = sum_h W_dec[i, h] @ W_O[l, h]  attention heads (blocks.l.attn.hook_z)
    e_i     = (r_i - mean(r_i)) * w_ln @ W_U           (LayerNorm: centre and scale;
                                                        RMSNorm: scale only)
    effects = e_i  [d_vocab]:  top-k promoted, top-k suppressed, and their histogram

(``w_ln`` is the final norm's weight; the norm's division by the residual's scale is left
out, as in SAEDashboard's ``W_dec @ W_U`` tables.) For a transcoder, ``W_dec`` writes its
output site. Features are processed in blocks with one compiled program; the
``[d_sae, d_vocab]`` matrix is never held whole.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError

_RESIDUAL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
             "hook_embed", "hook_pos_embed", "ln_final.hook_normalized")


def residual_directions(model, sae) -> Float[Array, "s d_model"]:
    """Each feature's decoder row as a residual-stream direction (see the module docstring)."""
    site = sae.cfg.hook_name_out if sae.cfg.is_transcoder else sae.cfg.hook_name
    W_dec = jnp.asarray(sae.W_dec, jnp.float32)
    parts = site.split(".")
    suffix = ".".join(parts[2:]) if len(parts) > 2 and parts[0] == "blocks" else site
    layer = int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None
    if suffix in _RESIDUAL:
        return W_dec
    if suffix == "mlp.hook_post" and layer is not None:
        return W_dec @ jnp.asarray(model.W_out[layer], jnp.float32)
    if suffix == "attn.hook_z" and layer is not None:
        W_O = jnp.asarray(model.W_O[layer], jnp.float32)                  # [h, e, d]
        return jnp.einsum("she,hed->sd", W_dec.reshape(W_dec.shape[0], *W_O.shape[:2]), W_O)
    raise ConfigError(f"Logit effects need a site that writes to the residual stream (resid, attn_out, "
                      f"mlp_out, mlp.hook_post or attn.hook_z); got {site!r}.")


def unembed_directions(model) -> tuple[Float[Array, "d v"], bool]:
    """The final norm's weight folded into ``W_U``, and whether the norm centres (LayerNorm)."""
    W_U = jnp.asarray(model.unembed_matrix, jnp.float32)
    ln = getattr(model, "ln_final", None)
    if getattr(model.cfg, "final_norm", True) and ln is not None and ln.w is not None:
        W_U = jnp.asarray(ln.w, jnp.float32)[:, None] * W_U
    return W_U, model.cfg.normalization_type == "LN"


@eqx.filter_jit
def _block(dirs: Array, W_U: Array, centre: bool, k: int, n_bins: int) -> dict[str, Array]:
    if centre:
        dirs = dirs - dirs.mean(-1, keepdims=True)
    logits = dirs @ W_U                                                 # [block, v]
    pos_values, pos_index = jax.lax.top_k(logits, k)
    neg_values, neg_index = jax.lax.top_k(-logits, k)
    lo, hi = logits.min(-1), logits.max(-1)
    edges = lo[:, None] + (hi - lo)[:, None] * jnp.arange(1, n_bins)[None, :] / n_bins   # inner edges
    at_least = jax.vmap(lambda e: (logits >= e[:, None]).sum(-1), in_axes=1, out_axes=1)(edges)
    v = logits.shape[1]
    cum = jnp.concatenate([jnp.full_like(at_least[:, :1], v), at_least, jnp.zeros_like(at_least[:, :1])], 1)
    return {"pos_index": pos_index, "pos_values": pos_values, "neg_index": neg_index,
            "neg_values": -neg_values, "hist_counts": cum[:, :-1] - cum[:, 1:], "hist_lo": lo, "hist_hi": hi}


def logit_effects(model, sae, *, k: int = 10, n_bins: int = 32, block: int = 512) -> dict[str, np.ndarray]:
    """Top promoted/suppressed tokens of every feature and the histogram of its effects.

    Returns arrays with a leading ``d_sae`` axis: ``pos_index``/``pos_values`` and
    ``neg_index``/``neg_values`` ``[s, k]`` (most promoted / most suppressed first),
    ``hist_counts [s, n_bins]`` over ``[hist_lo, hist_hi]`` (each feature's min and max).
    """
    dirs = residual_directions(model, sae)
    W_U, centre = unembed_directions(model)
    s, v = dirs.shape[0], W_U.shape[1]
    k, block = min(k, v), min(block, s)
    parts: dict[str, list[np.ndarray]] = {}
    for lo in range(0, s, block):
        rows = np.minimum(np.arange(lo, lo + block), s - 1)
        out = _block(dirs[rows], W_U, centre, k, n_bins)
        n = min(block, s - lo)
        for name, value in jax.device_get(out).items():
            parts.setdefault(name, []).append(np.asarray(value)[:n])
    out = {name: np.concatenate(v) for name, v in parts.items()}
    for name in ("pos_index", "neg_index"):
        out[name] = out[name].astype(np.int32)
    return out
