"""Causal interventions: activation, path and attribution patching, ablations, lenses.

Every sweep (activation, attribution and path patching) returns a :class:`NamedArray`
(values with named axes, tick labels, and the clean/corrupted metric baselines, so
``.normalized()`` works), runs in the ``"denoising"`` direction unless told otherwise and
chooses its chunk size itself; every ablation returns a list of interventions for
:func:`jaxinterp.hooks.run_with_hooks`. A task to try them on:
:mod:`jaxinterp.data.ioi` (prompts) and :func:`jaxinterp.recipes.ioi.train_ioi_model`.
"""

from jaxinterp.interp.ablation import (
    ablate_direction,
    ablate_heads,
    ablate_layers,
    ablate_neurons,
    knockout_edges,
)
from jaxinterp.interp.attribution import attribution_patching, compare_attribution
from jaxinterp.interp.lens import (
    accumulated_resid,
    decompose_resid,
    direct_logit_attribution,
    logit_lens,
    per_token_loss,
)
from jaxinterp.interp.metrics import (
    LogitDiff,
    NextTokenLoss,
    TokenProb,
    check_metric,
    logit_diff,
    next_token_loss,
    read_positions,
    token_prob,
)
from jaxinterp.interp.patching import COMPONENTS, activation_patching, patched_forward
from jaxinterp.interp.path_patching import path_patching, path_patching_sweep
from jaxinterp.named import NamedArray

__all__ = [
    "COMPONENTS",
    "LogitDiff",
    "NamedArray",
    "NextTokenLoss",
    "TokenProb",
    "ablate_direction",
    "ablate_heads",
    "ablate_layers",
    "ablate_neurons",
    "accumulated_resid",
    "activation_patching",
    "attribution_patching",
    "check_metric",
    "compare_attribution",
    "decompose_resid",
    "direct_logit_attribution",
    "knockout_edges",
    "logit_diff",
    "logit_lens",
    "next_token_loss",
    "patched_forward",
    "path_patching",
    "path_patching_sweep",
    "per_token_loss",
    "read_positions",
    "token_prob",
]
