"""Reading the residual stream: logit lens, residual decompositions, direct logit attribution.

The residual stream after layer ``l`` is the sum of everything written so far::

    resid = embed + pos_embed + sum_{j<=l} (attn_out_j + mlp_out_j)

**Logit lens** (nostalgebraist, 2020) unembeds each layer's residual as if it were the
last: ``ln_final(resid_l) @ W_U + b_U``, with the final norm applied to each residual with
its *own* statistics, so the last entry is exactly the model's logits.

**Direct logit attribution** splits the final logits linearly. With the final norm's
scale ``s`` (taken from the actual final residual, so it is a constant, not recomputed
per component), each component ``c`` contributes ``(center(c) / s) * w @ W_U[:, t]`` to
token ``t``'s logit; heads (``z @ W_O`` per head), MLPs, embeddings and biases add up to
the logit exactly. Against a direction ``W_U[:, correct] - W_U[:, incorrect]`` this gives
each head's and MLP's share of the logit difference.
"""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.hooks import run_with_cache
from jaxinterp.hooks.interventions import check_index
from jaxinterp.interp.metrics import _ids
from jaxinterp.models import residual
from jaxinterp.models.components import head_results
from jaxinterp.models.loss import token_losses
from jaxinterp.models.tokens import as_tokens
from jaxinterp.models.transformer import HookedTransformer, check_tokens, unembed
from jaxinterp.named import NamedArray


def _cache(model: HookedTransformer, tokens, attention_mask, names):
    tokens = as_tokens(model, tokens)
    check_tokens(model.cfg, tokens, attention_mask)
    return run_with_cache(model, tokens, attention_mask, names=names)


def accumulated_resid(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"], *,
                      attention_mask: Int[ArrayLike, "batch pos"] | None = None) -> NamedArray:
    """The residual stream before each layer and after the last: ``[layer+1, batch, pos, d_model]``."""
    L = model.cfg.n_layers
    names = ["blocks.*.hook_resid_pre", f"blocks.{L - 1}.hook_resid_post"] if L else ["hook_embed", "hook_pos_embed"]
    names = [n for n in names if any(fnmatch.fnmatchcase(h, n) for h in model.hook_names())]
    _, cache = _cache(model, tokens, attention_mask, names)
    stack = residual.accumulated_resid(cache, model)
    return NamedArray(stack.values, ("layer", "batch", "pos", "d_model"), {"layer": stack.labels["component"]})


def logit_lens(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"], *, pos: int | None = None,
               attention_mask: Int[ArrayLike, "batch pos"] | None = None) -> NamedArray:
    """Each layer's residual unembedded: ``[layer+1, batch, pos, d_vocab]`` (``pos`` given: no pos axis).

    Entry ``l < n_layers`` reads the residual *before* layer ``l`` (entry 0 is the
    embeddings); the last entry is the model's logits.
    """
    resid = accumulated_resid(model, tokens, attention_mask=attention_mask)
    x = resid.values if pos is None else resid.values[:, :, pos][:, :, None]
    logits = jax.vmap(lambda r: unembed(model, r))(x)
    if pos is not None:
        return NamedArray(logits[:, :, 0], ("layer", "batch", "d_vocab"), {"layer": resid.labels["layer"]})
    return NamedArray(logits, ("layer", "batch", "pos", "d_vocab"), {"layer": resid.labels["layer"]})


def decompose_resid(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"], *,
                    attention_mask: Int[ArrayLike, "batch pos"] | None = None) -> NamedArray:
    """The final residual split into what wrote it: ``[component, batch, pos, d_model]``.

    Components: ``embed``, ``pos_embed`` (learned positions), then ``{l}_attn_out`` and
    ``{l}_mlp_out`` per layer. They sum to the final residual stream.
    """
    names = ["hook_embed", "hook_pos_embed", "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"]
    names = [n for n in names if any(fnmatch.fnmatchcase(h, n) for h in model.hook_names())]
    _, cache = _cache(model, tokens, attention_mask, names)
    return residual.decompose_resid(cache, model)


