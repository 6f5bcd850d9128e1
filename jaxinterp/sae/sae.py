"""The SAE: an Equinox module with SAELens's parameter names and layouts.

    sae_in = x - b_dec                      (if cfg.apply_b_dec_to_input)
    pre    = sae_in @ W_enc + b_enc         W_enc [d_in, d_sae], b_enc [d_sae]
    acts   = activation(pre)                see jaxinterp.sae.activations
    x_hat  = acts @ W_dec + b_dec           W_dec [d_sae, d_out], b_dec [d_out]
           (+ x @ W_skip.T)                 W_skip [d_out, d_in], skip transcoders only

Per architecture, at inference:

* ``standard``: ``acts = relu(pre)``.
* ``topk``: ``relu`` of the ``k`` largest entries of ``pre`` per token.
* ``jumprelu``, ``batchtopk``, ``matryoshka_batchtopk``: ``relu(pre) * (pre > threshold)``
  (a BatchTopK SAE infers with the threshold it estimated in training, as SAELens saves it).
* ``gated``: ``z = sae_in @ W_enc``; ``acts = (z + b_gate > 0) * relu(z * exp(r_mag) + b_mag)``
  (no ``b_enc``; the gate decides which latents fire, the magnitude path how much).

The module acts on any leading axes (``x [..., d_in]``); it is a pytree of arrays, so it
goes through ``jit``, ``grad``, ``vmap`` and sharding as is. Training-time activations and
losses live in :mod:`jaxinterp.sae.losses`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.errors import ShapeError
from jaxinterp.sae import activations as A
from jaxinterp.sae.config import THRESHOLDED, SAEConfig


class SAE(eqx.Module):
    """A sparse autoencoder or transcoder; ``sae(x)`` reconstructs, ``encode``/``decode`` split it."""

    cfg: SAEConfig = eqx.field(static=True)
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"] | None
    W_dec: Float[Array, "d_sae d_out"]
    b_dec: Float[Array, " d_out"]
    threshold: Float[Array, " d_sae"] | None = None
    b_gate: Float[Array, " d_sae"] | None = None
    b_mag: Float[Array, " d_sae"] | None = None
    r_mag: Float[Array, " d_sae"] | None = None
    W_skip: Float[Array, "d_out d_in"] | None = None

    # The pieces of the forward pass --------------------------------------------------
    def check_input(self, x: Array) -> None:
        """Raises :class:`ShapeError` unless ``x`` is ``[..., d_in]``."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) < 1 or shape[-1] != self.cfg.d_in:
            site = f" (site {self.cfg.hook_name})" if self.cfg.hook_name else ""
            raise ShapeError(f"SAE input must be [..., d_in={self.cfg.d_in}]{site}; got shape "
                             f"{shape}. The SAE's width does not match these activations.")

    def sae_in(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_in"]:
        x = x.astype(self.W_enc.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def encoder_z(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """``sae_in(x) @ W_enc``, computed as ``x @ W_enc - b_dec @ W_enc``: equal, but the
        gradient of ``b_dec`` through it is a mat-vec instead of a second batch-sized matmul
        (``d b_dec = -W_enc @ sum_t d z_t``)."""
        z = jnp.einsum("...d,ds->...s", x.astype(self.W_enc.dtype), self.W_enc)
        if self.cfg.apply_b_dec_to_input:
            z = z - self.b_dec @ self.W_enc
        return z

    def hidden_pre(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """Pre-activations (for a gated SAE, the magnitude path's)."""
        self.check_input(x)
        z = self.encoder_z(x)
        if self.cfg.architecture == "gated":
            return z * jnp.exp(self.r_mag) + self.b_mag
        return z + self.b_enc

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """Latent activations (inference form of the architecture's activation)."""
        self.check_input(x)
        arch = self.cfg.architecture
        if arch == "gated":
            z = self.encoder_z(x)
            gate = z + self.b_gate > 0
            return jnp.where(gate, jax.nn.relu(z * jnp.exp(self.r_mag) + self.b_mag), 0.0)
        pre = self.hidden_pre(x)
        if arch == "standard":
            return jax.nn.relu(pre)
        if arch == "topk":
            return A.topk(pre, self.cfg.k)
        return A.threshold_acts(pre, self.threshold)

    def decode(self, acts: Float[Array, "... d_sae"]) -> Float[Array, "... d_out"]:
        """``acts @ W_dec + b_dec`` (a skip transcoder's skip term needs ``x``: use ``__call__``)."""
        if acts.shape[-1] != self.cfg.d_sae:
            raise ShapeError(f"decode needs [..., d_sae={self.cfg.d_sae}] activations, got {acts.shape}.")
        return jnp.einsum("...s,sd->...d", acts.astype(self.W_dec.dtype), self.W_dec) + self.b_dec

    def skip(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"] | float:
        if self.W_skip is None:
            return 0.0
        return jnp.einsum("...d,od->...o", x.astype(self.W_skip.dtype), self.W_skip)

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        """The reconstruction ``decode(encode(x))`` (plus the skip term for a skip transcoder)."""
        return self.decode(self.encode(x)) + self.skip(x)

    # Weight transformations ---------------------------------------------------------
    @property
    def decoder_norms(self) -> Float[Array, " d_sae"]:
        return jnp.linalg.norm(self.W_dec.astype(jnp.float32), axis=-1).astype(self.W_dec.dtype)

    def fold_decoder_norms(self) -> SAE:
        """Decoder rows to unit norm with the norms moved into the encoder: same outputs,
        activations scaled by the norms (not for TopK, whose choice of latents would change)."""
        if self.cfg.architecture == "topk":
            raise ShapeError("fold_decoder_norms would change which latents a TopK SAE keeps.")
        n = jnp.maximum(self.decoder_norms, 1e-8)
        out = eqx.tree_at(lambda s: (s.W_dec, s.W_enc), self, (self.W_dec / n[:, None], self.W_enc * n))
        for name in ("b_enc", "threshold", "b_gate", "b_mag"):
            if getattr(self, name) is not None:
                out = eqx.tree_at(lambda s, name=name: getattr(s, name), out, getattr(self, name) * n)
        return out

    def fold_input_scale(self, scale_in: float, scale_out: float | None = None) -> SAE:
        """The SAE that, on raw activations, equals this one applied to ``scale_in * x``
        with outputs divided by ``scale_out`` (default ``scale_in``): a trained-on-scaled
        SAE folded back for export (activations unchanged)."""
        s_in = jnp.asarray(scale_in, self.W_enc.dtype)
        s_out = jnp.asarray(scale_in if scale_out is None else scale_out, self.W_dec.dtype)
        out = eqx.tree_at(lambda s: (s.W_enc, s.W_dec, s.b_dec), self,
                          (self.W_enc * s_in, self.W_dec / s_out, self.b_dec / s_out))
        if self.W_skip is not None:
            out = eqx.tree_at(lambda s: s.W_skip, out, self.W_skip * (s_in / s_out))
        folded = dataclasses.replace(self.cfg, normalize_activations="none")  # nothing left to scale
        return SAE(**{**{f.name: getattr(out, f.name) for f in dataclasses.fields(SAE)}, "cfg": folded})


def init_sae(cfg: SAEConfig, key: jax.Array) -> SAE:
    """A fresh SAE: decoder rows in random directions (unit norm, or 0.1 when the L1
    penalty is weighted by the norm, as in the April 2024 update), the encoder their
    transpose (transcoders: independent random directions), biases and skip zero,
    JumpReLU thresholds at ``jumprelu_init_threshold``, BatchTopK thresholds 0."""
    if not isinstance(cfg, SAEConfig):
        raise ShapeError(f"init_sae needs an SAEConfig, got {type(cfg).__name__}.")
    return _init(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: SAEConfig, key: jax.Array) -> SAE:
    """One compiled program per config (rather than one per eager op)."""
    dtype = jnp.dtype(cfg.dtype)
    k_dec, k_enc = jax.random.split(key)
    W_dec = jax.random.normal(k_dec, (cfg.d_sae, cfg.d_target), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    W_dec = W_dec * (1.0 if cfg.unit_decoder else 0.1)
    if cfg.is_transcoder:
        W_enc = jax.random.normal(k_enc, (cfg.d_in, cfg.d_sae), jnp.float32) / math.sqrt(cfg.d_in)
    else:
        W_enc = W_dec.T
    zeros = jnp.zeros(cfg.d_sae, dtype)
    arch = cfg.architecture
    threshold = None
    if arch in THRESHOLDED:
        value = cfg.jumprelu_init_threshold if arch == "jumprelu" else 0.0
        threshold = jnp.full(cfg.d_sae, value, dtype)
    return SAE(
        cfg=cfg,
        W_enc=W_enc.astype(dtype),
        b_enc=None if arch == "gated" else zeros,
        W_dec=W_dec.astype(dtype),
        b_dec=jnp.zeros(cfg.d_target, dtype),
        threshold=threshold,
        b_gate=zeros if arch == "gated" else None,
        b_mag=zeros if arch == "gated" else None,
        r_mag=zeros if arch == "gated" else None,
        W_skip=jnp.zeros((cfg.d_target, cfg.d_in), dtype) if cfg.skip_connection else None,
    )
