"""Splicing an SAE into a model at its hook: evaluation, patching and steering.

``splice(sae)`` is an intervention (see :mod:`jaxinterp.hooks`) that replaces the
activation ``x`` at ``sae.cfg.hook_name`` by the SAE's reconstruction::

    x  ->  decode(edit(encode(x)))                       keep_error=False
    x  ->  decode(edit(encode(x))) + (x - sae(x))        keep_error=True

With ``keep_error`` and no edit the model's output is unchanged (up to float rounding);
with an edit (clamp a feature, add to it) only the edited features' contribution moves,
which is how features are steered (Templeton et al. 2024). ``edit(acts, edit_params)``
is any function of the latent activations; ``edit_params`` is a pytree of arrays, so a
sweep over features or strengths is one ``vmap``. The SAE itself travels in the
intervention's arrays, so it can be vmapped or differentiated too.

A transcoder reads ``hook_name`` and writes ``hook_name_out``: ``splice`` returns two
interventions (record the input, replace the output), to be passed together. Attention
SAEs on ``hook_z`` read ``[..., n_heads, d_head]`` flattened to ``d_in`` and write back
in that shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.hooks import Intervention, edit, run_with_hooks
from jaxinterp.sae.sae import SAE

Edit = Callable[[Array, Any], Array]


def _flat(sae: SAE, x: Array) -> tuple[Array, tuple[int, ...]]:
    """``x`` as ``[..., d_in]`` (folding ``[..., n_heads, d_head]`` when that is the width)."""
    if x.shape[-1] == sae.cfg.d_in:
        return x, x.shape
    if x.ndim >= 2 and x.shape[-1] * x.shape[-2] == sae.cfg.d_in:
        return x.reshape(*x.shape[:-2], sae.cfg.d_in), x.shape
    site = sae.cfg.hook_name or "the hook"
    raise ShapeError(f"An SAE with d_in={sae.cfg.d_in} cannot read {site}: its activations have "
                     f"shape {x.shape}.")


@dataclasses.dataclass(frozen=True)
class _Reconstruct:
    keep_error: bool
    edit: Edit | None

    def __call__(self, x: Array, params: dict) -> Array:
        sae: SAE = params["sae"]
        flat, shape = _flat(sae, x)
        acts = sae.encode(flat)
        out = sae.decode(acts if self.edit is None else self.edit(acts, params["edit"]))
        out = out + sae.skip(flat)
        if self.keep_error:
            out = out + (flat.astype(out.dtype) - sae(flat))
        return out.reshape(shape).astype(x.dtype)


@dataclasses.dataclass(eq=False)
class _Cell:
    """Carries a transcoder's input from its read hook to its write hook within one trace."""

    value: Any = None

    def record(self, x: Array, params: Any) -> Array:
        self.value = x
        return x


@dataclasses.dataclass(frozen=True, eq=False)
class _Transcode:
    cell: _Cell
    keep_error: bool
    edit: Edit | None

    def __call__(self, y: Array, params: dict) -> Array:
        if self.cell.value is None:
            raise ConfigError("A transcoder's output hook was reached before its input hook.")
        sae: SAE = params["sae"]
        x, _ = _flat(sae, self.cell.value)
        acts = sae.encode(x)
        out = sae.decode(acts if self.edit is None else self.edit(acts, params["edit"])) + sae.skip(x)
        if self.keep_error:
            out = out + (y.reshape(out.shape).astype(out.dtype) - sae(x))
        return out.reshape(y.shape).astype(y.dtype)


def splice(sae: SAE, *, hook_name: str | None = None, keep_error: bool = False,
           edit_fn: Edit | None = None, edit_params: Any = None) -> list[Intervention]:
    """Interventions that run ``sae`` at its hook (pass them to ``run_with_hooks``).

    Args:
        sae: an autoencoder or transcoder.
        hook_name: where to splice (default ``sae.cfg.hook_name``; a transcoder's output
            site is ``cfg.hook_name_out``).
        keep_error: add back the SAE's error term ``x - sae(x)``.
        edit_fn: optional ``edit_fn(acts, edit_params) -> acts`` applied to the latents.
        edit_params: arrays for ``edit_fn`` (vmappable).
    """
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise ConfigError("This SAE has no hook_name; pass splice(sae, hook_name=...).")
    params = {"sae": sae, "edit": edit_params}
    if not sae.cfg.is_transcoder:
        return [edit(name, _Reconstruct(keep_error, edit_fn), params)]
    out_name = sae.cfg.hook_name_out
    if not out_name:
        raise ConfigError("This transcoder has no hook_name_out; set it in its SAEConfig.")
    cell = _Cell()
    return [edit(name, cell.record), edit(out_name, _Transcode(cell, keep_error, edit_fn), params)]


def run_with_sae(model: Callable, tokens: Array, sae: SAE, *, keep_error: bool = False,
                 **kwargs: Any) -> Array:
    """``model(tokens)`` with ``sae`` spliced in at its hook (see :func:`splice`)."""
    return run_with_hooks(model, tokens, interventions=splice(sae, keep_error=keep_error), **kwargs)


def clamp(acts: Array, params: dict) -> Array:
    """An ``edit_fn``: set latent ``params["index"]`` to ``params["value"]`` (steering)."""
    index = jnp.asarray(params["index"])
    hit = jnp.arange(acts.shape[-1]) == index
    return jnp.where(hit, jnp.asarray(params["value"], acts.dtype), acts)
