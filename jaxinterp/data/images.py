"""Offline image data: rendered lines, edges, curves and shapes, and scikit-learn's digits.

**Stimuli.** Every image is drawn from a signed distance ``d(p)`` of each pixel centre
``p`` to a curve, anti-aliased with a one-pixel ramp, so a stroke of width ``w`` is
``clip(w/2 + 0.5 - |d|, 0, 1)`` and an edge (a half-plane) is ``clip(0.5 + d, 0, 1)``.
Coordinates are pixels from the image centre ``c`` (plus an ``offset``), ``y`` down:

* ``line`` at orientation ``theta`` (radians, period pi): ``d = (p - c) . (-sin, cos)``;
* ``edge`` facing ``theta`` (period 2 pi): bright on the side the normal
  ``(cos theta, sin theta)`` points to, ``d = (p - c) . (cos, sin)``;
* ``curve`` with curvature ``kappa`` (1/radius, per pixel) facing ``theta``: an arc of the
  circle of radius ``1/kappa`` whose apex sits at ``c`` and bulges towards ``theta``,
  ``length`` pixels long; ``kappa = 0`` is the straight segment, so curvature is a
  controlled parameter from straight to tight;
* ``circle``, ``square``, ``triangle`` outlines, rotated by ``theta``.

:func:`render` draws given parameters (tuning curves); :func:`shapes_dataset` draws a
labelled training set where the class is the kind and, for the oriented kinds, the
orientation bin, so a net must detect orientation and curvature to classify.
:func:`load_digits` reads scikit-learn's bundled 8x8 digits (no download; scikit-learn
is an optional dependency, imported on first use).
"""

from __future__ import annotations

import numpy as np

from jaxinterp.errors import ConfigError, DataError

KINDS = ("line", "edge", "curve", "circle", "square", "triangle")
# Orientation bins per oriented kind in the classification task (lines have period pi).
ORIENTATION_BINS = {"line": 4, "edge": 8, "curve": 8}
PERIOD = {"line": np.pi, "edge": 2 * np.pi, "curve": 2 * np.pi, "circle": 2 * np.pi,
          "square": np.pi / 2, "triangle": 2 * np.pi / 3}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return coords[None, :, None], coords[None, None, :]  # y [1, s, 1], x [1, 1, s]


def _stroke(d: np.ndarray, width: np.ndarray) -> np.ndarray:
    return np.clip(width / 2 + 0.5 - np.abs(d), 0.0, 1.0)


def _segment_distance(py, px, ay, ax, by, bx) -> np.ndarray:
    """Distance from points to the segments a-b (broadcast over the batch)."""
    vy, vx = by - ay, bx - ax
    t = np.clip(((py - ay) * vy + (px - ax) * vx) / np.maximum(vy * vy + vx * vx, 1e-12), 0, 1)
    return np.hypot(py - ay - t * vy, px - ax - t * vx)


def _polygon(py, px, radius, theta, n_sides) -> np.ndarray:
    angles = theta + 2 * np.pi * np.arange(n_sides + 1)[:, None, None, None] / n_sides - np.pi / 2
    vy, vx = radius * np.sin(angles), radius * np.cos(angles)  # [n+1, b, 1, 1]
    return np.min([_segment_distance(py, px, vy[i], vx[i], vy[i + 1], vx[i + 1])
                   for i in range(n_sides)], axis=0)


