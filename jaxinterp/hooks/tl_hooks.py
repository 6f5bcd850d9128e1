"""TransformerLens-style hook functions, mapped onto :func:`jaxinterp.hooks.edit`.

TransformerLens users write ``model.run_with_hooks(tokens, fwd_hooks=[(name, hook_fn)])``
with ``hook_fn(activation, hook)`` returning the new activation (or editing it in place
and returning None). The same works here::

    def zero_head_3(z, hook):            # z: [batch, pos, head, d_head]
        return z.at[:, :, 3].set(0.0)

    logits = ji.run_with_hooks(model, tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_3)])

``name`` is a hook name, a wildcard pattern or a predicate on names. JAX arrays are
immutable, so a hook function that returns None leaves the activation unchanged (an
in-place edit has no effect). ``hook.name`` is the concrete hook name and
``hook.layer()`` its layer. For a model that lists its hook names, a pattern expands to
every concrete name it matches, one edit each, so the function sees its real name even
inside the scanned layers (at the cost of evaluating it once per matched layer there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jaxinterp.errors import ArgumentTypeError, HookNameError
from jaxinterp.hooks.interventions import Intervention, Layout, Select, layer_in_name
from jaxinterp.hooks.patterns import is_pattern, matches

FwdHooks = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


@dataclasses.dataclass(frozen=True)
class HookPoint:
    """What a TransformerLens hook function receives as ``hook``."""

    name: str

    def layer(self) -> int:
        layer = layer_in_name(self.name)
        if layer is None:
            raise HookNameError(f"hook {self.name!r} is not inside a layer")
        return layer


@dataclasses.dataclass(frozen=True)
class _HookFn(Select):
    fn: Callable[..., Any]
    name: str | None = None  # the concrete name, when known before the run

    def __call__(self, x, p, layout: Layout):
        out = self.fn(x, hook=HookPoint(self.name or layout.name))
        return x if out is None else out


def from_fwd_hooks(fwd_hooks: FwdHooks, known: list[str] | None) -> list[Intervention]:
    """One intervention per (concrete name, function); patterns expand over ``known``."""
    out = []
    for item in fwd_hooks or ():
        if not (isinstance(item, tuple | list) and len(item) == 2 and callable(item[1])):
            raise ArgumentTypeError(f"fwd_hooks items are (name, hook_fn) pairs, got {item!r}")
        spec, fn = item
        if callable(spec):
            if known is None:
                raise HookNameError("a predicate in fwd_hooks needs a function whose hook names "
                                    "can be listed; pass a name or pattern instead")
            names = [n for n in known if spec(n)]
            if not names:
                raise HookNameError("the fwd_hooks predicate matches no hook name")
        elif known is not None and is_pattern(spec):
            names = [n for n in known if matches(n, spec)]
        else:
            names = [spec]
        out += [Intervention(n, _HookFn(fn, n if known is not None else None)) for n in names]
    return out
