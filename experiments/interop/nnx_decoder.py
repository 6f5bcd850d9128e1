"""A Flax NNX decoder written the way the NNX tutorials write one (no jaxinterp in it).

Layers live in a Python list (``nnx.List``), attention is ``nnx.MultiHeadAttention`` with
a causal mask, and the model is trained in place by ``nnx.Optimizer`` under ``nnx.jit``.
``run.py`` tags it with :func:`jaxinterp.hooks.nnx_bridge.tag_nnx_submodules` (in place:
the names are graph paths, ``layers.1.attn.hook_out``) and analyses it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 32
    n_ctx: int = 8
    d_model: int = 16
    n_heads: int = 2
    d_mlp: int = 32
    n_layers: int = 2


class Block(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=cfg.n_heads, in_features=cfg.d_model,
                                           decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(cfg.d_model, cfg.d_mlp, rngs=rngs)
        self.mlp_out = nnx.Linear(cfg.d_mlp, cfg.d_model, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln2(x))))


class Decoder(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.token_embed = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs)
        self.pos_embed = nnx.Embed(cfg.n_ctx, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab, rngs=rngs)

    def __call__(self, tokens):  # [batch, pos] -> logits [batch, pos, vocab]
        x = self.token_embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[-1]))
        mask = nnx.make_causal_mask(tokens)
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.ln_f(x))


def loss_fn(model: Decoder, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@nnx.jit
def train_step(model: Decoder, optimizer: nnx.Optimizer, tokens):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
    optimizer.update(model, grads)
    return loss


def make(seed: int = 0, cfg: Config = Config()) -> tuple[Decoder, nnx.Optimizer]:
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
