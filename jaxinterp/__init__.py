"""jaxinterp: mechanistic interpretability, JAX-native.

``import jaxinterp as ji`` gives the curated public API: hooked transformers and their
configs, the hook transforms (cache, patch, steer), and the errors jaxinterp raises.
Sub-packages (``ji.data``, ``ji.train``, ``ji.io``, ``ji.interp``, ``ji.viz``) hold the rest.
"""

from jaxinterp.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HookNameError,
    JaxinterpError,
    NonFiniteLossError,
    ShapeError,
    TokenError,
)
from jaxinterp.hooks import (
    Cache,
    Intervention,
    NestedTraceError,
    add,
    edit,
    hook,
    hook_names,
    hook_tree,
    is_hooked,
    layer_scope,
    patch,
    run_with_cache,
    run_with_hooks,
    scan_layers,
)
from jaxinterp.models import (
    HookedTransformer,
    TransformerConfig,
    attn_only_config,
    generate,
    gpt2_config,
    init_transformer,
    llama_config,
    lm_loss,
    neox_config,
    process_weights,
    token_losses,
)

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HookNameError",
    "HookedTransformer",
    "Intervention",
    "JaxinterpError",
    "NestedTraceError",
    "NonFiniteLossError",
    "ShapeError",
    "TokenError",
    "TransformerConfig",
    "add",
    "attn_only_config",
    "edit",
    "generate",
    "gpt2_config",
    "lm_loss",
    "process_weights",
    "token_losses",
    "hook",
    "hook_names",
    "hook_tree",
    "init_transformer",
    "is_hooked",
    "layer_scope",
    "llama_config",
    "neox_config",
    "patch",
    "run_with_cache",
    "run_with_hooks",
    "scan_layers",
]
