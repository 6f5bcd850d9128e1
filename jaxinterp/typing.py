"""The axis vocabulary, written once.

Array annotations across jaxinterp use these axis names (jaxtyping strings), and einsum
strings use the matching letters:

=========  ======  ==========================================================
letter     axis    meaning
=========  ======  ==========================================================
``b``      batch   independent sequences
``p``/``q``  pos   query positions (``q``) in a sequence
``k``      kv_pos  key/value positions attended to
``d``      d_model the residual stream
``h``      head    attention heads (``n_heads``); ``g`` key/value head groups
``e``      d_head  a head's query/key/value/z space
``m``      d_mlp   MLP neurons
``v``      d_vocab vocabulary
``l``      layer   the stacked-layer axis of parameters and caches
``s``      d_sae   sparse-autoencoder latents
=========  ======  ==========================================================
"""

from __future__ import annotations

from jaxtyping import Array, Float, Int, PRNGKeyArray

Tokens = Int[Array, "batch pos"]
Mask = Int[Array, "batch pos"]
Residual = Float[Array, "batch pos d_model"]
Logits = Float[Array, "batch pos d_vocab"]

__all__ = ["Array", "Float", "Int", "PRNGKeyArray", "Tokens", "Mask", "Residual", "Logits"]
