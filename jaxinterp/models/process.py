"""Weight processing: rewrite a model's weights so they read more cleanly, same function.

These are the TransformerLens rewrites. Each is a pure function returning a new
:class:`HookedTransformer`; the outputs are unchanged (exactly, or up to a softmax-invariant
constant), but activations and weights become easier to interpret:

* **fold_layer_norm** -- a norm computes ``n(x) * w + b`` and is read by a linear map
  ``W, b_W``. Since ``(n w + b) @ W + b_W = n @ (diag(w) W) + (b @ W + b_W)``, the affine
  part moves into every reader (``W_Q/W_K/W_V``, ``W_in/W_gate``, ``W_U``) and the norm
  becomes a pure normalisation (``NormParams(w=None, b=None)``). For LayerNorm ``n(x)``
  has zero mean over ``d_model``, so each reader may also be centred along ``d_model``
  (``W -= W.mean(d)``) at no cost. RMSNorm folds ``w`` only.
* **center_writing_weights** -- every writer to the residual stream (``W_E, W_pos, W_O,
  b_O, W_out, b_out``) is centred along ``d_model``. Valid only when every reader is a
  LayerNorm, which subtracts the mean anyway.
* **center_unembed** -- ``W_U, b_U`` centred along the vocabulary: every logit moves by
  the same per-position constant, so the softmax (log-probs) is unchanged. Not valid
  under output soft-capping (Gemma 2), where ``tanh`` does not commute with the shift.
* **fold_value_biases** -- a head's pattern sums to one over keys, so its value bias comes
  out unchanged: ``z = sum_k p_k (v_k + b_V) = sum_k p_k v_k + b_V``. Hence
  ``b_O += sum_h b_V[h] @ W_O[h]`` and ``b_V = 0``.

Norms after a sublayer (Gemma's ``ln1_post``/``ln2_post``) and q/k norms stay as they
are: no linear map reads them before the residual stream or the rotary embedding, so
there is nothing to fold them into. Arithmetic runs in float32 and results are cast back
to the weights' dtype.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array

from jaxinterp.errors import ConfigError
from jaxinterp.models import components as C
from jaxinterp.models.transformer import HookedTransformer

_F32 = jnp.float32


def _replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


def untie_embeddings(model: HookedTransformer) -> HookedTransformer:
    """Materialises ``W_U = W_E.T`` for a tied model, so the two can change independently."""
    if model.W_U is not None:
        return model
    cfg = model.cfg.replace(tied_embeddings=False)
    return _replace(model, cfg=cfg, W_U=jnp.array(model.W_E.T))


def _fold_reader(
    W: Array, bias: Array | None, norm: C.NormParams, spec: str, center: bool
) -> tuple[Array, Array | None]:
    """Folds ``norm``'s affine part into a reader ``W`` (einsum ``spec``, ``d`` = d_model).

    Returns the new ``W`` and bias (a bias is created if ``norm.b`` needs one).
    """
    nspec = "ld" if spec.startswith("l") else "d"
    bspec = spec.replace("d", "")
    W32 = W.astype(_F32)
    new_b = None if bias is None else bias.astype(_F32)
    if norm.b is not None:  # (n w + b) @ W: the b @ W part is a constant bias.
        contrib = jnp.einsum(f"{spec},{nspec}->{bspec}", W32, norm.b.astype(_F32))
        new_b = contrib if new_b is None else new_b + contrib
    if norm.w is not None:
        W32 = jnp.einsum(f"{spec},{nspec}->{spec}", W32, norm.w.astype(_F32))
    if center:
        W32 = W32 - W32.mean(axis=spec.index("d"), keepdims=True)
    b_dtype = W.dtype if bias is None else bias.dtype
    return W32.astype(W.dtype), None if new_b is None else new_b.astype(b_dtype)


def _zeros_like_if_none(x: Array | None, shape: tuple[int, ...], dtype) -> Array:
    return jnp.zeros(shape, dtype) if x is None else x


def fold_layer_norm(model: HookedTransformer, center_weights: bool = True) -> HookedTransformer:
    """Folds ln1/ln2/ln_final weights and biases into the linear maps that read them.

    Args:
      model: the model; a model without normalisation is returned unchanged.
      center_weights: for LayerNorm, also centre the reading weights along ``d_model``
        (ignored for RMSNorm, whose output is not centred).

    Returns:
      A model whose norms are pure normalisations (``w=None, b=None``) and whose logits
      equal the original's. A tied model comes back untied (``W_U`` materialised).
    """
    cfg = model.cfg
    if cfg.normalization_type is None:
        return model
    center = center_weights and cfg.normalization_type == "LN"
    blocks, changes = model.blocks, {}
    bare = C.NormParams(None, None)
    if blocks.mlp is not None and blocks.mlp.W_gate is not None and blocks.ln2 is not None:
        if blocks.ln2.b is not None:
            raise ConfigError(
                "fold_layer_norm: ln2 has a bias but the gated MLP's W_gate has no bias to absorb "
                "it (MLPParams has no b_gate); this architecture cannot be folded"
            )
    if cfg.n_layers > 0 and blocks.ln1 is not None:
        a, ln1 = blocks.attn, blocks.ln1
        W_Q, b_Q = _fold_reader(a.W_Q, a.b_Q, ln1, "lhde", center)
        W_K, b_K = _fold_reader(a.W_K, a.b_K, ln1, "lgde", center)
        W_V, b_V = _fold_reader(a.W_V, a.b_V, ln1, "lgde", center)
        b_O = a.b_O
        if b_Q is not None and b_O is None:  # keep the "all attention biases or none" shape
            b_O = jnp.zeros((cfg.n_layers, cfg.d_model), a.W_O.dtype)
            changes["use_attn_bias"] = True
        attn = _replace(a, W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, b_O=b_O)
        blocks = _replace(blocks, attn=attn, ln1=bare)
    if blocks.mlp is not None and blocks.ln2 is not None:
        m, ln2 = blocks.mlp, blocks.ln2
        W_in, b_in = _fold_reader(m.W_in, m.b_in, ln2, "ldm", center)
        W_gate = None if m.W_gate is None else _fold_reader(m.W_gate, None, ln2, "ldm", center)[0]
        b_out = m.b_out
        if b_in is not None and b_out is None:
            b_out = jnp.zeros((cfg.n_layers, cfg.d_model), m.W_out.dtype)
            changes["use_mlp_bias"] = True
        mlp = _replace(m, W_in=W_in, W_gate=W_gate, b_in=b_in, b_out=b_out)
        blocks = _replace(blocks, mlp=mlp, ln2=bare)
    out = {"blocks": blocks}
    if cfg.final_norm and model.ln_final is not None:
        model = untie_embeddings(model)
        W_U, b_U = _fold_reader(model.W_U, model.b_U, model.ln_final, "dv", center)
        if b_U is not None:
            changes["use_unembed_bias"] = True
        out.update(W_U=W_U, b_U=b_U, ln_final=bare)
    return _replace(model, cfg=model.cfg.replace(**changes), **out)


def _check_ln_readers(model: HookedTransformer) -> str | None:
    """Why centring writing weights would change the model, or None if it is valid."""
    cfg, blocks = model.cfg, model.blocks
    if cfg.normalization_type != "LN":
        return f"normalization_type is {cfg.normalization_type!r}, not 'LN'"
    if not cfg.final_norm or model.ln_final is None:
        return "the unembedding reads the residual stream without a final LayerNorm"
    if cfg.n_layers > 0 and blocks.ln1 is None:
        return "attention reads the residual stream without ln1"
    if blocks.mlp is not None and blocks.ln2 is None:
        return "the MLP reads the residual stream without ln2"
    if blocks.ln1_post is not None or blocks.ln2_post is not None:
        return "ln1_post/ln2_post normalise what the sublayers write"
    return None


def _center(x: Array | None) -> Array | None:
    if x is None:
        return None
    x32 = x.astype(_F32)
    return (x32 - x32.mean(axis=-1, keepdims=True)).astype(x.dtype)


def center_writing_weights(model: HookedTransformer) -> HookedTransformer:
    """Centres ``W_E, W_pos, W_O, b_O, W_out, b_out`` along ``d_model``.

    Raises:
      ConfigError: if some reader of the residual stream is not a LayerNorm.
    """
    why = _check_ln_readers(model)
    if why is not None:
        raise ConfigError(f"center_writing_weights is only valid when every reader of the "
                          f"residual stream is a LayerNorm: {why}")
    model = untie_embeddings(model)  # W_E also reads (as W_U) when tied: keep W_U as it was.
    blocks = model.blocks
    if model.cfg.n_layers > 0:
        a = blocks.attn
        blocks = _replace(blocks, attn=_replace(a, W_O=_center(a.W_O), b_O=_center(a.b_O)))
        if blocks.mlp is not None:
            m = blocks.mlp
            blocks = _replace(blocks, mlp=_replace(m, W_out=_center(m.W_out), b_out=_center(m.b_out)))
    return _replace(model, W_E=_center(model.W_E), W_pos=_center(model.W_pos), blocks=blocks)


def center_unembed(model: HookedTransformer) -> HookedTransformer:
    """Centres ``W_U`` and ``b_U`` along the vocabulary (log-probs unchanged; untied).

    Raises:
      ConfigError: the model soft-caps its logits (the shift would change log-probs).
    """
    if model.cfg.output_logits_soft_cap is not None:
        raise ConfigError("center_unembed is not valid with output_logits_soft_cap="
                          f"{model.cfg.output_logits_soft_cap}: soft-capping does not commute "
                          "with shifting every logit by a constant")
    model = untie_embeddings(model)
    return _replace(model, W_U=_center(model.W_U), b_U=_center(model.b_U))


def fold_value_biases(model: HookedTransformer) -> HookedTransformer:
    """Moves ``b_V`` into ``b_O``: ``b_O += sum_h b_V[h] @ W_O[h]``, then ``b_V = 0``.

    With grouped-query attention query head ``h`` reads key/value head
    ``h // (n_heads // n_kv_heads)``, so ``b_V`` is repeated per query head first.
    """
    cfg = model.cfg
    a = model.blocks.attn
    if cfg.n_layers == 0 or a.b_V is None:
        return model
    group = cfg.n_heads // cfg.n_kv_heads
    b_V = jnp.repeat(a.b_V.astype(_F32), group, axis=1)  # [l, h, e]
    b_O = _zeros_like_if_none(a.b_O, (cfg.n_layers, cfg.d_model), a.W_O.dtype)
    b_O = (b_O.astype(_F32) + jnp.einsum("lhe,lhed->ld", b_V, a.W_O.astype(_F32))).astype(b_O.dtype)
    attn = _replace(a, b_V=jnp.zeros_like(a.b_V), b_O=b_O)
    return _replace(model, blocks=_replace(model.blocks, attn=attn))


_center_writing_weights = center_writing_weights
_center_unembed = center_unembed
_fold_value_biases = fold_value_biases


def process_weights(
    model: HookedTransformer,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> HookedTransformer:
    """Applies the rewrites above that are valid for this architecture (as TransformerLens).

    Rewrites that do not apply are skipped silently: centring writing weights needs
    LayerNorm readers everywhere and no post-norms, folding needs a ``b_gate`` for
    LayerNorm biases in front of a gated MLP, and centring the unembedding needs logits
    without soft-capping. Called alone, each of those raises ``ConfigError`` instead. Value biases are folded before the writing weights are centred,
    so ``b_O`` comes out centred too.
    """
    blocks = model.blocks
    gated_ln_bias = (blocks.mlp is not None and blocks.mlp.W_gate is not None
                     and blocks.ln2 is not None and blocks.ln2.b is not None)
    if fold_ln and not gated_ln_bias:
        model = fold_layer_norm(model)
    if fold_value_biases:
        model = _fold_value_biases(model)
    if center_writing_weights and _check_ln_readers(model) is None:
        model = _center_writing_weights(model)
    if center_unembed and model.cfg.output_logits_soft_cap is None:
        model = _center_unembed(model)
    return model
