"""What a trained toy model represents: norms, superposition, dimensionality, polytopes.

With ``W_i`` the hidden direction of feature ``i`` (row ``i`` of ``W``, shape
``[n_features, n_hidden]``) and ``W_i_hat = W_i / ||W_i||``:

* ``||W_i||``: near 1 when the feature is represented, near 0 when it is dropped;
* superposition of feature ``i``: ``sum_{j != i} (W_i_hat . W_j)^2``, how much the other
  features interfere along its direction (0 for a dedicated, orthogonal dimension);
* feature dimensionality ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``: the fraction of a
  hidden dimension feature ``i`` owns (1 dedicated, 1/2 antipodal pair, 2/3 triangle,
  3/4 tetrahedron, 2/5 pentagon, 3/8 square antiprism);
* dimensions per feature ``m / ||W||_F^2``: hidden dimensions over (roughly) the number of
  features represented.

:func:`feature_geometry` finds the polytopes from the vectors themselves: represented
features whose directions interfere are joined into groups (features in different groups
are nearly orthogonal, the paper's tegum product), each group's dimension is the rank of
its vectors, and the group is named by (features, dimensions) and checked against the
regular polytope's pairwise cosines. The array functions broadcast over leading
(instance) axes and are ``jit``/``vmap`` safe; :func:`feature_geometry` runs on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.errors import ShapeError

STICKY_VALUES = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375}

# (features, dimensions) -> name of the regular configuration
POLYTOPES = {
    (1, 1): "dedicated dimension",
    (2, 1): "antipodal pair",
    (3, 2): "triangle",
    (4, 2): "square",
    (4, 3): "tetrahedron",
    (5, 2): "pentagon",
    (6, 2): "hexagon",
    (8, 3): "square antiprism",
}


def feature_vectors(model_or_W: Any) -> Float[Array, "*instance feature hidden"]:
    """``W`` (rows are feature directions) of a toy model, or an array given as such."""
    W = getattr(model_or_W, "W", model_or_W)
    W = jnp.asarray(W)
    if W.ndim < 2:
        raise ShapeError(f"feature vectors need shape [..., n_features, n_hidden], got {list(W.shape)}.")
    return W


def feature_norms(model_or_W: Any) -> Float[Array, "*instance feature"]:
    """``||W_i||`` per feature."""
    return jnp.linalg.norm(feature_vectors(model_or_W), axis=-1)


def _overlaps(W: Array) -> Array:
    """``(W_i_hat . W_j)`` for all i, j: ``[..., feature, feature]``."""
    norms = jnp.linalg.norm(W, axis=-1, keepdims=True)
    W_hat = W / jnp.maximum(norms, 1e-8)
    return W_hat @ jnp.swapaxes(W, -1, -2)


def superposition(model_or_W: Any) -> Float[Array, "*instance feature"]:
    """``sum_{j != i} (W_i_hat . W_j)^2``: interference along each feature's direction."""
    W = feature_vectors(model_or_W)
    sq = _overlaps(W) ** 2
    return sq.sum(-1) - jnp.diagonal(sq, axis1=-2, axis2=-1)


def feature_dimensionality(model_or_W: Any) -> Float[Array, "*instance feature"]:
    """``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` (0 for a dropped feature)."""
    W = feature_vectors(model_or_W)
    denom = (_overlaps(W) ** 2).sum(-1)
    return jnp.sum(W**2, -1) / jnp.maximum(denom, 1e-12)


def dimensions_per_feature(model_or_W: Any) -> Float[Array, "*instance"]:
    """``m / ||W||_F^2``: hidden dimensions per (norm-weighted) represented feature."""
    W = feature_vectors(model_or_W)
    return W.shape[-1] / jnp.sum(W**2, axis=(-2, -1))


def n_represented(model_or_W: Any, threshold: float = 0.5) -> Any:
    """How many features have ``||W_i|| > threshold``."""
    return (feature_norms(model_or_W) > threshold).sum(-1)


