"""A Flax linen decoder as large-model codebases write one: ``nn.scan(nn.remat(Layer))``.

The layer's parameters are stacked on a leading axis (``variable_axes={"params": 0}``,
``metadata_params={nn.PARTITION_NAME: "layers"}``), one layer is traced, and activations
are recomputed in the backward pass. The only jaxinterp in it is the two-line change that
makes hooks work inside the scan::

    from jaxinterp.hooks import flax_lifted as jl                 # added
    Stack = jl.scan(jl.remat(DecoderLayer, ...), ...)             # was nn.scan(nn.remat(...))

Parameters, checkpoints and outputs are those of the original (``run.py`` checks it).
``run.py`` runs it through :func:`jaxinterp.hooks.flax_bridge.hooked_apply`, which names
every module's output by its path: ``layers.{l}.mlp_out.hook_out`` inside the scan.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxinterp.hooks import flax_lifted as jl  # the one added import


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 32
    n_ctx: int = 8
    d_model: int = 16
    n_heads: int = 2
    d_mlp: int = 32
    n_layers: int = 2


class DecoderLayer(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x, mask):  # (carry, broadcast) -> (carry, None), as nn.scan wants
        h = nn.LayerNorm(name="pre_attn_norm")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.cfg.n_heads, name="attn")(h, h, mask=mask)
        h = nn.LayerNorm(name="pre_mlp_norm")(x)
        h = nn.gelu(nn.Dense(self.cfg.d_mlp, name="mlp_in")(h))
        return x + nn.Dense(self.cfg.d_model, name="mlp_out")(h), None


class Decoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, tokens):  # [batch, pos] -> logits [batch, pos, vocab]
        cfg = self.cfg
        x = nn.Embed(cfg.vocab, cfg.d_model, name="token_embed")(tokens)
        x = x + nn.Embed(cfg.n_ctx, cfg.d_model, name="pos_embed")(jnp.arange(tokens.shape[-1]))
        mask = nn.make_causal_mask(tokens)
        Stack = jl.scan(jl.remat(DecoderLayer, prevent_cse=False), variable_axes={"params": 0},  # was nn.scan(nn.remat(
                        split_rngs={"params": True}, in_axes=(nn.broadcast,), length=cfg.n_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = Stack(cfg, name="layers")(x, mask)
        return nn.Dense(cfg.vocab, name="lm_head")(nn.LayerNorm(name="ln_f")(x))


def loss_fn(params, model: Decoder, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make(seed: int = 0, cfg: Config = Config()):
    model = Decoder(cfg)
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, cfg.n_ctx), jnp.int32))["params"]
    return model, params
