"""Flax models (linen and NNX) under jaxinterp's hooks, without editing the model.

Linen routes every module method call through ``flax.linen.intercept_methods``. While
:func:`linen_hooks` is active, the inputs and output of each submodule's ``__call__``
become hook points named by its module path, so ``run_with_cache`` and ``run_with_hooks``
see a model nobody wrote for jaxinterp::

    apply = hooked_apply(model)                       # like model.apply, in/outputs tagged
    logits, cache = ji.run_with_cache(apply, variables, x, names="blocks_{l}.mlp.hook_out")
    ablated = ji.run_with_hooks(apply, variables, x,
                                interventions=[ji.patch("blocks_1.attn.hook_out", 0.0)])

Names: ``{path}.hook_out`` with the path's parts joined by dots (``blocks_0.mlp.Dense_0``)
and ``hook_out`` for the top module; ``{path}.hook_in`` for the positional arguments
(``hook_in_0``, ``hook_in_1``... when there are several arrays); other methods listed in
``methods`` give ``{path}.{method}.hook_out``; a tuple or dict output of several arrays
tags each (``attn.hook_out_0``). ``ji.hook_names(apply, variables, x)`` lists them.

NNX models are tagged in place (:mod:`jaxinterp.hooks.nnx_bridge`, re-exported here):
``tag_nnx_submodules(model)`` and ``untag(model)``.

Scanned and rematerialised layers. ``nn.scan`` and ``nn.remat`` trace their bodies into
programs of their own; replace them with :func:`jaxinterp.hooks.flax_lifted.scan` and
:func:`~jaxinterp.hooks.flax_lifted.remat` (same arguments, same parameters), and the hooks
inside read ``layers.{l}.attn.hook_out``. Left as they are, hooks inside them are skipped
unless asked for (then ``NestedTraceError`` names the fix); so is anything inside
``nn.cond``/``nn.while_loop``. ``nn.vmap`` works (the hook sees the whole batch) and
``nn.jit`` works with ``inline_jit=True``. ``self.sow`` intermediates are capture-only in
Flax (``sow`` cannot return a replacement); tag the value with ``ji.hook`` to patch it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn

from jaxinterp.hooks._core import hook_tree
from jaxinterp.hooks.nnx_bridge import is_tagged, tag_nnx_submodules, untag

Select = Callable[[str, nn.Module], bool]


def module_hook_name(path: Sequence[str], method: str = "__call__", suffix: str = "hook_out") -> str:
    """The hook name of a linen module's output: ``blocks_0.mlp.hook_out``."""
    parts = [str(p) for p in path] + ([] if method == "__call__" else [method]) + [suffix]
    return ".".join(parts)


@contextlib.contextmanager
def linen_hooks(select: Select | None = None, *, methods: Sequence[str] = ("__call__",),
                suffix: str = "hook_out", inputs: bool = True) -> Iterator[None]:
    """Within the block, every linen module's output is the hook ``{path}.hook_out`` and
    its positional arguments ``{path}.hook_in``.

    Args:
      select: ``select(name, module) -> bool`` keeps only some modules (default: all);
        ``name`` is the output hook's name.
      methods: the module methods whose outputs are tagged.
      suffix: last part of the output hooks' names.
      inputs: also tag the positional arguments.
    """
    methods = tuple(methods)
    open_calls: list[tuple[str, int]] = []  # (name, id of module) of the calls being tagged

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name not in methods:
            return next_fun(*args, **kwargs)
        name = module_hook_name(context.module.path, context.method_name, suffix)
        call = (name, id(context.module))
        # A lifted module's inner call (flax_lifted's subclasses call the original
        # __call__ through super()) is the same module and name: tag it once.
        if (select is not None and not select(name, context.module)) or call in open_calls:
            return next_fun(*args, **kwargs)
        if inputs:
            args = hook_tree(module_hook_name(context.module.path, context.method_name, "hook_in"),
                             args, scoped=False)
        open_calls.append(call)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            open_calls.pop()
        return hook_tree(name, out, scoped=False)

    with nn.intercept_methods(interceptor):
        yield


def hooked_apply(module: nn.Module, select: Select | None = None, *,
                 methods: Sequence[str] = ("__call__",), suffix: str = "hook_out",
                 inputs: bool = True, **apply_kwargs: Any) -> Callable[..., Any]:
    """``module.apply`` with every submodule's inputs and output tagged (see
    :func:`linen_hooks`).

    Returns ``apply(variables, *args, **kwargs)``; ``apply_kwargs`` (``rngs``,
    ``mutable``, ``method``...) are passed to ``module.apply``.
    """

    def apply(variables: Any, *args: Any, **kwargs: Any) -> Any:
        with linen_hooks(select, methods=methods, suffix=suffix, inputs=inputs):
            return module.apply(variables, *args, **apply_kwargs, **kwargs)

    return apply


__all__ = [
    "hooked_apply", "is_tagged", "linen_hooks", "module_hook_name", "tag_nnx_submodules", "untag",
]
