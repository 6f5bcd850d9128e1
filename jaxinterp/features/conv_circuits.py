"""Weight-level circuits in a conv net: how channels of one block drive the next.

Between consecutive conv blocks the circuit is in the kernel itself (Olah et al.,
"Zoom In: An Introduction to Circuits", 2020): block ``l``'s pre-activation is

    pre_l[y, x, j] = sum_i sum_{dy, dx} W_l[dy, dx, i, j] * post_{l-1}[y + dy, x + dx, i] + b_l[j]

so ``W_l[:, :, i, j]`` (a ``k x k`` map) says where, relative to its own position, unit
``j`` is excited (positive) or inhibited (negative) by channel ``i`` of the previous
block. A curve detector assembled from edge detectors shows it: the edge units aligned
with the curve's tangent excite it along the arc and inhibit it elsewhere.
:func:`channel_weights` returns these maps for chosen channels as a
:class:`~jaxinterp.named.NamedArray` ``[dst, src, y, x]`` (block ``l - 1`` may have been
pooled first; the map is then in pooled pixels), and :func:`strongest_inputs` ranks a
unit's input channels by the norm of their maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ShapeError
from jaxinterp.models.conv import ConvNet
from jaxinterp.named import NamedArray


def _channels(which: Sequence[int] | None, n: int, what: str) -> list[int]:
    if which is None:
        return list(range(n))
    out = []
    for c in which:
        if not isinstance(c, int | np.integer) or not -n <= int(c) < n:
            raise ShapeError(f"{what} channel {c!r} is out of range (the block has {n} channels)")
        out.append(int(c) % n)
    return out


def channel_weights(model: ConvNet, layer: int, src: Sequence[int] | None = None,
                    dst: Sequence[int] | None = None) -> NamedArray:
    """Kernels from channels ``src`` of block ``layer - 1`` to channels ``dst`` of block
    ``layer``: ``[dst, src, y, x]``."""
    if not isinstance(model, ConvNet):
        raise ShapeError(f"channel_weights needs a ConvNet, got {type(model).__name__}")
    n = model.cfg.n_layers
    if not 1 <= layer < n:
        raise ShapeError(f"layer {layer} has no previous block; valid layers are 1..{n - 1}")
    W = model.W[layer]  # [k, k, c_in, c_out]
    s = _channels(src, W.shape[2], f"block {layer - 1}")
    d = _channels(dst, W.shape[3], f"block {layer}")
    grid = jnp.transpose(W[:, :, jnp.asarray(s)][:, :, :, jnp.asarray(d)], (3, 2, 0, 1))
    return NamedArray(grid, ("dst", "src", "y", "x"),
                      {"dst": [f"{layer}.{j}" for j in d], "src": [f"{layer - 1}.{i}" for i in s]},
                      {"layer": layer, "src_channels": s, "dst_channels": d})


def strongest_inputs(model: ConvNet, layer: int, dst: int, k: int = 5) -> NamedArray:
    """The ``k`` channels of block ``layer - 1`` whose kernels into ``dst`` have the largest
    summed weight, signed (excitatory first): ``[src]``, labelled by channel."""
    w = channel_weights(model, layer, dst=[dst]).values[0]  # [src, y, x]
    total = np.asarray(w.sum((1, 2)))
    order = np.argsort(-total)[:k]
    return NamedArray(jnp.asarray(total[order]), ("src",), {"src": [f"{layer - 1}.{i}" for i in order]},
                      {"channels": order.tolist(), "layer": layer, "dst": dst})
