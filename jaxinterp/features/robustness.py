"""Transformation robustness and regularisers for feature visualisation.

An image that excites a unit only at one exact pixel alignment is an adversarial pattern,
not a feature. *Transformation robustness* optimises the expected objective over small
random transforms of the image, ``E_T[ f(T(image)) ]``, one random ``T`` per step: a
jitter (translation by up to ``jitter`` pixels), a scale in ``scale`` and a rotation of
up to ``rotate`` degrees, composed into one affine map and applied by bilinear sampling
(edges replicate), so the three cost one resampling.

Regularisers penalise what natural images lack: ``l1`` (``mean |image - 0.5|``, few
strong pixels), ``tv`` (total variation, ``mean |dI/dy| + |dI/dx|``, high frequency), and
``diversity`` (for several images per target, the mean pairwise cosine similarity of the
Gram matrices ``G = A^T A / n`` of their activations at a hook; Olah et al. 2017): an
objective minus ``w_div * diversity`` pushes the images of one unit apart in style.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Transforms:
    """Random jitter (pixels), scale (a ``(low, high)`` range) and rotation (degrees)."""

    jitter: float = 2.0
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0

    def __post_init__(self):
        if self.jitter < 0 or self.rotate < 0 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"Transforms needs jitter >= 0, rotate >= 0 and 0 < scale[0] <= scale[1]; got {self}")

    @property
    def identity(self) -> bool:
        return self.jitter == 0 and self.rotate == 0 and self.scale == (1.0, 1.0)

    def __call__(self, key: jax.Array, images: Float[Array, "batch y x c"]) -> Float[Array, "batch y x c"]:
        """Each image gets its own random transform."""
        if self.identity:
            return images
        keys = jax.random.split(key, images.shape[0])
        return jax.vmap(self._one)(keys, images)

    def _one(self, key, image):
        h, w, _ = image.shape
        k_shift, k_scale, k_rot = jax.random.split(key, 3)
        shift = jax.random.uniform(k_shift, (2,), minval=-self.jitter, maxval=self.jitter)
        s = jax.random.uniform(k_scale, minval=self.scale[0], maxval=self.scale[1])
        a = jnp.deg2rad(jax.random.uniform(k_rot, minval=-self.rotate, maxval=self.rotate))
        cy, cx = (h - 1) / 2, (w - 1) / 2
        yy, xx = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing="ij")
        # Output pixel p samples the input at R(-a) p / s - shift.
        src_y = (jnp.cos(a) * yy - jnp.sin(a) * xx) / s + cy - shift[0]
        src_x = (jnp.sin(a) * yy + jnp.cos(a) * xx) / s + cx - shift[1]

        return bilinear(image, src_y, src_x)


def bilinear(image: Float[Array, "y x c"], src_y: Array, src_x: Array) -> Float[Array, "y2 x2 c"]:
    """Samples ``image`` at fractional pixel coordinates, replicating the border."""
    h, w, c = image.shape
    src_y, src_x = jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = image.reshape(h * w, c)

    def at(yy, xx):
        return jnp.take(flat, yy * w + xx, axis=0)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


NO_TRANSFORMS = Transforms(0.0, (1.0, 1.0), 0.0)


def l1(images: Float[Array, "batch y x c"]) -> Array:
    return jnp.mean(jnp.abs(images - 0.5))


def total_variation(images: Float[Array, "batch y x c"]) -> Array:
    dy = jnp.abs(images[:, 1:] - images[:, :-1]).mean()
    dx = jnp.abs(images[:, :, 1:] - images[:, :, :-1]).mean()
    return dy + dx


def diversity(act: Float[Array, "batch ... d"]) -> Array:
    """Mean pairwise cosine similarity of the batch items' Gram matrices (0 for one item)."""
    b = act.shape[0]
    if b < 2:
        return jnp.zeros(())
    flat = act.reshape(b, -1, act.shape[-1])
    gram = jnp.einsum("bnd,bne->bde", flat, flat).reshape(b, -1) / flat.shape[1]
    gram = gram / (jnp.linalg.norm(gram, axis=-1, keepdims=True) + 1e-8)
    sim = gram @ gram.T
    return (jnp.sum(sim) - jnp.trace(sim)) / (b * (b - 1))