def neighbour_angles(vectors: Any) -> tuple[np.ndarray, np.ndarray]:
    """For 2-D feature vectors: the features in angular order and the angles (degrees)
    from each to the next, going round the circle (they sum to 360)."""
    v = np.asarray(vectors, np.float64)
    if v.ndim != 2 or v.shape[1] != 2:
        raise ShapeError(f"neighbour_angles needs [features, 2] vectors, got {list(v.shape)}.")
    theta = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    order = np.argsort(theta)
    gaps = np.diff(np.concatenate([theta[order], theta[order][:1] + 360.0]))
    return order, gaps


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """Represented features sharing a subspace: ``name`` from (features, dimensions)."""

    features: tuple[int, ...]
    dims: int
    name: str
    regular: bool | None  # matches the regular polytope's cosines (None: no reference)
    deviation: float  # largest |cosine - ideal cosine| (nan without a reference)

    @property
    def dimensionality(self) -> float:
        return self.dims / len(self.features)


def _ideal_cosines(k: int, d: int) -> np.ndarray | None:
    """Sorted pairwise cosines of the regular polytope of k vectors in d dimensions."""
    if k == 1:
        return np.zeros(0)
    if d == 2:  # regular polygon
        angles = 2 * np.pi * np.arange(k) / k
        pts = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif k == d + 1 or (k == 2 and d == 1):  # simplex (the antipodal pair is the 1-simplex)
        return np.full(k * (k - 1) // 2, -1.0 / d)
    elif (k, d) == (8, 3):  # square antiprism on the unit sphere, equal edges
        r = 1.0 / np.sqrt(1.0 + np.sqrt(2.0) / 4.0)  # edges within and between squares equal
        z = r * np.sqrt(np.sqrt(2.0) / 4.0)
        a = np.pi / 2 * np.arange(4)
        pts = np.concatenate([np.stack([r * np.cos(a), r * np.sin(a), np.full(4, z)], 1),
                              np.stack([r * np.cos(a + np.pi / 4), r * np.sin(a + np.pi / 4),
                                        np.full(4, -z)], 1)])
    else:
        return None
    c = pts @ pts.T
    return np.sort(c[np.triu_indices(k, 1)])


def feature_geometry(model_or_W: Any, *, norm_threshold: float = 0.5,
                     overlap_threshold: float = 0.2, rank_tol: float = 0.25,
                     regular_tol: float = 0.1) -> list[FeatureGroup]:
    """The groups (polytopes) formed by one instance's represented features.

    Features with ``||W_i|| > norm_threshold`` are joined when ``|cos(W_i, W_j)| >
    overlap_threshold``; each connected group's dimension is the number of singular values
    of its vectors above ``rank_tol`` times the largest. Groups come largest first.
    """
    W = np.asarray(feature_vectors(model_or_W), np.float64)
    if W.ndim != 2:
        raise ShapeError(f"feature_geometry takes one instance's [n_features, n_hidden] vectors, "
                         f"got {list(W.shape)}; index the instance first.")
    norms = np.linalg.norm(W, axis=1)
    kept = np.flatnonzero(norms > norm_threshold)
    unit = W[kept] / norms[kept, None]
    cos = unit @ unit.T
    parent = list(range(len(kept)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(np.abs(np.triu(cos, 1)) > overlap_threshold), strict=True):
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for a in range(len(kept)):
        groups.setdefault(root(a), []).append(a)

    out = []
    for members in groups.values():
        s = np.linalg.svd(W[kept[members]], compute_uv=False)
        d = int((s > rank_tol * s[0]).sum())
        k = len(members)
        ideal = _ideal_cosines(k, d)
        if ideal is None:
            regular, dev = None, float("nan")
        else:
            got = np.sort(cos[np.ix_(members, members)][np.triu_indices(k, 1)])
            dev = float(np.abs(got - ideal).max()) if k > 1 else 0.0
            regular = dev < regular_tol
        name = POLYTOPES.get((k, d), f"{k} features in {d} dimensions")
        out.append(FeatureGroup(tuple(int(kept[m]) for m in members), d, name, regular, dev))
    return sorted(out, key=lambda g: (-len(g.features), g.features))
