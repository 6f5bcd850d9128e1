"""Sparse autoencoders and transcoders: one family, trained sharded, read and written in
the field's formats.

An SAE rewrites an activation ``x`` as a sparse, non-negative combination of learned
directions (the rows of ``W_dec``), undoing superposition::

    acts  = activation((x - b_dec) @ W_enc + b_enc)        # [..., d_sae], mostly zero
    x_hat = acts @ W_dec + b_dec                           # [..., d_in]

* ``SAEConfig``, ``init_sae``, ``SAE`` (``encode``, ``decode``, ``__call__``): ReLU/L1
  (plain or decoder-norm weighted), TopK, BatchTopK, Matryoshka BatchTopK, JumpReLU,
  gated; transcoders with an optional skip connection. SAELens's names and layouts.
* ``sae_loss``: each architecture's training loss (TopK's sparse path included).
"""

from jaxinterp.sae.config import ARCHITECTURES, SAEConfig
from jaxinterp.sae.losses import sae_loss
from jaxinterp.sae.sae import SAE, init_sae

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "init_sae", "sae_loss"]
