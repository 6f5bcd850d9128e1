"""Skip-trigrams: what a one-layer attention-only model computes, read off its weights.

A one-layer attention-only transformer is a sum of bigram statistics (the direct path)
and, per head, *skip-trigrams* ``A ... B -> C`` (Elhage et al. 2021): a destination token
``B`` attends back to a source token ``A`` (the QK circuit), and attending to ``A`` raises
the logit of ``C`` (the OV circuit):

    attention(B -> A) ~ x_B W_Q W_K^T x_A^T        effect(A -> C) = x_A W_V W_O W_U[:, C]

with ``x_t`` token ``t``'s residual stream: its embedding plus the mean positional
embedding, through the first layer norm. :func:`skip_trigrams` takes the OV effect
relative to the mean over outputs *and* over sources (so a head that raises ``","``
whatever it attends to does not fill the list), gives each source its best output, ranks
the sources, and pairs each with the destination token that attends to it most (relative
to the mean over sources). Restrict ``tokens`` to frequent ones: rare tokens have noisy
embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Int

from jaxinterp.circuits.weights import attention_weights
from jaxinterp.errors import ConfigError
from jaxinterp.models import components as C
from jaxinterp.models.transformer import HookedTransformer


@dataclasses.dataclass(frozen=True)
class SkipTrigram:
    """``source ... destination -> output`` in head ``(layer, head)``; ``ov``: the output
    logit raised by attending to the source (above the mean over outputs); ``qk``: the
    destination's attention score to the source (above the mean over sources)."""

    layer: int
    head: int
    source: int
    destination: int
    output: int
    ov: float
    qk: float


def token_residuals(model: HookedTransformer, tokens: Int[ArrayLike, " n"]):
    """``ln1(W_E[t] + mean_p W_pos[p])`` of the first layer, one row per token."""
    x = model.W_E[jnp.asarray(tokens)]
    if model.W_pos is not None:
        x = x + model.W_pos.mean(0)
    ln1 = jax.tree.map(lambda a: a[0], model.blocks.ln1)  # layer 0's weights
    return C.normalize(model.cfg, ln1, x, "ln1")


def skip_trigrams(model: HookedTransformer, tokens: Int[ArrayLike, " n"], *, k: int = 10,
                  outputs: Int[ArrayLike, " m"] | None = None) -> list[SkipTrigram]:
    """The ``k`` strongest skip-trigrams of every head of layer 0, over source and
    destination tokens ``tokens`` and output tokens ``outputs`` (default: ``tokens``)."""
    if model.cfg.n_layers < 1:
        raise ConfigError("skip-trigrams need an attention layer (n_layers >= 1)")
    tokens = np.asarray(tokens)
    outputs = tokens if outputs is None else np.asarray(outputs)
    W_Q, W_K, W_V, W_O = (w[0] for w in attention_weights(model))  # layer 0: [h, d, e]
    x = token_residuals(model, tokens).astype(jnp.float32)  # [n, d]
    W_U = model.unembed_matrix[:, jnp.asarray(outputs)].astype(jnp.float32)
    if model.ln_final is not None and model.ln_final.w is not None:
        W_U = model.ln_final.w[:, None] * W_U
    qk = jnp.einsum("bd,hde,hfe,af->hba", x, W_Q, W_K, x) / model.cfg.scale  # [h, dest B, source A]
    qk = qk - qk.mean(-1, keepdims=True)
    ov = jnp.einsum("ad,hde,hef,fc->hac", x, W_V, W_O, W_U)  # [h, source A, output C]
    ov = np.asarray(ov - ov.mean(-1, keepdims=True) - ov.mean(-2, keepdims=True) + ov.mean((-1, -2), keepdims=True))
    qk = np.asarray(qk)
    found = []
    for h in range(ov.shape[0]):
        best_c = ov[h].argmax(-1)  # each source's strongest output
        for a in np.argsort(-ov[h].max(-1))[:k]:
            c = best_c[a]
            b = int(np.argmax(qk[h][:, a]))
            found.append(SkipTrigram(0, h, int(tokens[a]), int(tokens[b]), int(outputs[c]),
                                     float(ov[h, a, c]), float(qk[h, b, a])))
    return found
