"""Training losses of the SAE family: reconstruction plus each architecture's sparsity term.

With ``y`` the target (``x`` itself, or the written site for a transcoder) and
``mse = mean_tokens sum_d (y - y_hat)^2``::

    standard   mse + l1 * mean sum_i f_i * w_i          w_i = ||W_dec[i]|| (April 2024) or 1
    gated      mse + l1 * mean sum_i relu(pi_i) * w_i + ||relu(pi) @ sg(W_dec) + sg(b_dec) - y||^2
               (pi = the gate's pre-activation; sg = stop_gradient, as in Rajamanoharan et al.)
    jumprelu   mse + l0 * mean sum_i H(pre_i - t_i)      ("step", straight-through to t)
               mse + l0 * mean sum_i tanh(c * f_i * w_i) ("tanh")
    topk       mse + aux_k * auxk                        auxk: the top-k_aux *dead* latents
    batchtopk  the same, with the BatchTopK activation    (k_aux = d_in / 2) reconstruct
    matryoshka the same + the mse of every prefix         the residual sg(y - y_hat),
               reconstruction acts[:w] @ W_dec[:w] + b_dec scaled by min(n_dead / k_aux, 1)

``sparsity_scale`` multiplies the L1/L0 coefficient (its warm-up). ``dead`` marks latents
that have not fired for a while (tracked by the trainer). The auxiliary output feeds the
trainer's post-step function: per-latent fire counts, the smallest positive activation
(BatchTopK's threshold estimate), and each token's input and error (for resampling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from jaxinterp.sae import activations as A
from jaxinterp.sae.sae import SAE
from jaxinterp.sae.sparse_topk import count_fires, sparse_topk

sg = jax.lax.stop_gradient


def column_stats(acts: Float[Array, "n s"]) -> tuple[Array, Array]:
    """``(acts.sum(0), (acts > 0).sum(0))`` in one pass over ``acts`` (a variadic reduce,
    which XLA fuses with the activation that produced it); no gradient."""
    acts = sg(acts)
    mask = (acts > 0).astype(acts.dtype)
    zero = jnp.zeros((), acts.dtype)
    return jax.lax.reduce((acts, mask), (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))


@jax.custom_vjp
def weighted_l1(acts: Float[Array, "n s"], w: Float[Array, " s"]) -> tuple[Array, Array]:
    """``(mean_t sum_i acts_ti * w_i, fire counts per latent)`` with one pass over ``acts``:
    the penalty is ``colsum @ w / n``, so its gradients are ``w / n`` (a broadcast XLA fuses
    into the activation's gradient) and ``colsum / n`` (already computed)."""
    colsum, fires = column_stats(acts)
    return colsum @ w / acts.shape[0], fires


def _weighted_l1_fwd(acts, w):
    colsum, fires = column_stats(acts)
    return (colsum @ w / acts.shape[0], fires), (colsum, w, acts.shape[0])


def _weighted_l1_bwd(res, cotangents):
    colsum, w, n = res
    g = cotangents[0]
    d_acts = jnp.broadcast_to((g / n) * w, (n, w.shape[0]))
    return d_acts, (g / n) * colsum


weighted_l1.defvjp(_weighted_l1_fwd, _weighted_l1_bwd)


def sae_loss(
    sae: SAE,
    x: Float[Array, "... d_in"],
    y: Float[Array, "... d_out"] | None = None,
    *,
    dead: Bool[Array, " d_sae"] | None = None,
    sparsity_scale: Float[Array, ""] | float = 1.0,
    sparse: bool = True,
) -> tuple[Float[Array, ""], dict[str, Array], dict[str, Array]]:
    """``(loss, metrics, aux)`` for one batch; ``sparse`` selects TopK's sparse path."""
    cfg = sae.cfg
    sae.check_input(x)
    x = x.reshape(-1, cfg.d_in).astype(sae.W_enc.dtype)
    y = x if y is None else y.reshape(-1, cfg.d_target).astype(sae.W_dec.dtype)
    dead = jnp.zeros(cfg.d_sae, bool) if dead is None else dead
    arch = cfg.architecture
    aux: dict[str, Array] = {}
    if arch == "topk" and sparse:
        y_hat, fires, l0, aux_loss = _topk_sparse(sae, x, y, dead)
        sparsity = jnp.zeros((), jnp.float32)
    else:
        y_hat, fires, sparsity, aux_loss = _dense(sae, x, y, dead, aux)
        l0 = fires.sum() / x.shape[0]
    err = ((y - y_hat).astype(jnp.float32) ** 2).sum(-1)
    mse = err.mean()
    coeff = cfg.l0_coefficient if arch == "jumprelu" else cfg.l1_coefficient
    loss = mse + coeff * sparsity_scale * sparsity + aux_loss
    total = ((y - y.mean(0)).astype(jnp.float32) ** 2).sum()
    metrics = {"mse": mse, "l0": l0, "sparsity_loss": sparsity, "aux_loss": aux_loss,
               "fve": 1.0 - err.sum() / jnp.maximum(total, 1e-30)}
    aux.update(fire_count=fires, n_tokens=jnp.asarray(x.shape[0], jnp.float32), x=x, sq_err=err)
    return loss, metrics, aux


def _dense(sae: SAE, x, y, dead, aux) -> tuple[Array, Array, Array, Array]:
    """``(y_hat, fire counts, sparsity loss, auxiliary loss)`` with dense activations."""
    cfg, arch = sae.cfg, sae.cfg.architecture
    w = sae.decoder_norms if cfg.l1_decoder_norm else jnp.ones(cfg.d_sae, sae.W_dec.dtype)
    zero = jnp.zeros((), jnp.float32)
    if arch == "gated":
        z = sae.encoder_z(x)
        pi_gate = z + sae.b_gate
        acts = jnp.where(pi_gate > 0, jax.nn.relu(z * jnp.exp(sae.r_mag) + sae.b_mag), 0.0)
        y_hat = sae.decode(acts) + sae.skip(x)
        gate_acts = jax.nn.relu(pi_gate)
        sparsity, _ = weighted_l1(gate_acts, w)
        via_gate = gate_acts @ sg(sae.W_dec) + sg(sae.b_dec) + sg(sae.skip(x))
        return y_hat, column_stats(acts)[1], sparsity, ((via_gate - y) ** 2).sum(-1).mean()
    pre = sae.hidden_pre(x)
    fires = None
    if arch == "standard":
        acts = jax.nn.relu(pre)
        sparsity, fires = weighted_l1(acts, w)
    elif arch == "jumprelu":
        acts = A.jumprelu(pre, sae.threshold, cfg.jumprelu_bandwidth)
        if cfg.jumprelu_sparsity_loss == "step":
            sparsity = A.step(pre, sae.threshold, cfg.jumprelu_bandwidth).sum(-1).mean()
        else:
            norms = sae.decoder_norms
            sparsity = jnp.tanh(cfg.jumprelu_tanh_scale * acts * norms).sum(-1).mean()
    elif arch == "topk":
        acts, sparsity = A.topk(pre, cfg.k), zero
    else:  # batchtopk, matryoshka_batchtopk
        acts, sparsity = A.batch_topk(pre, cfg.k), zero
        positive = jnp.where(acts > 0, acts, jnp.inf).min()
        aux["min_pos"] = jnp.where(jnp.isfinite(positive), positive, 0.0)
    y_hat = sae.decode(acts) + sae.skip(x)
    aux_loss = zero
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        aux_loss = cfg.aux_k_coefficient * _aux_k(sae, sg(pre), x, sg(y - y_hat), dead)
    if arch == "matryoshka_batchtopk":
        aux_loss = aux_loss + _matryoshka_prefix_mse(sae, acts, y)
    return y_hat, column_stats(acts)[1] if fires is None else fires, sparsity, aux_loss


def _matryoshka_prefix_mse(sae: SAE, acts, y) -> Array:
    """Sum over the inner prefixes ``w`` of ``mse(acts[:, :w] @ W_dec[:w] + b_dec, y)``."""
    total, partial, start = jnp.zeros((), jnp.float32), sae.b_dec, 0
    for width in sae.cfg.matryoshka_widths[:-1]:
        partial = partial + acts[:, start:width] @ sae.W_dec[start:width]
        total = total + ((partial - y) ** 2).sum(-1).mean()
        start = width
    return total


def _topk_sparse(sae: SAE, x, y, dead) -> tuple[Array, Array, Array, Array]:
    cfg = sae.cfg
    pre = sg(sae.hidden_pre(x))
    vals, idx = A.topk_indices(pre, cfg.k)
    aux_vals, aux_idx, aux_on, scale = _aux_choice(cfg, pre, dead)
    recon, aux_recon = sparse_topk(cfg.apply_b_dec_to_input, sae.W_enc, sae.b_enc, sae.W_dec,
                                   sae.b_dec, x, vals, idx, aux_vals, aux_idx, aux_on)
    y_hat = recon + sae.b_dec + sae.skip(x)
    aux_loss = cfg.aux_k_coefficient * scale * ((aux_recon - sg(y - y_hat)).astype(jnp.float32) ** 2).sum(-1).mean()
    active = vals > 0
    l0 = active.sum(-1).astype(jnp.float32).mean()
    return y_hat, count_fires(idx, active, cfg.d_sae), l0, aux_loss


def _aux_choice(cfg, pre, dead) -> tuple[Array, Array, Array, Array]:
    """Gao et al.'s auxiliary-k choice: the ``k_aux = d_in / 2`` largest pre-activations
    among dead latents per token (``-inf`` where fewer are dead), whether any latent is
    dead, and the loss scale ``min(n_dead / k_aux, 1)``. The top-k over the masked
    pre-activations runs only when some latent is dead."""
    k_aux = max(1, min(cfg.d_in // 2, cfg.d_sae))
    n_dead = dead.sum()
    on = n_dead > 0
    shape = (pre.shape[0], k_aux)
    vals, idx = jax.lax.cond(
        on, lambda: tuple(A.topk_indices(jnp.where(dead, pre, -jnp.inf), k_aux)),
        lambda: (jnp.full(shape, -jnp.inf, pre.dtype), jnp.zeros(shape, jnp.int32)))
    return vals, idx, on, jnp.minimum(n_dead.astype(jnp.float32) / k_aux, 1.0)


def _aux_k(sae: SAE, pre, x, residual, dead) -> Array:
    """Gao et al.'s auxiliary loss: the ``k_aux`` largest pre-activations among dead
    latents reconstruct the residual, ``min(n_dead / k_aux, 1) * mse``; 0 (and no work)
    while nothing is dead. Only the chosen latents take part (:func:`sparse_topk` with
    no main latents), whatever the architecture."""
    cfg = sae.cfg
    aux_vals, aux_idx, aux_on, scale = _aux_choice(cfg, pre, dead)
    none = jnp.zeros((x.shape[0], 0), pre.dtype)
    _, e_hat = sparse_topk(cfg.apply_b_dec_to_input, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec,
                           x, none, none.astype(jnp.int32), aux_vals, aux_idx, aux_on)
    return scale * ((e_hat - residual).astype(jnp.float32) ** 2).sum(-1).mean()
