"""Tiny models for the interp tests (imported by the test modules)."""

import jax

from jaxinterp.models import TransformerConfig, init_transformer

FAMILIES = {
    "gpt2": {},
    "llama": dict(normalization_type="RMS", positional_embedding_type="rotary", n_key_value_heads=2,
                  gated_mlp=True, act_fn="silu", use_attn_bias=False),
    "neox": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, act_fn="gelu"),
}


def tiny(family: str = "gpt2", seed: int = 0, **kw):
    """A 3-layer, d_model 32 model of the family, with weights large enough to be nonlinear."""
    cfg = TransformerConfig(d_model=32, n_layers=3, n_heads=4, d_head=8, d_mlp=64, d_vocab=40,
                            n_ctx=16, init_range=0.3, **{**FAMILIES[family], **kw})
    return init_transformer(cfg, jax.random.key(seed))
