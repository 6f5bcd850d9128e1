"""Flax models (linen and NNX) under jaxinterp's hooks, without editing the model.

Linen routes every module method call through ``flax.linen.intercept_methods``. While
:func:`linen_hooks` is active, the output of each submodule's ``__call__`` becomes a hook
point named by its module path, so ``run_with_cache`` and ``run_with_hooks`` see a model
nobody wrote for jaxinterp::

    apply = hooked_apply(model)                       # like model.apply, outputs tagged
    logits, cache = ji.run_with_cache(apply, variables, x, names="blocks_*.mlp.hook_out")
    ablated = ji.run_with_hooks(apply, variables, x,
                                interventions=[ji.patch("blocks_1.attn.hook_out", 0.0)])

Names: ``{path}.hook_out`` with the path's parts joined by dots (``blocks_0.mlp.Dense_0``)
and ``hook_out`` for the top module; other methods listed in ``methods`` give
``{path}.{method}.hook_out``; a tuple or dict output tags each array leaf
(``attn.hook_out_0``). ``ji.hook_names(apply, variables, x)`` lists them.

NNX modules are mutable objects, so the NNX route is a rewrite like Equinox's:
:func:`tag_nnx_submodules` returns a copy (``nnx.clone``; arrays are shared) whose chosen
submodules are wrapped by :class:`NNXTagged`, named by graph path (``blocks.0.hook_out``)::

    hooked = tag_nnx_submodules(model, lambda name, m: name.startswith("blocks."))
    out, cache = ji.run_with_cache(hooked, x, names="blocks.?.hook_out")

Limits. A module called twice (weight tying, a shared block) is one name: a capture keeps
the last call, an intervention applies to both. Modules inside ``nn.scan``, ``nn.vmap``,
``nn.remat``/``nn.jit`` or a ``jax.vmap`` run in a nested trace and raise
:class:`~jaxinterp.hooks.NestedTraceError` (``inline_jit=True`` handles ``nn.jit``; for the
others tag the module that calls them, or move the transform inside). ``self.sow``
intermediates are capture-only in Flax (``sow`` cannot return a replacement); tag the
value with ``ji.hook`` to patch it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
from flax import nnx

from jaxinterp.hooks._core import hook_tree

Select = Callable[[str, nn.Module], bool]


def module_hook_name(path: Sequence[str], method: str = "__call__", suffix: str = "hook_out") -> str:
    """The hook name of a linen module's output: ``blocks_0.mlp.hook_out``."""
    parts = [str(p) for p in path] + ([] if method == "__call__" else [method]) + [suffix]
    return ".".join(parts)


@contextlib.contextmanager
def linen_hooks(select: Select | None = None, *, methods: Sequence[str] = ("__call__",),
                suffix: str = "hook_out") -> Iterator[None]:
    """Within the block, every linen module output is the hook ``{path}.hook_out``.

    Args:
      select: ``select(name, module) -> bool`` keeps only some modules (default: all).
      methods: the module methods whose outputs are tagged.
      suffix: last part of the hook names.
    """
    methods = tuple(methods)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name not in methods:
            return out
        name = module_hook_name(context.module.path, context.method_name, suffix)
        if select is not None and not select(name, context.module):
            return out
        return hook_tree(name, out, scoped=False)

    with nn.intercept_methods(interceptor):
        yield


def hooked_apply(module: nn.Module, select: Select | None = None, *,
                 methods: Sequence[str] = ("__call__",), suffix: str = "hook_out",
                 **apply_kwargs: Any) -> Callable[..., Any]:
    """``module.apply`` with every submodule's output tagged (see :func:`linen_hooks`).

    Returns ``apply(variables, *args, **kwargs)``; ``apply_kwargs`` (``rngs``,
    ``mutable``, ``method``...) are passed to ``module.apply``.
    """

    def apply(variables: Any, *args: Any, **kwargs: Any) -> Any:
        with linen_hooks(select, methods=methods, suffix=suffix):
            return module.apply(variables, *args, **apply_kwargs, **kwargs)

    return apply


class NNXTagged(nnx.Module):
    """Calls ``module`` and tags its output as the hook point ``hook_name``."""

    def __init__(self, module: nnx.Module, hook_name: str):
        self.module = module
        self.hook_name = hook_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return hook_tree(self.hook_name, self.module(*args, **kwargs), scoped=False)


def tag_nnx_submodules(model: nnx.Module, select: Select | None = None, *,
                       suffix: str = "hook_out") -> nnx.Module:
    """A copy of an NNX ``model`` whose callable submodules tag their outputs.

    ``select(name, module) -> bool`` keeps only some (default: every callable submodule
    except the model itself); ``name`` is the hook name, ``"blocks.0.attn.hook_out"``.
    """
    model = nnx.clone(model)
    found = [(tuple(path), m) for path, m in nnx.iter_modules(model) if path]
    for path, module in sorted(found, key=lambda pm: -len(pm[0])):  # deepest first
        name = ".".join([*(str(p) for p in path), suffix])
        if not callable(module) or (select is not None and not select(name, module)):
            continue
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        if isinstance(path[-1], int):
            parent[path[-1]] = NNXTagged(module, name)
        else:
            setattr(parent, path[-1], NNXTagged(module, name))
    return model


__all__ = [
    "NNXTagged", "hooked_apply", "linen_hooks", "module_hook_name", "tag_nnx_submodules",
]
