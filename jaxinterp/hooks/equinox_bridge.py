"""Equinox models under jaxinterp's hooks, without editing the model.

An Equinox model is a pytree of modules, so "add hook points" is a tree rewrite:
:func:`tag_submodules` returns a copy of the model in which each chosen submodule is
wrapped by :class:`Tagged`, whose ``__call__`` calls the original and tags its output as
the hook ``{path}.hook_out`` (path from the pytree: ``blocks.0.mlp.hook_out``). Nothing
is mutated; the weights are shared with the original::

    hooked = tag_submodules(model, lambda name, m: name.startswith("blocks."))
    out, cache = ji.run_with_cache(hooked, x, names="blocks.*.hook_out")

Equinox layers act on one example; batch by putting the transform inside ``jax.vmap``::

    outs, cache = jax.vmap(lambda x: ji.run_with_cache(hooked, x, names=...))(xs)

Limits. A submodule that the model itself calls under ``jax.vmap`` (the usual Equinox
idiom ``jax.vmap(self.mlp)(x)`` over positions) runs in a nested trace: tagging it raises
:class:`~jaxinterp.hooks.NestedTraceError`; tag its caller instead. Code that reads a
wrapped submodule's attributes still works (:class:`Tagged` forwards them), but code that
checks its type (``isinstance(self.mlp, eqx.nn.MLP)``) sees the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from jaxinterp.hooks._core import hook_tree

Select = Callable[[str, eqx.Module], bool]


class Tagged(eqx.Module):
    """Calls ``module`` and tags its output as the hook point ``name``."""

    module: Any
    name: str = eqx.field(static=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return hook_tree(self.name, self.module(*args, **kwargs), scoped=False)

    def __getattr__(self, item: str) -> Any:  # only reached for names Tagged lacks
        if item.startswith("__") or item in ("module", "name"):
            raise AttributeError(item)
        return getattr(self.module, item)


def _key(k: Any) -> str:
    return str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))


def tag_submodules(model: Any, select: Select | None = None, *, suffix: str = "hook_out") -> Any:
    """A copy of ``model`` whose callable submodules (at any depth) tag their outputs.

    Args:
      model: any pytree of Equinox modules; the model itself is not wrapped.
      select: ``select(name, module) -> bool`` keeps only some submodules (default: every
        callable one); ``name`` is the hook name, e.g. ``"blocks.0.attn.hook_out"``.
      suffix: last part of the hook names.
    """

    def is_module(x: Any) -> bool:
        return isinstance(x, eqx.Module)

    def rewrite(node: Any, prefix: tuple[str, ...]) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: x is not node and is_module(x)
        )
        out = []
        for path, leaf in leaves:
            if is_module(leaf) and not isinstance(leaf, Tagged):
                where = prefix + tuple(_key(k) for k in path)
                leaf = rewrite(leaf, where)
                name = ".".join((*where, suffix))
                if callable(leaf) and (select is None or select(name, leaf)):
                    leaf = Tagged(leaf, name)
            out.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, out)

    return rewrite(model, ())


def untag(model: Any) -> Any:
    """The model without its :class:`Tagged` wrappers (e.g. before saving it)."""
    is_tagged = lambda x: isinstance(x, Tagged)  # noqa: E731

    def strip(x: Any) -> Any:
        return jax.tree.map(strip, x.module, is_leaf=is_tagged) if is_tagged(x) else x

    return jax.tree.map(strip, model, is_leaf=is_tagged)


__all__ = ["Tagged", "tag_submodules", "untag"]
