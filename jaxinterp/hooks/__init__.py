"""Named hook points and the transforms that capture or edit them."""

from jaxinterp.hooks._core import (
    Handler,
    NestedTraceError,
    Site,
    handler_scope,
    hook,
    inline_jit_scope,
    is_hooked,
    layer_scope,
    scan_layers,
)
from jaxinterp.hooks.interventions import Intervention, add, edit, hook_axes, patch
from jaxinterp.hooks.transforms import Cache, hook_names, run_with_cache, run_with_hooks

__all__ = [
    "Cache",
    "Handler",
    "Intervention",
    "NestedTraceError",
    "Site",
    "add",
    "edit",
    "handler_scope",
    "hook",
    "hook_axes",
    "hook_names",
    "inline_jit_scope",
    "is_hooked",
    "layer_scope",
    "patch",
    "run_with_cache",
    "run_with_hooks",
    "scan_layers",
]
