"""Models: the hooked transformer and its configs."""

from jaxinterp.models.config import (
    TransformerConfig,
    attn_only_config,
    gpt2_config,
    llama_config,
    neox_config,
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
