"""Tiny models for the interp tests (imported by the test modules)."""

import jax

from jaxinterp.models import TransformerConfig, gemma2_config, init_transformer, llama_config

FAMILIES = {
    "gpt2": {},
    "llama": dict(normalization_type="RMS", positional_embedding_type="rotary", n_key_value_heads=2,
                  gated_mlp=True, act_fn="silu", use_attn_bias=False),
    "neox": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, act_fn="gelu"),
}


_SIZES = dict(d_model=32, n_layers=3, n_heads=4, d_mlp=64, d_vocab=40, n_ctx=16)
# Families from their presets; windows of 3 cut into the 7-token test prompts.
PRESETS = {
    # local, global, local layers; soft-capping; pre- and post-norms; GeGLU; scaled embeddings
    "gemma2": lambda **kw: gemma2_config(**_SIZES, n_key_value_heads=2, d_head=8, window_size=3,
                                         query_pre_attn_scalar=8.0, attn_types=("local", "global", "local"),
                                         **kw),
    # Mistral: Llama with a sliding window on every layer
    "mistral": lambda **kw: llama_config(**_SIZES, n_key_value_heads=2, window_size=3, tied_embeddings=False,
                                         original_architecture="MistralForCausalLM", **kw),
}


def tiny(family: str = "gpt2", seed: int = 0, **kw):
    """A 3-layer, d_model 32 model of the family, with weights large enough to be nonlinear."""
    if family in PRESETS:
        cfg = PRESETS[family](**{"init_range": 0.3, **kw})
    else:
        cfg = TransformerConfig(d_head=8, init_range=0.3, **_SIZES, **{**FAMILIES[family], **kw})
    return init_transformer(cfg, jax.random.key(seed))
