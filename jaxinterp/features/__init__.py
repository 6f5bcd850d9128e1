"""Features: what units (neurons, channels, SAE latents) respond to and do.

* ``topk``: streaming per-unit top-k over a dataset, on the device (dataset examples).
"""

from jaxinterp.features.topk import TopK, init_topk, update_topk

__all__ = ["TopK", "init_topk", "update_topk"]
