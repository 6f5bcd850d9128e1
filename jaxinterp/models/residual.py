"""The residual stream read from a cache: accumulated, decomposed, per head, into logits.

The residual stream after layer ``l`` is the sum of everything written so far::

    resid_post_l = embed + pos_embed + sum_{j<=l} (attn_out_j + mlp_out_j)

These functions take a cache from ``run_with_cache`` and the model, and return stacks
``[component, batch, pos, d_model]`` with labels, as TransformerLens's
``ActivationCache`` methods do (:class:`ActivationCache` exposes them as methods).
``apply_ln=True`` divides each component by the final norm's scale, taken from the actual
final residual (so it is a constant, and the stack still sums to what the unembedding
reads); then ``logit_attrs`` gives each component's direct share of a logit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.errors import HookNameError, IndexRangeError, ShapeError
from jaxinterp.hooks.cache import Cache
from jaxinterp.models.components import head_results
from jaxinterp.named import NamedArray


def _need(cache: Cache, name: str) -> Array:
    if name not in cache:
        raise HookNameError(f"this needs {name!r} in the cache; run_with_cache(model, tokens) "
                            f"without names= caches everything")
    return cache[name]


def _layer_stop(model: Any, layer: int | None) -> int:
    L = model.cfg.n_layers
    if layer is None:
        return L
    if not isinstance(layer, int) or not -L - 1 <= layer <= L:
        raise IndexRangeError(f"layer {layer!r} is out of range: 0..{L} (the residual before that layer)")
    return layer % (L + 1) if layer < 0 else layer


def final_resid(cache: Cache, model: Any) -> Float[Array, "batch pos d_model"]:
    L = model.cfg.n_layers
    return _need(cache, f"blocks.{L - 1}.hook_resid_post") if L else _embedding(cache, model)


def _embedding(cache: Cache, model: Any) -> Array:
    x = _need(cache, "hook_embed")
    return x + cache["hook_pos_embed"] if "hook_pos_embed" in cache else x


def apply_ln_to_stack(cache: Cache, model: Any, stack: Float[Array, "c batch pos d_model"]) -> Array:
    """Each component as the final norm sees it: centred (LayerNorm) and divided by the
    final residual's scale. The normalised stack sums to ``ln_final(resid) / w - b``."""
    return normalize_like_final(model, stack, final_resid(cache, model))


def normalize_like_final(model: Any, x: Array, final: Float[Array, "... d_model"]) -> Array:
    """``x`` centred (LayerNorm) and divided by the final norm's scale of ``final`` (the
    residual the norm actually sees; ``final``'s shape broadcasts against ``x``'s tail)."""
    cfg = model.cfg
    if not cfg.final_norm or cfg.normalization_type is None:
        return x
    centre = cfg.normalization_type == "LN"
    f = final - final.mean(-1, keepdims=True) if centre else final
    scale = jnp.sqrt((f * f).mean(-1, keepdims=True) + cfg.eps)
    x = x - x.mean(-1, keepdims=True) if centre else x
    return x / scale


def accumulated_resid(cache: Cache, model: Any, layer: int | None = None, *, incl_mid: bool = False,
                      apply_ln: bool = False) -> NamedArray:
    """The residual stream before each layer up to ``layer`` (default: all, plus the final
    one): ``[component, batch, pos, d_model]`` labelled ``0_pre``, (``0_mid``), ...,
    ``final_post``."""
    L = model.cfg.n_layers
    stop = _layer_stop(model, layer)
    parts, labels = [], []
    for i in range(min(stop, L)):
        parts.append(_need(cache, f"blocks.{i}.hook_resid_pre"))
        labels.append(f"{i}_pre")
        if incl_mid:
            parts.append(_need(cache, f"blocks.{i}.hook_resid_mid"))
            labels.append(f"{i}_mid")
    if stop == L:
        parts.append(final_resid(cache, model))
        labels.append("final_post")
    stack = jnp.stack(parts)
    stack = apply_ln_to_stack(cache, model, stack) if apply_ln else stack
    return NamedArray(stack, ("component", "batch", "pos", "d_model"), {"component": labels})


def decompose_resid(cache: Cache, model: Any, layer: int | None = None, *, mode: str = "all",
                    apply_ln: bool = False) -> NamedArray:
    """What wrote the residual stream before ``layer`` (default: the final one), one entry
    per writer: ``embed``, ``pos_embed``, then ``{l}_attn_out`` and/or ``{l}_mlp_out``
    (``mode`` ``"all"``, ``"attn"`` or ``"mlp"``). The entries sum to that residual."""
    if mode not in ("all", "attn", "mlp"):
        raise ShapeError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    stop = _layer_stop(model, layer)
    parts, labels = [_need(cache, "hook_embed")], ["embed"]
    if "hook_pos_embed" in cache:
        parts.append(cache["hook_pos_embed"])
        labels.append("pos_embed")
    for i in range(stop):
        for kind in ("attn_out", "mlp_out"):
            name = f"blocks.{i}.hook_{kind}"
            if mode in ("all", kind[:-4]) and (kind == "attn_out" or model.cfg.has_mlp):
                parts.append(_need(cache, name))
                labels.append(f"{i}_{kind}")
    stack = jnp.stack(parts)
    stack = apply_ln_to_stack(cache, model, stack) if apply_ln else stack
    return NamedArray(stack, ("component", "batch", "pos", "d_model"), {"component": labels})


