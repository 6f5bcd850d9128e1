"""Named hook points and the transforms that capture or edit them."""

from jaxinterp.hooks._core import (
    Handler,
    NestedTraceError,
    Site,
    handler_scope,
    hook,
    is_hooked,
    layer_scope,
    scan_layers,
)
from jaxinterp.hooks.transforms import (
    Intervention,
    add,
    edit,
    hook_axes,
    hook_names,
    patch,
    run_with_cache,
    run_with_hooks,
)

__all__ = [
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
    "is_hooked",
    "layer_scope",
    "patch",
    "run_with_cache",
    "run_with_hooks",
    "scan_layers",
]
