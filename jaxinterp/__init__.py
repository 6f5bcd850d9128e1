"""jaxinterp: mechanistic interpretability, JAX-native.

``import jaxinterp as ji`` gives the curated public API: hooked transformers and their
configs, the hook transforms (cache, patch, steer), and the errors jaxinterp raises.
Sub-packages (``ji.data``, ``ji.train``, ``ji.io``, ``ji.interp``, ``ji.circuits``, ``ji.sae``,
``ji.features``, ``ji.viz``) hold the rest.

Every name is imported on first use (PEP 562), so ``import jaxinterp`` costs next to
nothing beyond ``import jax``: Equinox, orbax, optax, tokenizers and matplotlib load only
when something needs them. The ``TYPE_CHECKING`` imports at the end of this file are the
one list of the curated names.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports below are the API, served by __getattr__)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

__version__ = "0.1.0"


def _public_names() -> dict[str, str]:
    """Name -> defining module, read from the ``TYPE_CHECKING`` imports at the end of this
    file: they are the one list of the curated API, seen by IDEs and type checkers and
    served lazily at run time."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING")
    home = {}
    for node in block.body:
        for alias in node.names:
            home[alias.name] = (f"jaxinterp.{alias.name}" if node.module == "jaxinterp"
                                else node.module)
    return home


_HOME = _public_names()
_ERRORS = (ArgumentTypeError, CheckpointError, ConfigError, DataError, HookNameError,
           IndexRangeError, JaxinterpError, NonFiniteLossError, ShapeError, TokenError)
__all__ = sorted([*_HOME, *(error.__name__ for error in _ERRORS)])


def __getattr__(name: str):
    if name in _HOME:
        module = importlib.import_module(_HOME[name])
        value = module if module.__name__ == f"jaxinterp.{name}" else getattr(module, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jaxinterp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the public API: IDEs and type checkers read it here, __getattr__ serves it
    from jaxinterp import circuits, data, features, interp, io, models, sae, train, viz
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
        path_patching_sweep,
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
