"""Equinox models under jaxinterp's hooks, without editing the model.

An Equinox model is a pytree of modules, so "add hook points" is a tree rewrite:
:func:`tag_submodules` returns a copy of the model in which each chosen submodule is
wrapped by :class:`Tagged`, whose ``__call__`` tags its positional array arguments as
``{path}.hook_in`` and its output as ``{path}.hook_out`` (path from the pytree:
``blocks.0.mlp.hook_out``). Nothing is mutated; the weights are shared with the original,
and the wrapper holds no arrays of its own, so ``eqx.tree_serialise_leaves`` writes the
same file for both::

    hooked = tag_submodules(model)                   # every submodule, inputs and outputs
    out, cache = ji.run_with_cache(hooked, x, names="blocks.{l}.mlp.hook_out")

Equinox layers act on one example and the model batches with ``jax.vmap``, inside
(``jax.vmap(self.mlp)(x)`` over positions) and outside (the training step). Both work: a
hook under the model's own vmap sees the whole batch (``blocks.0.mlp.hook_out`` is
``[pos, d_model]`` for one example), and the transform goes inside the outer vmap, or
around it (then the batch axis comes first)::

    outs, cache = jax.vmap(lambda x: ji.run_with_cache(hooked, x, names=...))(xs)
    loss, cache = ji.run_with_cache(loss_fn, hooked, xs, ys, names=...)   # loss_fn vmaps

An ``eqx.filter_jit`` inside the function needs ``inline_jit=True``; an
``eqx.filter_checkpoint`` needs :func:`jaxinterp.hooks.remat` in its place. Code that reads
a wrapped submodule's attributes still works (:class:`Tagged` forwards them), but code
that checks its type (``isinstance(self.mlp, eqx.nn.MLP)``) sees the wrapper;
:func:`untag` removes the wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from jaxinterp.hooks._core import hook_tree

Select = Callable[[str, eqx.Module], bool]


class Tagged(eqx.Module):
    """Calls ``module``, tagging its positional arrays as ``in_name`` (unless None) and its
    output as ``name``."""

    module: Any
    name: str = eqx.field(static=True)
    in_name: str | None = eqx.field(static=True, default=None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.in_name is not None:
            args = hook_tree(self.in_name, args, scoped=False)
        return hook_tree(self.name, self.module(*args, **kwargs), scoped=False)

    def __getattr__(self, item: str) -> Any:  # only reached for names Tagged lacks
        if item.startswith("__") or item in ("module", "name", "in_name"):
            raise AttributeError(item)
        return getattr(self.module, item)


def _key(k: Any) -> str:
    return str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))


def tag_submodules(model: Any, select: Select | None = None, *, suffix: str = "hook_out",
                   inputs: bool = True) -> Any:
    """A copy of ``model`` whose callable submodules (at any depth) tag inputs and outputs.

    Args:
      model: any pytree of Equinox modules; the model itself is not wrapped.
      select: ``select(name, module) -> bool`` keeps only some submodules (default: every
        callable one); ``name`` is the output hook's name, e.g. ``"blocks.0.attn.hook_out"``.
      suffix: last part of the output hooks' names.
      inputs: also tag the positional array arguments as ``{path}.hook_in``.
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
                    leaf = Tagged(leaf, name, ".".join((*where, "hook_in")) if inputs else None)
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