def render(kind: str, theta, *, size: int = 32, curvature=0.0, width=2.0, length: float | None = None,
           offset=(0.0, 0.0), radius: float | None = None) -> np.ndarray:
    """Images ``[n, size, size, 1]`` (float32 in [0, 1]) of ``kind`` at each ``theta``.

    ``theta``, ``curvature``, ``width`` and the two ``offset`` components broadcast to
    ``[n]``; ``radius`` is a number or ``[n]``. ``length`` (curves) defaults to ``0.6 * size``; ``radius``
    (outlines) to ``0.3 * size``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown stimulus kind {kind!r}; expected one of {KINDS}")
    if size < 4:
        raise ConfigError(f"stimuli need size >= 4, got {size}")
    theta, curvature, width, oy, ox = np.broadcast_arrays(
        *(np.asarray(v, np.float64) for v in (theta, curvature, width, offset[0], offset[1])))
    theta, curvature, width, oy, ox = (v.reshape(-1, 1, 1) for v in (theta, curvature, width, oy, ox))
    if np.any(curvature < 0):
        raise ConfigError("curvature must be >= 0 (theta sets which way a curve bulges)")
    gy, gx = _grid(size)
    py, px = gy - oy, gx - ox
    if kind == "line":
        img = _stroke(py * np.cos(theta) - px * np.sin(theta), width)
    elif kind == "edge":
        img = np.clip(0.5 + px * np.cos(theta) + py * np.sin(theta), 0.0, 1.0)
    elif kind == "curve":
        img = _curve(py, px, theta, curvature, width, 0.6 * size if length is None else length)
    else:
        r = 0.3 * size if radius is None else np.asarray(radius, np.float64).reshape(-1, 1, 1)
        if kind == "circle":
            img = _stroke(np.hypot(py, px) - r, width)
        else:
            img = _stroke(_polygon(py, px, r, theta, 4 if kind == "square" else 3), width)
    return img[..., None].astype(np.float32)


def _curve(py, px, theta, kappa, width, length) -> np.ndarray:
    """An arc of curvature ``kappa`` with its apex at the origin, bulging towards ``theta``."""
    uy, ux = np.sin(theta), np.cos(theta)
    along = -px * uy + py * ux  # coordinate along the tangent at the apex
    straight = (px * ux + py * uy) * np.ones_like(kappa)
    k = np.maximum(kappa, 1e-6)
    r = 1.0 / k
    cy, cx = -r * uy, -r * ux  # the circle's centre sits behind the apex
    dist = np.hypot(py - cy, px - cx) - r
    half = length / 2
    angle = np.abs(np.arctan2(along, px * ux + py * uy + r))  # angle from the apex, seen from the centre
    arc_left = (half / r - angle) * r  # arc length left before the arc's end
    bent = _stroke(dist, width) * np.clip(arc_left + 0.5, 0, 1)
    flat = _stroke(straight, width) * np.clip(half - np.abs(along) + 0.5, 0, 1)
    return np.where(kappa < 1e-4, flat, bent)


def shapes_dataset(n: int, *, size: int = 32, seed: int = 0, noise: float = 0.05,
                   max_offset: float | None = None, curvature=(0.06, 0.25)) -> dict[str, np.ndarray]:
    """A labelled set of rendered stimuli: ``images [n, size, size, 1]``, ``labels [n]``
    and the parameters drawn (``kind``, ``theta``, ``curvature``, ``offset``).

    Classes: one per orientation bin of each oriented kind (lines 4 bins over pi, edges
    and curves 8 over 2 pi), then circle, square, triangle: :func:`class_names` lists them.
    Positions jitter by up to ``max_offset`` (default ``size / 8``) pixels, widths 1.5-2.5,
    curvatures are uniform in ``curvature``, and Gaussian pixel noise is added.
    """
    if n < 1:
        raise ConfigError(f"shapes_dataset needs n >= 1, got {n}")
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, len(KINDS), n)
    theta = rng.uniform(0, 2 * np.pi, n)
    kappa = rng.uniform(*curvature, n)
    width = rng.uniform(1.5, 2.5, n)
    m = size / 8 if max_offset is None else max_offset
    offset = rng.uniform(-m, m, (n, 2))
    radius = rng.uniform(0.2, 0.35, n) * size
    images = np.zeros((n, size, size, 1), np.float32)
    for k, name in enumerate(KINDS):
        idx = np.flatnonzero(kind == k)
        for chunk in np.array_split(idx, max(1, len(idx) // 1024)):
            if len(chunk):
                images[chunk] = render(name, theta[chunk], size=size, curvature=kappa[chunk], width=width[chunk],
                                       offset=(offset[chunk, 0], offset[chunk, 1]), radius=radius[chunk])
    images = np.clip(images + noise * rng.standard_normal(images.shape).astype(np.float32), 0, 1)
    labels = np.array([_label(KINDS[k], t) for k, t in zip(kind, theta, strict=True)], np.int32)
    return {"images": images, "labels": labels, "kind": kind.astype(np.int32), "theta": theta.astype(np.float32),
            "curvature": np.where(np.asarray(KINDS)[kind] == "curve", kappa, 0).astype(np.float32)}


def _label(kind: str, theta: float) -> int:
    start = 0
    for name, bins in ORIENTATION_BINS.items():
        if kind == name:
            period = PERIOD[name]
            return start + int((theta % period) / period * bins + 0.5) % bins
        start += bins
    return start + ("circle", "square", "triangle").index(kind)


def class_names() -> list[str]:
    names = []
    for name, bins in ORIENTATION_BINS.items():
        step = np.degrees(PERIOD[name]) / bins
        names += [f"{name} {i * step:.0f}deg" for i in range(bins)]
    return names + ["circle", "square", "triangle"]


def load_digits(size: int = 8) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline) as
    ``images [n, size, size, 1]`` in [0, 1] (bilinear resize when ``size != 8``) and ``labels``."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataError("load_digits needs scikit-learn (pip install 'jaxinterp[test]' or scikit-learn)") from err
    d = sk_digits()
    images = (d.images / 16.0).astype(np.float32)[..., None]
    if size != 8:
        import jax

        images = np.asarray(jax.image.resize(images, (len(images), size, size, 1), "bilinear"))
    return {"images": np.clip(images, 0, 1), "labels": d.target.astype(np.int32)}
