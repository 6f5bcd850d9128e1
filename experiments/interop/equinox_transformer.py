"""A per-example Equinox transformer, as Equinox's own examples write one.

Every layer acts on one sequence (``[pos, d_model]``) and maps ``Linear``/``LayerNorm``/
``Embedding`` over positions with ``jax.vmap``; the batch is a ``jax.vmap`` in the loss,
and training is an ``eqx.filter_jit`` step. ``run.py`` tags it with
:func:`jaxinterp.hooks.equinox_bridge.tag_submodules` (every submodule, the default) and
analyses it; a hook under the model's own ``vmap`` sees the whole sequence.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 32
    n_ctx: int = 8
    d_model: int = 16
    n_heads: int = 2
    d_mlp: int = 32
    n_layers: int = 2


class Block(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, cfg: Config, key):
        k1, k2 = jax.random.split(key)
        self.ln1 = eqx.nn.LayerNorm(cfg.d_model)
        self.attn = eqx.nn.MultiheadAttention(cfg.n_heads, cfg.d_model, key=k1)
        self.ln2 = eqx.nn.LayerNorm(cfg.d_model)
        self.mlp = eqx.nn.MLP(cfg.d_model, cfg.d_model, cfg.d_mlp, depth=1, activation=jax.nn.gelu, key=k2)

    def __call__(self, x, mask):  # x: [pos, d_model]
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, h, h, mask=mask)
        return x + jax.vmap(self.mlp)(jax.vmap(self.ln2)(x))


class Transformer(eqx.Module):
    token_embed: eqx.nn.Embedding
    pos_embed: eqx.nn.Embedding
    blocks: list[Block]
    ln_f: eqx.nn.LayerNorm
    lm_head: eqx.nn.Linear

    def __init__(self, cfg: Config, key):
        keys = jax.random.split(key, cfg.n_layers + 3)
        self.token_embed = eqx.nn.Embedding(cfg.vocab, cfg.d_model, key=keys[0])
        self.pos_embed = eqx.nn.Embedding(cfg.n_ctx, cfg.d_model, key=keys[1])
        self.blocks = [Block(cfg, k) for k in keys[2:-1]]
        self.ln_f = eqx.nn.LayerNorm(cfg.d_model)
        self.lm_head = eqx.nn.Linear(cfg.d_model, cfg.vocab, key=keys[-1])

    def __call__(self, tokens):  # [pos] -> logits [pos, vocab]
        x = jax.vmap(self.token_embed)(tokens) + jax.vmap(self.pos_embed)(jnp.arange(tokens.shape[0]))
        mask = jnp.tril(jnp.ones((tokens.shape[0], tokens.shape[0]), bool))
        for block in self.blocks:
            x = block(x, mask)
        return jax.vmap(self.lm_head)(jax.vmap(self.ln_f)(x))


def loss_fn(model: Transformer, tokens):  # tokens: [batch, pos]
    logits = jax.vmap(model)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@eqx.filter_jit
def train_step(model: Transformer, opt_state, tokens, optimizer):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def make(seed: int = 0, cfg: Config = Config()):
    model = Transformer(cfg, jax.random.key(seed))
    optimizer = optax.adam(1e-2)
    return model, optimizer, optimizer.init(eqx.filter(model, eqx.is_array))
