"""Tuning curves: a unit's response as one stimulus parameter sweeps (orientation, curvature).

The neuroscientist's measurement, and the circuits thread's evidence that a unit "is" an
edge or curve detector rather than a name we gave it: render controlled stimuli
(:mod:`jaxinterp.data.images`) at each parameter value, record every channel at the
centre of its feature map, and keep the best response over a few small shifts of the
stimulus (so the curve does not depend on where the stroke falls in the receptive field).

Selectivity is read off the curve. For responses ``r(theta) >= 0`` over a full period
``P`` (pi for lines, 2 pi for edges and curves, which face one way),

    selectivity = | sum r(theta) exp(2 pi i theta / P) | / sum r(theta)

(one minus the circular variance): 1 for a unit that answers one orientation only, 0
for an untuned one; the angle of the sum is the preferred orientation. The classic
orientation selectivity index ``(r_pref - r_orth) / (r_pref + r_orth)`` compares the
preferred orientation with the one half a period away. For curvature, the curve index
``(r_curve - r_line) / (r_curve + r_line)`` compares the best response to a curved arc with
the best to a straight segment: positive for units that prefer curves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.data.images import PERIOD, render
from jaxinterp.errors import ConfigError
from jaxinterp.hooks import run_with_cache
from jaxinterp.named import NamedArray


def responses(model: Callable, hook: str, images: np.ndarray, *, position: Sequence[int] | None = None,
              batch_size: int = 512) -> np.ndarray:
    """Every unit's activation at ``position`` (default: the map centre), ``[n_images, units]``."""

    @jax.jit
    def run(x):
        _, cache = run_with_cache(model, x, names=[hook])
        act = cache[hook]
        spatial = act.shape[1:-1]
        pos = tuple(s // 2 for s in spatial) if position is None else tuple(position)
        if len(pos) != len(spatial):
            raise ConfigError(f"position {pos} needs {len(spatial)} coordinates for {hook!r}")
        return act[(slice(None), *pos)]

    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk) if len(images) > batch_size else 0
        padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        out.append(np.asarray(run(jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out)


def _shifted(kind: str, theta: np.ndarray, shifts: Sequence[float], **kw) -> np.ndarray:
    """Stimuli ``[n_theta * n_shift, ...]``, each shifted along its normal (lines, edges)
    or facing direction (curves) by each of ``shifts`` pixels."""
    t = np.repeat(theta, len(shifts))
    s = np.tile(np.asarray(shifts, np.float64), len(theta))
    if kind == "line":
        ny, nx = np.cos(t), -np.sin(t)
    else:
        ny, nx = np.sin(t), np.cos(t)
    return render(kind, t, offset=(s * ny, s * nx), **kw)


def orientation_tuning(model: Callable, hook: str, kind: str = "line", *, n_angles: int = 16,
                       size: int | None = None, curvature: float = 0.0, width: float = 2.0,
                       shifts: Sequence[float] = (-2, -1, 0, 1, 2), position=None) -> NamedArray:
    """Responses ``[unit, angle]`` to ``kind`` stimuli at ``n_angles`` orientations over one
    period, the best over ``shifts``; ``attrs`` holds the angles (radians) and the period."""
    size = size or _image_size(model)
    period = PERIOD[kind]
    theta = np.arange(n_angles) * period / n_angles
    images = _shifted(kind, theta, shifts, size=size, curvature=curvature, width=width)
    r = responses(model, hook, images, position=position).reshape(n_angles, len(shifts), -1).max(1)
    labels = [f"{np.degrees(a):.0f}" for a in theta]
    return NamedArray(jnp.asarray(r.T), ("unit", "angle"), {"angle": labels},
                      {"hook": hook, "kind": kind, "angles": theta, "period": period})


def curvature_tuning(model: Callable, hook: str, curvatures: Sequence[float] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
                     *, n_angles: int = 16, size: int | None = None, width: float = 2.0,
                     shifts: Sequence[float] = (-2, -1, 0, 1, 2), position=None) -> NamedArray:
    """Responses ``[unit, curvature, angle]`` to arcs of each curvature (0 = straight)
    facing each of ``n_angles`` directions over 2 pi."""
    size = size or _image_size(model)
    curves = [orientation_tuning(model, hook, "curve", n_angles=n_angles, size=size, curvature=k, width=width,
                                 shifts=shifts, position=position) for k in curvatures]
    values = jnp.stack([c.values for c in curves], axis=1)
    return NamedArray(values, ("unit", "curvature", "angle"),
                      {"curvature": [f"{k:g}" for k in curvatures], "angle": curves[0].labels["angle"]},
                      {"hook": hook, "curvatures": np.asarray(curvatures), **{
                          k: curves[0].attrs[k] for k in ("angles", "period")}})


def selectivity(curve: NamedArray) -> dict[str, np.ndarray]:
    """Per unit of an orientation curve ``[unit, angle]``: ``selectivity`` (1 - circular
    variance), ``preferred`` angle (radians), ``osi`` (pref vs half a period away) and
    ``peak`` response."""
    r = np.clip(np.asarray(curve.values, np.float64), 0, None)
    theta, period = np.asarray(curve.attrs["angles"]), float(curve.attrs["period"])
    phase = np.exp(2j * np.pi * theta / period)
    vec = r @ phase
    total = r.sum(-1)
    sel = np.where(total > 0, np.abs(vec) / np.where(total > 0, total, 1), 0.0)
    best = r.argmax(-1)
    opposite = (best + len(theta) // 2) % len(theta)
    r_pref, r_orth = r.max(-1), r[np.arange(len(r)), opposite]
    osi = np.where(r_pref + r_orth > 0, (r_pref - r_orth) / np.where(r_pref + r_orth > 0, r_pref + r_orth, 1), 0)
    return {"selectivity": sel, "preferred": (np.angle(vec) % (2 * np.pi)) * period / (2 * np.pi),
            "osi": osi, "peak": r_pref}


def curve_index(tuning: NamedArray) -> dict[str, np.ndarray]:
    """Per unit of a curvature tuning ``[unit, curvature, angle]`` (first curvature 0):
    ``curve_index`` (best curved vs best straight response), the preferred ``curvature``,
    and the orientation ``selectivity`` over 2 pi at the preferred curvature."""
    r = np.clip(np.asarray(tuning.values, np.float64), 0, None)
    kappas = np.asarray(tuning.attrs["curvatures"])
    if kappas[0] != 0 or len(kappas) < 2:
        raise ConfigError("curve_index needs curvatures starting with 0 (the straight segment)")
    best_k = 1 + r[:, 1:].max(-1).argmax(-1)
    r_curve, r_line = r[:, 1:].max((1, 2)), r[:, 0].max(-1)
    index = np.where(r_curve + r_line > 0, (r_curve - r_line) / np.where(r_curve + r_line > 0, r_curve + r_line, 1), 0)
    at_best = r[np.arange(len(r)), best_k]
    sel = selectivity(NamedArray(jnp.asarray(at_best), ("unit", "angle"),
                                 attrs={"angles": tuning.attrs["angles"], "period": tuning.attrs["period"]}))
    return {"curve_index": index, "curvature": kappas[best_k], "selectivity": sel["selectivity"],
            "preferred": sel["preferred"], "peak": r_curve}


def _image_size(model) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "image_size"):
        raise ConfigError("pass size= for models without cfg.image_size")
    return int(cfg.image_size)
