"""Image parameterisations for feature visualisation: pixels, and a decorrelated Fourier basis.

Gradient ascent on raw pixels finds high-frequency patterns that excite a unit but look
like noise: neighbouring pixels are strongly correlated in natural images, and plain
pixel gradients ignore that. Optimising in a *decorrelated* space instead (Olah, Mordvintsev
and Schubert, "Feature Visualization", Distill 2017) whitens the spectrum:

    image = sigmoid( irfft2( spectrum * scale ) / 4 )      scale(f) = 1 / max(|f|, 1/size) ** decay

``spectrum`` (complex, ``[c, y, x // 2 + 1]``, stored as two real arrays) starts small and
random; ``scale`` makes a unit step in every frequency equally visible in the image, so
adam's per-parameter steps no longer favour high frequencies. With three channels the
colours are decorrelated too (the square root of ImageNet's colour covariance, as in
Lucid). ``pixel`` is ``sigmoid(p)``. Both map to images in ``[0, 1]``.

A parameterisation is a frozen dataclass with ``init(key, shape) -> params`` and
``image(params) -> images [batch, y, x, c]``; both are pure, so they vmap over targets.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError

# sqrt of ImageNet's RGB colour correlation (Lucid's color_correlation_svd_sqrt), normalised.
_COLOR = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR = _COLOR / np.max(np.linalg.norm(_COLOR, axis=0))


@dataclasses.dataclass(frozen=True)
class Pixel:
    """``image = sigmoid(p)``, ``p ~ N(0, std^2)``."""

    std: float = 0.01

    def init(self, key: jax.Array, shape: tuple[int, int, int, int]) -> Array:
        return self.std * jax.random.normal(key, shape)

    def image(self, params: Array) -> Float[Array, "batch y x c"]:
        return jax.nn.sigmoid(params)


@dataclasses.dataclass(frozen=True)
class Fourier:
    """Decorrelated Fourier parameterisation; ``decay`` is the spectrum's power-law exponent."""

    std: float = 0.01
    decay: float = 1.0

    def init(self, key: jax.Array, shape: tuple[int, int, int, int]) -> Array:
        b, h, w, c = shape
        return self.std * jax.random.normal(key, (b, c, h, w // 2 + 1, 2))

    def scale(self, h: int, w: int) -> np.ndarray:
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        freq = np.sqrt(fy * fy + fx * fx)
        return (1.0 / np.maximum(freq, 1.0 / max(h, w)) ** self.decay).astype(np.float32)

    def image(self, params: Array) -> Float[Array, "batch y x c"]:
        b, c, h, wf, _ = params.shape
        w = 2 * (wf - 1)  # even widths: rfft of w gives w // 2 + 1 frequencies
        scale = self.scale(h, w)
        x = _irfft2(params[..., 0] * scale, params[..., 1] * scale, h, w)  # [b, c, h, w]
        x = jnp.moveaxis(x, 1, -1) / 4.0
        if c == 3:
            x = x @ jnp.asarray(_COLOR).T
        return jax.nn.sigmoid(x)


def _irfft2(real: Array, imag: Array, h: int, w: int) -> Array:
    """``jnp.fft.irfft2(real + i imag, s=(h, w), norm="ortho")`` as real matmuls with
    fixed DFT matrices: on CPU this compiles in a fraction of the time of an FFT, and
    feature-visualisation images are small."""
    ky = np.arange(h)
    ang_y = 2 * np.pi * np.outer(ky, ky) / h  # [h (out), ky]
    cy, sy = (np.cos(ang_y) / np.sqrt(h)).astype(np.float32), (np.sin(ang_y) / np.sqrt(h)).astype(np.float32)
    kx = np.arange(w // 2 + 1)
    ang_x = 2 * np.pi * np.outer(kx, np.arange(w)) / w  # [kx, w (out)]
    weight = np.where((kx == 0) | (kx == w // 2), 1.0, 2.0)[:, None] / np.sqrt(w)
    cx, sx = (weight * np.cos(ang_x)).astype(np.float32), (weight * np.sin(ang_x)).astype(np.float32)
    zr = jnp.einsum("yk,...kf->...yf", cy, real) - jnp.einsum("yk,...kf->...yf", sy, imag)
    zi = jnp.einsum("yk,...kf->...yf", cy, imag) + jnp.einsum("yk,...kf->...yf", sy, real)
    return jnp.einsum("...yf,fx->...yx", zr, cx) - jnp.einsum("...yf,fx->...yx", zi, sx)


PARAMETERISATIONS = {"pixel": Pixel, "fourier": Fourier}


def parameterisation(spec: str | Pixel | Fourier, shape: tuple[int, ...]) -> Pixel | Fourier:
    """A parameterisation from its name (``"pixel"``, ``"fourier"``) or itself."""
    if isinstance(spec, str):
        if spec not in PARAMETERISATIONS:
            raise ConfigError(f"unknown parameterisation {spec!r}; expected one of {sorted(PARAMETERISATIONS)}")
        spec = PARAMETERISATIONS[spec]()
    if isinstance(spec, Fourier) and shape[2] % 2:
        raise ConfigError(f"the Fourier parameterisation needs an even image width, got {shape[2]}")
    if not hasattr(spec, "init") or not hasattr(spec, "image"):
        raise ConfigError(f"a parameterisation needs init(key, shape) and image(params); got {spec!r}")
    return spec
