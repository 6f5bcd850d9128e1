"""Features: what units (neurons, channels, SAE latents) respond to and do.

* ``topk``: streaming per-unit top-k over a dataset, on the device (dataset examples).
* ``objectives``: what to maximise: a unit, channel, direction or SAE feature, batched.
* ``visualize``: feature visualisation by optimisation for images (pixel or decorrelated
  Fourier parameterisation, transformation robustness, regularisers, diversity), many
  targets in one vmapped program; ``text``: soft prompts and a gradient-guided token search.
* ``examples``: the dataset inputs (or positions) that most activate each target.
* ``tuning``: tuning curves over orientation and curvature, and selectivity measures.
* ``conv_circuits``: channel-to-channel weights between consecutive conv blocks.
"""

from jaxinterp.features.conv_circuits import channel_weights, strongest_inputs
from jaxinterp.features.examples import Examples, dataset_examples
from jaxinterp.features.objectives import Objective, channel, direction, neuron, sae_feature
from jaxinterp.features.param import Fourier, Pixel
from jaxinterp.features.robustness import NO_TRANSFORMS, Transforms
from jaxinterp.features.text import TextVisualization, visualize_text
from jaxinterp.features.topk import TopK, init_topk, update_topk
from jaxinterp.features.tuning import curvature_tuning, curve_index, orientation_tuning, selectivity
from jaxinterp.features.visualize import Visualization, custom, visualize

__all__ = [
    "TopK", "init_topk", "update_topk",
    "NO_TRANSFORMS", "Examples", "Fourier", "Objective", "Pixel", "TextVisualization", "Transforms",
    "Visualization", "channel", "channel_weights", "curvature_tuning", "curve_index", "custom",
    "dataset_examples", "direction", "neuron", "orientation_tuning", "sae_feature", "selectivity",
    "strongest_inputs", "visualize", "visualize_text",
]