def direct_logit_attribution(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"],
                             correct: Int[ArrayLike, " batch"], incorrect: Int[ArrayLike, " batch"] | None = None,
                             *, pos: int = -1, attention_mask: Int[ArrayLike, "batch pos"] | None = None,
                             ) -> dict[str, NamedArray]:
    """Each head's, MLP's, embedding's and bias's direct share of a logit (difference) at ``pos``.

    Returns batch means: ``"heads"`` ``[layer, head]``, ``"mlp"`` ``[layer]`` (absent without
    MLPs) and ``"other"`` ``[component]`` (embeddings and biases). Everything sums to
    ``attrs["total"]``, the model's own ``logit[correct] - logit[incorrect]``.
    """
    cfg = model.cfg
    L = cfg.n_layers
    names = ["hook_embed", "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out", "hook_pos_embed",
             f"blocks.{L - 1}.hook_resid_post"]
    names = [n for n in names if any(fnmatch.fnmatchcase(h, n) for h in model.hook_names())]
    logits, cache = _cache(model, tokens, attention_mask, names)
    batch, n_pos = logits.shape[:2]
    pos = int(check_index("position", pos, n_pos, f"prompts of {n_pos} tokens"))
    W_U = model.unembed_matrix
    correct = jnp.broadcast_to(_ids("correct", correct), (batch,))
    direction = W_U[:, correct].T  # [b, d]
    if incorrect is not None:
        incorrect = jnp.broadcast_to(_ids("incorrect", incorrect), (batch,))
        direction = direction - W_U[:, incorrect].T
    final = residual.final_resid(cache, model)[:, pos]
    w = model.ln_final.w if (cfg.final_norm and model.ln_final is not None and model.ln_final.w is not None) else 1.0

    def read(x: Float[Array, "... b d"]) -> Float[Array, "... b"]:  # through the final norm
        normed = residual.normalize_like_final(model, x, final)
        return jnp.einsum("...bd,bd->...b", normed * w, direction)

    lg = logits[:, pos]
    total = jnp.take_along_axis(lg, correct[:, None], 1)[:, 0]
    if incorrect is not None:
        total = total - jnp.take_along_axis(lg, incorrect[:, None], 1)[:, 0]
    attrs = {"total": float(total.mean())}
    z = jnp.stack([cache[f"blocks.{i}.attn.hook_z"][:, pos] for i in range(L)]) if L else None
    out: dict[str, NamedArray] = {}
    if L:
        heads = jax.vmap(head_results)(z[:, :, None], model.blocks.attn.W_O)[:, :, 0]
        heads = jnp.moveaxis(heads, 2, 1)  # [layer, head, batch, d_model]
        out["heads"] = NamedArray(read(heads).mean(-1), ("layer", "head"), {}, attrs)
    if L and cfg.has_mlp:
        mlp = jnp.stack([cache[f"blocks.{i}.hook_mlp_out"][:, pos] for i in range(L)])
        out["mlp"] = NamedArray(read(mlp).mean(-1), ("layer",), {}, attrs)
    other, labels = [read(cache["hook_embed"][:, pos]).mean()], ["embed"]
    if "hook_pos_embed" in cache:
        other.append(read(cache["hook_pos_embed"][:, pos]).mean())
        labels.append("pos_embed")
    if L and model.blocks.attn.b_O is not None:
        b_o = jnp.broadcast_to(model.blocks.attn.b_O.sum(0), final.shape)
        other.append(read(b_o).mean())
        labels.append("attn_bias")
    bias = jnp.zeros(correct.shape)
    if cfg.final_norm and model.ln_final is not None and model.ln_final.b is not None:
        bias = bias + direction @ model.ln_final.b
    if model.b_U is not None:
        b_u = model.b_U[correct] - (0 if incorrect is None else model.b_U[incorrect])
        bias = bias + b_u
    other.append(bias.mean())
    labels.append("final_bias")
    out["other"] = NamedArray(jnp.stack(other), ("component",), {"component": labels}, attrs)
    return out


def per_token_loss(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"], *,
                   attention_mask: Int[ArrayLike, "batch pos"] | None = None) -> Float[Array, "batch pos_minus_1"]:
    """Next-token cross-entropy at every position: entry ``p`` is the loss of predicting ``tokens[p+1]``."""
    tokens = as_tokens(model, tokens)
    check_tokens(model.cfg, tokens, attention_mask)
    return token_losses(model(tokens, attention_mask), tokens)

