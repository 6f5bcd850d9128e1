"""Features: what units (neurons, channels, SAE latents) respond to and do.

* ``topk``: streaming per-unit top-k over a dataset, on the device (dataset examples).
* ``objectives``: what to maximise: a unit, channel, direction or SAE feature, batched.
* ``visualize``: feature visualisation by optimisation for images (pixel or decorrelated
  Fourier parameterisation, transformation robustness, regularisers, diversity), many
  targets in one vmapped program; ``text``: soft prompts and a gradient-guided token search.
* ``examples``: the dataset inputs (or positions) that most activate each target.
* ``tuning``: tuning curves over orientation and curvature, and selectivity measures.
* ``conv_circuits``: channel-to-channel weights between consecutive conv blocks.
* ``analysis``: every feature of an SAE or transcoder explained by its data in one streamed
  pass (density, top and interval contexts, histogram, co-occurrence), with ``logit_effects``,
  ``neighbours``, ``search`` and the ``neuronpedia`` export; the browser is
  :func:`jaxinterp.viz.browser.write_browser`.
* ``steering``: clamp or add a feature at its site (SAE error term kept), before/after.
* ``scaling_laws``: power laws of SAE loss, width and steps in compute, bootstrap intervals.
"""

from jaxinterp.features.analysis import AnalysisSettings, analyze_features
from jaxinterp.features.conv_circuits import channel_weights, strongest_inputs
from jaxinterp.features.examples import Examples, dataset_examples
from jaxinterp.features.logit_effects import logit_effects
from jaxinterp.features.neighbours import nearest_features
from jaxinterp.features.neuronpedia import export_neuronpedia
from jaxinterp.features.objectives import Objective, channel, direction, neuron, sae_feature
from jaxinterp.features.param import Fourier, Pixel
from jaxinterp.features.result import FeatureAnalysis, load_analysis
from jaxinterp.features.robustness import NO_TRANSFORMS, Transforms
from jaxinterp.features.scaling_laws import fit_with_bootstrap, power_law
from jaxinterp.features.search import (
    features_by_token,
    features_for_text,
    passage_features,
    search_names,
)
from jaxinterp.features.steering import (
    SteeringResult,
    compare_steering,
    direction_steering,
    feature_direction,
    feature_steering,
)
from jaxinterp.features.text import TextVisualization, visualize_text
from jaxinterp.features.topk import TopK, init_topk, update_topk
from jaxinterp.features.tuning import curvature_tuning, curve_index, orientation_tuning, selectivity
from jaxinterp.features.visualize import Visualization, custom, visualize

__all__ = [
    "AnalysisSettings", "FeatureAnalysis", "analyze_features", "load_analysis", "logit_effects",
    "nearest_features", "export_neuronpedia", "features_by_token", "features_for_text",
    "passage_features", "search_names",
    "SteeringResult", "compare_steering", "direction_steering", "feature_direction", "feature_steering",
    "fit_with_bootstrap", "power_law",
    "TopK", "init_topk", "update_topk",
    "NO_TRANSFORMS", "Examples", "Fourier", "Objective", "Pixel", "TextVisualization", "Transforms",
    "Visualization", "channel", "channel_weights", "curvature_tuning", "curve_index", "custom",
    "dataset_examples", "direction", "neuron", "orientation_tuning", "sae_feature", "selectivity",
    "strongest_inputs", "visualize", "visualize_text",
]
