"""Per-head QK and OV circuits, and the full circuits through embedding and unembedding.

A Mathematical Framework for Transformer Circuits (Elhage et al., 2021) reads an attention
head as two independent bilinear maps of the residual stream (row vectors, as in
TransformerLens):

    attention score(query x_q, key x_k) = x_q  W_Q W_K^T  x_k^T     QK circuit  [d_model, d_model]
    what a key position writes           = x_k  W_V W_O               OV circuit  [d_model, d_model]

Through the embedding and unembedding they become token-to-token tables of size
``d_vocab x d_vocab``:

    full QK = W_E W_Q W_K^T W_E^T     (which source token a destination token attends to)
    full OV = W_E W_V W_O W_U         (which logits attending to a token raises)
    direct path = W_E W_U             (the 0-layer model: bigram statistics)

All are :class:`~jaxinterp.circuits.FactoredMatrix` over the stacked ``[n_layers, n_heads]``
weights, never formed in full. Layer norms are not part of these products: fold them in
first (``ji.process_weights(model)``) for circuits that include their weights, as
TransformerLens does. Biases are ignored. Grouped-query models store ``n_key_value_heads``
key/value heads; :func:`expand_kv_heads` repeats them to one per query head, once.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.circuits.factored import FactoredMatrix
from jaxinterp.errors import ConfigError
from jaxinterp.models.config import TransformerConfig
from jaxinterp.models.transformer import HookedTransformer


def expand_kv_heads(cfg: TransformerConfig, x: Array, axis: int) -> Array:
    """Repeats grouped key/value heads along ``axis`` so head ``h`` reads kv head
    ``h // (n_heads // n_key_value_heads)``, as the model's attention does."""
    group = cfg.n_heads // cfg.n_kv_heads
    if x.shape[axis] != cfg.n_kv_heads:
        raise ConfigError(f"expected {cfg.n_kv_heads} key/value heads on axis {axis}, got shape {x.shape}")
    return x if group == 1 else jnp.repeat(x, group, axis=axis)


def _need_layers(model: HookedTransformer) -> None:
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"expected a HookedTransformer, got {type(model).__name__}")
    if model.cfg.n_layers == 0:
        raise ConfigError("this model has no attention layers (n_layers=0); see direct_path()")


def attention_weights(model: HookedTransformer) -> tuple[Array, Array, Array, Array]:
    """``(W_Q, W_K, W_V, W_O)`` with one key/value head per query head:
    ``[n_layers, n_heads, d_model, d_head]`` (``W_O``: ``[.., d_head, d_model]``)."""
    _need_layers(model)
    a, cfg = model.blocks.attn, model.cfg
    return a.W_Q, expand_kv_heads(cfg, a.W_K, -3), expand_kv_heads(cfg, a.W_V, -3), a.W_O


def qk_circuit(model: HookedTransformer) -> FactoredMatrix:
    """``W_Q W_K^T`` per head: ``[n_layers, n_heads, d_model, d_model]``, factored."""
    W_Q, W_K, _, _ = attention_weights(model)
    return FactoredMatrix(W_Q, jnp.swapaxes(W_K, -1, -2))


def ov_circuit(model: HookedTransformer) -> FactoredMatrix:
    """``W_V W_O`` per head: ``[n_layers, n_heads, d_model, d_model]``, factored."""
    _, _, W_V, W_O = attention_weights(model)
    return FactoredMatrix(W_V, W_O)


def embedding_matrix(model: HookedTransformer, positions: bool = False) -> Float[Array, "rows d_model"]:
    """``W_E`` (``[d_vocab, d_model]``), or with ``positions=True`` ``W_E`` stacked over
    ``W_pos`` (``[d_vocab + n_ctx, d_model]``, TransformerLens's ``W_E_pos``)."""
    if not positions:
        return model.W_E
    if model.W_pos is None:
        raise ConfigError("this model has no learned positional embedding (W_pos)")
    return jnp.concatenate([model.W_E, model.W_pos], axis=0)


def full_qk_circuit(model: HookedTransformer, positions: bool = False) -> FactoredMatrix:
    """``W_E W_Q W_K^T W_E^T``: ``[n_layers, n_heads, d_vocab, d_vocab]`` (destination token
    rows, source token columns), factored through ``d_head``."""
    W_Q, W_K, _, _ = attention_weights(model)
    E = embedding_matrix(model, positions)
    return FactoredMatrix(E @ W_Q, jnp.swapaxes(E @ W_K, -1, -2))


def full_ov_circuit(model: HookedTransformer, positions: bool = False) -> FactoredMatrix:
    """``W_E W_V W_O W_U``: ``[n_layers, n_heads, d_vocab, d_vocab]`` (attended token rows,
    output logit columns), factored through ``d_head``."""
    _, _, W_V, W_O = attention_weights(model)
    E = embedding_matrix(model, positions)
    return FactoredMatrix(E @ W_V, W_O @ model.unembed_matrix)


def direct_path(model: HookedTransformer) -> FactoredMatrix:
    """``W_E W_U``, ``[d_vocab, d_vocab]`` factored through ``d_model``: the logits each
    token predicts for the next one by the residual stream alone (a 0-layer model's whole
    computation, final norm aside)."""
    return FactoredMatrix(model.W_E, model.unembed_matrix)
