"""Head detectors: what each head attends to, and what it writes, on prompts with repeats.

With ``A[q, k]`` a head's attention from query position ``q`` to key ``k`` and ``t`` the
tokens, each score is the attention mass on a set of keys, averaged over the queries
that have one (and over the batch):

* previous-token: ``A[q, q-1]``;
* duplicate-token: keys ``k < q`` holding the query's own token, ``t[k] == t[q]``;
* induction (prefix matching, Olsson et al. 2022): keys just after an earlier copy of the
  query's token, ``t[k-1] == t[q]`` with ``k < q``. On repeated random tokens
  (``jaxinterp.data.repeated_tokens``) that is the single key ``q - n + 1``;
* copying: what the head writes, at the same queries as induction: its direct logit
  contribution (through the final norm's scale from the run) to the tokens it attends to,
  standardised over the vocabulary, ``sum_k A[q,k] (l[t_k] - mean_v l) / std_v l``.
  Positive: it raises the logits of the tokens it looks at (an induction head's second
  half). Computed from ``d_head``-sized pieces, never ``[.., d_vocab]`` per head.

The in-context-learning score (Olsson et al.) is the loss on a late token minus the loss
on an early one: negative when later tokens are easier because of the context.

Every detector over every head is one compiled call (one forward pass with the patterns
and ``z`` captured); :func:`head_scores` returns several at once as a labelled table.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.errors import ConfigError, ShapeError, unknown_name_message
from jaxinterp.hooks import run_with_cache
from jaxinterp.models.loss import token_losses
from jaxinterp.models.transformer import HookedTransformer, check_tokens
from jaxinterp.named import NamedArray

DETECTORS = ("previous_token", "duplicate_token", "induction", "copying")


def _key_masks(tokens: Int[Array, "b p"]) -> dict[str, Array]:
    """``[b, q, k]`` masks of the keys each detector counts."""
    p = tokens.shape[1]
    q, k = jnp.arange(p)[:, None], jnp.arange(p)[None, :]
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]
    after_copy = jnp.pad(same[:, :, :-1], ((0, 0), (0, 0), (1, 0)))  # t[k-1] == t[q]
    earlier = (k < q)[None]
    return {"previous_token": jnp.broadcast_to((k == q - 1)[None], same.shape),
            "duplicate_token": same & earlier, "induction": after_copy & earlier}


def _copying(model: HookedTransformer, tokens, pattern, z) -> Float[Array, "l b h q"]:
    """Standardised direct logit, per query, of the tokens each head attends to."""
    cfg = model.cfg
    W_U = model.unembed_matrix.astype(jnp.float32)  # [d, v]
    W_O = model.blocks.attn.W_O.astype(jnp.float32)  # [l, h, e, d]
    if cfg.final_norm and cfg.normalization_type == "LN":  # the final LN centres its input
        W_O = W_O - W_O.mean(-1, keepdims=True)
    if cfg.final_norm and model.ln_final is not None and model.ln_final.w is not None:
        W_O = W_O * model.ln_final.w.astype(jnp.float32)
    W_U = W_U - W_U.mean(1, keepdims=True)  # logits relative to their mean over the vocabulary
    cov = W_U @ W_U.T / W_U.shape[1]  # [d, d]: E_v[logit^2] = x^T cov x
    second = jnp.einsum("lhed,df,lhgf->lheg", W_O, cov, W_O)  # [l, h, e, e]
    to_tokens = jnp.einsum("lhed,dbk->lhbek", W_O, W_U[:, tokens])  # [l, h, b, e, k]
    z = z.astype(jnp.float32)  # [l, b, q, h, e]
    var = jnp.einsum("lbqhe,lhef,lbqhf->lbhq", z, second, z)
    target = jnp.einsum("lbhqk,lbqhe,lhbek->lbhq", pattern.astype(jnp.float32), z, to_tokens)
    return target / jnp.sqrt(jnp.maximum(var, 1e-12))  # the final norm's scale cancels


@eqx.filter_jit
def _detect(model: HookedTransformer, tokens: Int[Array, "b p"], which: tuple[str, ...]) -> Float[Array, "n l h"]:
    names = ["blocks.*.attn.hook_pattern"] + (["blocks.*.attn.hook_z"] if "copying" in which else [])
    _, cache = run_with_cache(model, tokens, names=names)
    pattern = cache.stacked("blocks.*.attn.hook_pattern").astype(jnp.float32)  # [l, b, h, q, k]
    masks = _key_masks(tokens)
    queries = masks["induction"].any(-1)  # [b, q]: queries whose token occurred before
    out = []
    for name in which:
        if name == "copying":
            per_query = _copying(model, tokens, pattern, cache.stacked("blocks.*.attn.hook_z"))
            rows = queries
        else:
            per_query = (pattern * masks[name][None, :, None]).sum(-1)  # [l, b, h, q]
            rows = masks[name].any(-1)
        w = rows[None, :, None, :].astype(jnp.float32)
        out.append((per_query * w).sum((1, 3)) / jnp.maximum(w.sum((1, 3)), 1.0))
    return jnp.stack(out)


def _check(model: HookedTransformer, tokens: ArrayLike, which: Sequence[str]) -> Array:
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"expected a HookedTransformer, got {type(model).__name__}")
    if model.cfg.n_layers == 0:
        raise ConfigError("this model has no attention heads (n_layers=0)")
    for name in which:
        if name not in DETECTORS:
            raise ConfigError(unknown_name_message("head detector", name, DETECTORS))
    tokens = jnp.asarray(tokens)
    check_tokens(model.cfg, tokens)
    host = np.asarray(tokens)
    if host.shape[1] < 2:
        raise ShapeError(f"head detectors need prompts of at least 2 tokens, got shape {host.shape}")
    if any(n != "previous_token" for n in which):
        p = host.shape[1]
        same = host[:, :, None] == host[:, None, :]
        earlier = np.tril(np.ones((p, p), bool), -1)
        if not (same[:, 1:, :-1] & earlier[1:, 1:]).any():  # some t[k-1] == t[q], k < q
            raise ShapeError(
                f"the {'/'.join(n for n in which if n != 'previous_token')} detector needs prompts in "
                f"which tokens repeat (e.g. jaxinterp.data.repeated_tokens(key, batch, seq_len, d_vocab)); "
                f"these prompts of shape {host.shape} have no token that occurs twice with a key "
                "after its first occurrence")
    return tokens.astype(jnp.int32)


def head_scores(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"],
                detectors: Sequence[str] = DETECTORS) -> NamedArray:
    """Several detectors from one forward pass: ``[detector, layer, head]``.

    ``.sel(detector=...)`` needs an index; ``scores.labels["detector"]`` names them.
    """
    which = tuple(detectors)
    tokens = _check(model, tokens, which)
    values = _detect(model, tokens, which)
    return NamedArray(values, ("detector", "layer", "head"), {"detector": list(which)},
                      {"n_prompts": int(tokens.shape[0]), "n_pos": int(tokens.shape[1])})


def _one(name: str, doc: str):
    def detector(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"]) -> NamedArray:
        tokens_ = _check(model, tokens, (name,))
        values = _detect(model, tokens_, (name,))[0]
        return NamedArray(values, ("layer", "head"), attrs={"detector": name})

    detector.__name__ = f"{name}_scores"
    detector.__doc__ = doc + "\n\n    Returns a :class:`NamedArray` ``[layer, head]`` (``.top(3)`` for the strongest).\n"
    return detector


previous_token_scores = _one("previous_token", "Mean attention from each position to the one before it.")
duplicate_token_scores = _one(
    "duplicate_token", "Attention to earlier positions holding the same token as the query.")
induction_scores = _one(
    "induction", "Prefix matching: attention to the token after an earlier copy of the query's token.")
prefix_matching_scores = induction_scores
copying_scores = _one(
    "copying", "Standardised direct logit of the attended tokens, at queries whose token occurred before.")


def loss_by_position(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"]) -> NamedArray:
    """Mean next-token loss per token index: entry ``i`` is the loss of predicting
    ``tokens[:, i]`` (so index 0, with no prediction, is NaN)."""
    tokens = jnp.asarray(tokens)
    check_tokens(model.cfg, tokens)
    losses = _losses(model, tokens.astype(jnp.int32)).mean(0)
    return NamedArray(jnp.concatenate([jnp.full((1,), jnp.nan), losses]), ("pos",))


@eqx.filter_jit
def _losses(model: HookedTransformer, tokens: Int[Array, "b p"]) -> Float[Array, "b p_1"]:
    return token_losses(model(tokens), tokens)


def in_context_learning_score(model: HookedTransformer, tokens: Int[ArrayLike, "batch pos"], *,
                              early: int = 50, late: int = 500) -> float:
    """Loss on token ``late`` minus the mean loss on token ``early`` (Olsson et al.: 500th
    minus 50th); negative when the model uses the context. Indices count from 0."""
    tokens = jnp.asarray(tokens)
    n = tokens.shape[1] if tokens.ndim == 2 else 0
    if not (isinstance(early, int) and isinstance(late, int) and 1 <= early < late):
        raise ConfigError(f"need integer token indices 1 <= early < late, got early={early!r}, late={late!r}")
    if late >= n:
        raise ShapeError(f"the in-context-learning score reads token {late}, but the prompts have "
                         f"{n} tokens; pass longer prompts or a smaller late= (and early=)")
    check_tokens(model.cfg, tokens)
    losses = _losses(model, tokens.astype(jnp.int32))
    return float((losses[:, late - 1] - losses[:, early - 1]).mean())

