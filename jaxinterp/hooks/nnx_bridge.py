"""Flax NNX models under jaxinterp's hooks, tagged in place.

NNX modules are mutable Python objects that users train in place (``optimizer.update``
writes new values into the model's Variables). A tagged *copy* would drift from the
model as soon as it trains, and a wrapper module would add a level to every state path,
so checkpoints would no longer line up. :func:`tag_nnx_submodules` therefore tags the
model **in place**: each chosen submodule's class becomes a subclass (same name, same
fields, same Variables) whose ``__call__`` tags its inputs and output::

    tag_nnx_submodules(model)                      # in place; returns the same model
    out, cache = ji.run_with_cache(model, x, names="layers.{l}.hook_out")
    ...train the model as usual: nothing to re-sync...
    untag(model)                                   # the original classes again

Names are graph paths: ``layers.0.attn.hook_out`` for the output, ``layers.0.attn.hook_in``
for the positional arguments (``hook_in_0``, ``hook_in_1``... when there are several
arrays). State paths (``nnx.state(model)``), the Variables and the values are unchanged,
so checkpoints saved before or after tagging restore into either. Outside a jaxinterp
transform a tagged module behaves exactly as before (tags are the identity). Code that
tests ``type(m) is nnx.Linear`` sees the subclass; ``isinstance`` still holds. The tag
survives ``nnx.split``/``nnx.merge`` (and so ``nnx.jit``, ``nnx.scan``), since the graph
records the class.

A module called twice (weight tying, a shared block) is one name: a capture keeps the
last call (and warns), an intervention applies to both.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from flax import nnx

from jaxinterp.hooks._core import hook_tree

Select = Callable[[str, nnx.Module], bool]

_CLASSES: dict[tuple[type, str, str, bool], type] = {}


def _tagged_class(base: type, path: str, suffix: str, inputs: bool) -> type:
    """A subclass of ``base`` whose ``__call__`` tags inputs and output under ``path``."""
    key = (base, path, suffix, inputs)
    if key in _CLASSES:
        return _CLASSES[key]
    out_name, in_name = f"{path}.{suffix}", f"{path}.hook_in"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if inputs:
            args = hook_tree(in_name, args, scoped=False)
        return hook_tree(out_name, base.__call__(self, *args, **kwargs), scoped=False)

    def fill(ns: dict) -> None:
        ns.update(__call__=__call__, __module__=base.__module__, __qualname__=base.__qualname__,
                  _jaxinterp_tag=(base, path))

    cls = types.new_class(base.__name__, (base,), {}, fill)
    _CLASSES[key] = cls
    return cls


def _path(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def tag_nnx_submodules(model: nnx.Module, select: Select | None = None, *,
                       suffix: str = "hook_out", inputs: bool = True) -> nnx.Module:
    """Tags, in place, the inputs and output of an NNX ``model``'s callable submodules.

    Args:
      model: the model; it is modified in place (and returned) and stays a plain NNX
        model: same Variables, same state paths, same behaviour outside jaxinterp.
      select: ``select(name, module) -> bool`` keeps only some submodules (default: every
        callable one except the model itself); ``name`` is the output hook's name,
        ``"layers.0.attn.hook_out"``.
      suffix: last part of the output hooks' names.
      inputs: also tag the positional array arguments as ``{path}.hook_in``.

    Tagging again replaces the earlier tags; :func:`untag` removes them.
    """
    untag(model)
    for path, module in list(nnx.iter_modules(model)):
        if not path or not callable(module):
            continue
        name = f"{_path(path)}.{suffix}"
        if select is not None and not select(name, module):
            continue
        object.__setattr__(module, "__class__", _tagged_class(type(module), _path(path), suffix, inputs))
    return model


def untag(model: nnx.Module) -> nnx.Module:
    """Removes, in place, the tags :func:`tag_nnx_submodules` added; returns ``model``."""
    for _, module in list(nnx.iter_modules(model)):
        tag = type(module).__dict__.get("_jaxinterp_tag")
        if tag is not None:
            object.__setattr__(module, "__class__", tag[0])
    return model


def is_tagged(module: nnx.Module) -> bool:
    return "_jaxinterp_tag" in type(module).__dict__


__all__ = ["is_tagged", "tag_nnx_submodules", "untag"]
