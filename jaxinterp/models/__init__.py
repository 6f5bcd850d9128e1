"""Models: the hooked transformer and its configs; a small conv net (``conv``)."""

from jaxinterp.models.config import (
    TransformerConfig,
    attn_only_config,
    gpt2_config,
    llama_config,
    neox_config,
)
from jaxinterp.models.conv import ConvConfig, ConvNet, init_conv
from jaxinterp.models.generation import KVCache, decode_step, generate, init_kv_cache, sample_logits
from jaxinterp.models.loss import lm_loss, token_losses
from jaxinterp.models.process import (
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights,
    untie_embeddings,
)
from jaxinterp.models.transformer import (
    HookedTransformer,
    check_tokens,
    embed,
    hook_names_for,
    init_transformer,
    param_count,
    positions_and_mask,
    run_blocks,
    unembed,
)

__all__ = [
    "ConvConfig",
    "ConvNet",
    "init_conv",
    "KVCache",
    "center_unembed",
    "center_writing_weights",
    "decode_step",
    "fold_layer_norm",
    "fold_value_biases",
    "generate",
    "init_kv_cache",
    "lm_loss",
    "process_weights",
    "sample_logits",
    "token_losses",
    "untie_embeddings",
    "HookedTransformer",
    "TransformerConfig",
    "attn_only_config",
    "check_tokens",
    "embed",
    "gpt2_config",
    "hook_names_for",
    "init_transformer",
    "llama_config",
    "neox_config",
    "param_count",
    "positions_and_mask",
    "run_blocks",
    "unembed",
]
