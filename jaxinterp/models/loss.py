"""Language-model losses: next-token cross-entropy, per token and averaged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def token_losses(logits: Float[Array, "b p v"], tokens: Int[Array, "b p"],
                 mask: Int[Array, "b p"] | None = None) -> Float[Array, "b p-1"]:
    """Cross-entropy of predicting ``tokens[:, i+1]`` from position ``i`` (masked to 0)."""
    logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    losses = -jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    if mask is not None:
        losses = losses * mask[:, 1:]
    return losses


def lm_loss(model, tokens: Int[Array, "b p"], mask: Int[Array, "b p"] | None = None) -> Float[Array, ""]:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` (nats per token)."""
    losses = token_losses(model(tokens, mask), tokens, mask)
    if mask is None:
        return losses.mean()
    return losses.sum() / jnp.maximum(mask[:, 1:].sum(), 1)
