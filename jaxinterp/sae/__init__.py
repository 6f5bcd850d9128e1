"""Sparse autoencoders and transcoders: one family, trained sharded, read and written in
the field's formats.

An SAE rewrites an activation ``x`` as a sparse, non-negative combination of learned
directions (the rows of ``W_dec``), undoing superposition::

    acts  = activation((x - b_dec) @ W_enc + b_enc)        # [..., d_sae], mostly zero
    x_hat = acts @ W_dec + b_dec                           # [..., d_in]

* Architectures (``SAEConfig``, ``init_sae``, ``SAE`` with ``encode``/``decode``/``__call__``):
  ReLU/L1 (plain or decoder-norm weighted), TopK, BatchTopK, Matryoshka BatchTopK,
  JumpReLU, gated; transcoders with an optional skip connection. SAELens's names and
  layouts (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``).
* Training (``train_sae``, ``TrainSAEConfig``): the generic loop with checkpoints, exact
  resume and the NaN guard; several SAEs from one stream; a ``(data, model)`` mesh.
* Data (``ActivationStore``): any hook site of any model, through a bounded shuffle,
  cached on disk if asked; or plain arrays and iterators.
* Evaluation (``evaluate_sae``, ``spliced_loss``, ``splice``, ``run_with_sae``).
* Files (``load_saelens``/``save_saelens``, ``load_gemma_scope``, ``load_sparsify``/
  ``save_sparsify``).
* Ground truth (``SyntheticDictionary``, ``mean_max_cosine``).

::

    import jaxinterp as ji
    from jaxinterp.sae import SAEConfig, ActivationStore, TrainSAEConfig, train_sae

    store = ActivationStore(model, windows, "blocks.0.mlp.hook_post", batch_size=4096)
    cfg = SAEConfig(d_in=512, d_sae=8192, architecture="topk", k=32,
                    hook_name="blocks.0.mlp.hook_post")
    sae = train_sae(cfg, store, TrainSAEConfig(steps=10_000, mesh="data=8")).sae
    logits = ji.sae.run_with_sae(model, tokens, sae)
"""

from jaxinterp.sae.batches import ArrayBatches, IteratorBatches
from jaxinterp.sae.config import ARCHITECTURES, SAEConfig
from jaxinterp.sae.formats import (
    load_gemma_scope,
    load_saelens,
    load_sparsify,
    save_saelens,
    save_sparsify,
)
from jaxinterp.sae.ground_truth import SyntheticDictionary, mean_max_cosine
from jaxinterp.sae.losses import sae_loss
from jaxinterp.sae.metrics import density_histogram_png, evaluate_sae, spliced_loss
from jaxinterp.sae.sae import SAE, init_sae
from jaxinterp.sae.splice import clamp, run_with_sae, splice
from jaxinterp.sae.store import ActivationStore, site_activations
from jaxinterp.sae.trainer import SAETrainResult, TrainSAEConfig, train_sae

__all__ = [
    "ARCHITECTURES", "ActivationStore", "ArrayBatches", "IteratorBatches", "SAE", "SAEConfig",
    "SAETrainResult", "SyntheticDictionary", "TrainSAEConfig", "clamp", "density_histogram_png",
    "evaluate_sae", "init_sae", "load_gemma_scope", "load_saelens", "load_sparsify",
    "mean_max_cosine", "run_with_sae", "sae_loss", "save_saelens", "save_sparsify",
    "site_activations", "splice", "spliced_loss", "train_sae",
]
