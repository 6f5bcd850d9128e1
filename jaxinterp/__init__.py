"""jaxinterp: mechanistic interpretability, JAX-native.

``import jaxinterp as ji`` gives the curated public API: hooked transformers and their
configs, the hook transforms (cache, patch, steer), and the errors jaxinterp raises.
Sub-packages (``ji.data``, ``ji.train``, ``ji.io``, ``ji.interp``, ``ji.sae``, ``ji.viz``) hold
the rest.
"""

from jaxinterp import interp, models
from jaxinterp.errors import (
    ArgumentTypeError,
    CheckpointError,
    ConfigError,
    DataError,
    HookNameError,
    IndexRangeError,
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
    checked,
    edit,
    hook,
    hook_names,
    hook_tree,
    is_hooked,
    layer_scope,
    patch,
    remat,
    run_with_cache,
    run_with_hooks,
    scan_layers,
)
from jaxinterp.interp import (
    accumulated_resid,
    activation_patching,
    attribution_patching,
    compare_attribution,
    decompose_resid,
    direct_logit_attribution,
    logit_diff,
    logit_lens,
    path_patching,
    per_token_loss,
)
from jaxinterp.io.pretrained import from_pretrained, load_gguf, load_hf
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
from jaxinterp.models.hook_specs import get_act_name
from jaxinterp.named import NamedArray

__version__ = "0.1.0"

# Sub-packages loaded on first use (``ji.train``, ``ji.viz``...), so that importing
# jaxinterp does not pay for orbax, optax, tokenizers or matplotlib up front.
_LAZY = ("data", "io", "train", "viz", "features", "sae")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"jaxinterp.{name}")
    raise AttributeError(f"module 'jaxinterp' has no attribute {name!r}")

__all__ = [
    "ArgumentTypeError",
    "NamedArray",
    "accumulated_resid",
    "activation_patching",
    "attribution_patching",
    "compare_attribution",
    "data",
    "decompose_resid",
    "direct_logit_attribution",
    "interp",
    "io",
    "logit_diff",
    "logit_lens",
    "models",
    "path_patching",
    "per_token_loss",
    "sae",
    "train",
    "viz",
    "Cache",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HookNameError",
    "IndexRangeError",
    "HookedTransformer",
    "Intervention",
    "JaxinterpError",
    "NestedTraceError",
    "NonFiniteLossError",
    "ShapeError",
    "TokenError",
    "TransformerConfig",
    "add",
    "checked",
    "from_pretrained",
    "get_act_name",
    "load_gguf",
    "load_hf",
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
    "remat",
    "run_with_cache",
    "run_with_hooks",
    "scan_layers",
]
