"""Transformer circuits: weights read as circuits, head detectors, and circuit discovery.

* :class:`FactoredMatrix`: low-rank products (``W_Q W_K^T``, ``W_E W_V W_O W_U``) kept as
  their factors, over stacked ``[layer, head]`` weights; SVD, eigenvalues, norms, indexing.
* QK/OV circuits per head and through embedding/unembedding (:mod:`.weights`);
  :func:`composition_scores` (TransformerLens's definition); OV copying scores;
  :func:`skip_trigrams` of one-layer models.
* Head detectors on prompts with repeats (previous-token, duplicate-token, induction /
  prefix matching, copying) and the in-context-learning score (:mod:`.detectors`).
* Circuit discovery: the residual-stream :class:`Graph`, :func:`edge_attribution` (EAP,
  EAP-IG), exact edge patching, circuit selection (:func:`top_n`, :func:`greedy`) and
  :func:`faithfulness` (:mod:`.eap`, :mod:`.selection`).
"""

from jaxinterp.circuits.composition import MODES, composition_scores
from jaxinterp.circuits.copying import ov_copying_scores, ov_eigenvalues
from jaxinterp.circuits.detectors import (
    DETECTORS,
    copying_scores,
    duplicate_token_scores,
    head_scores,
    in_context_learning_score,
    induction_scores,
    loss_by_position,
    prefix_matching_scores,
    previous_token_scores,
)
from jaxinterp.circuits.eap import METHODS, edge_attribution, exact_edge_scores, patch_edges
from jaxinterp.circuits.factored import FactoredMatrix
from jaxinterp.circuits.graph import Graph
from jaxinterp.circuits.selection import Circuit, faithfulness, faithfulness_curve, greedy, top_n
from jaxinterp.circuits.skip_trigrams import SkipTrigram, skip_trigrams
from jaxinterp.circuits.weights import (
    attention_weights,
    direct_path,
    embedding_matrix,
    expand_kv_heads,
    full_ov_circuit,
    full_qk_circuit,
    ov_circuit,
    qk_circuit,
)

__all__ = [
    "DETECTORS",
    "METHODS",
    "MODES",
    "Circuit",
    "FactoredMatrix",
    "Graph",
    "SkipTrigram",
    "attention_weights",
    "composition_scores",
    "copying_scores",
    "direct_path",
    "duplicate_token_scores",
    "edge_attribution",
    "exact_edge_scores",
    "faithfulness",
    "faithfulness_curve",
    "greedy",
    "patch_edges",
    "top_n",
    "embedding_matrix",
    "expand_kv_heads",
    "full_ov_circuit",
    "full_qk_circuit",
    "head_scores",
    "in_context_learning_score",
    "induction_scores",
    "loss_by_position",
    "ov_circuit",
    "ov_copying_scores",
    "ov_eigenvalues",
    "prefix_matching_scores",
    "previous_token_scores",
    "qk_circuit",
    "skip_trigrams",
]