def stack_head_results(cache: Cache, model: Any, layer: int | None = None, *,
                       apply_ln: bool = False) -> NamedArray:
    """Each head's output ``z @ W_O`` in the layers before ``layer`` (default: all):
    ``[component, batch, pos, d_model]`` labelled ``L{l}H{h}``. Uses ``attn.hook_result``
    when cached, else ``attn.hook_z`` and ``W_O``. Biases (``b_O``) are not included."""
    stop = _layer_stop(model, layer)
    parts, labels = [], []
    for i in range(min(stop, model.cfg.n_layers)):
        result = cache.get(f"blocks.{i}.attn.hook_result")
        if result is None:
            z = _need(cache, f"blocks.{i}.attn.hook_z")
            result = head_results(z, model.blocks.attn.W_O[i])
        parts.append(jnp.moveaxis(result, 2, 0))
        labels += [f"L{i}H{h}" for h in range(result.shape[2])]
    stack = jnp.concatenate(parts) if parts else jnp.zeros((0,) + final_resid(cache, model).shape)
    stack = apply_ln_to_stack(cache, model, stack) if apply_ln else stack
    return NamedArray(stack, ("component", "batch", "pos", "d_model"), {"component": labels})


def logit_attrs(model: Any, stack: Float[Array, "c batch pos d_model"] | NamedArray, tokens: Any,
                incorrect_tokens: Any = None) -> NamedArray:
    """Each component's direct contribution to the logit of ``tokens`` (minus that of
    ``incorrect_tokens``): ``stack @ W_U[:, token]``, ``[component, batch, pos]``.

    ``tokens`` is one id, one per example ``[batch]`` or one per position ``[batch, pos]``.
    Apply the final norm first (``apply_ln=True`` on the stack) for attributions that
    add up to the logits.
    """
    labels = dict(getattr(stack, "labels", {}))
    x = jnp.asarray(stack.values if isinstance(stack, NamedArray) else stack)
    W_U = model.unembed_matrix

    def direction(t: Any) -> Array:
        t = jnp.asarray(t)
        if t.ndim > 2 or not jnp.issubdtype(t.dtype, jnp.integer):
            raise ShapeError(f"tokens must be int ids: one, [batch] or [batch, pos]; got {t.shape}")
        if int(t.min()) < 0 or int(t.max()) >= W_U.shape[1]:
            raise IndexRangeError(f"token ids must be in 0..{W_U.shape[1] - 1}")
        t = t.reshape(t.shape + (1,) * (2 - t.ndim)) if t.ndim else t.reshape(1, 1)
        return jnp.broadcast_to(W_U.T[t], x.shape[1:])  # [batch, pos, d_model]

    d = direction(tokens)
    if incorrect_tokens is not None:
        d = d - direction(incorrect_tokens)
    out = jnp.einsum("cbpd,bpd->cbp", x, d)
    return NamedArray(out, ("component", "batch", "pos"), {k: v for k, v in labels.items() if k == "component"})


class ActivationCacheMethods:
    """TransformerLens ``ActivationCache`` methods over a :class:`Cache` and its model.

    A cache made by ``ji.run_with_cache(model, ...)`` outside ``jit`` remembers its model;
    one that came out of a jitted function needs ``model=`` on each call.
    """

    _model: Any = None

    def _m(self, model: Any) -> Any:
        model = model if model is not None else self._model
        if model is None:
            raise ShapeError("this cache does not know its model (it came out of jit); pass model=")
        return model

    def accumulated_resid(self, layer=None, *, incl_mid=False, apply_ln=False, model=None):
        return accumulated_resid(self, self._m(model), layer, incl_mid=incl_mid, apply_ln=apply_ln)

    def decompose_resid(self, layer=None, *, mode="all", apply_ln=False, model=None):
        return decompose_resid(self, self._m(model), layer, mode=mode, apply_ln=apply_ln)

    def stack_head_results(self, layer=None, *, apply_ln=False, model=None):
        return stack_head_results(self, self._m(model), layer, apply_ln=apply_ln)

    def apply_ln_to_stack(self, stack, *, model=None):
        values = stack.values if isinstance(stack, NamedArray) else stack
        out = apply_ln_to_stack(self, self._m(model), values)
        return NamedArray(out, stack.axes, stack.labels, stack.attrs) if isinstance(stack, NamedArray) else out

    def logit_attrs(self, stack, tokens, incorrect_tokens=None, *, model=None):
        return logit_attrs(self._m(model), stack, tokens, incorrect_tokens)


@jax.tree_util.register_pytree_with_keys_class
class ActivationCache(ActivationCacheMethods, Cache):
    """A :class:`Cache` that knows its model, so the residual-stream methods need no
    arguments (``cache.accumulated_resid(apply_ln=True)``). The model is not part of the
    pytree: a cache returned from ``jit`` comes back without it."""

    @classmethod
    def bound(cls, cache: Cache, model: Any) -> ActivationCache:
        out = cls(cache._store, cache._index)
        out._model = model
        return out
