"""Composition scores: how much a later head reads what an earlier head writes.

Elhage et al. (2021) measure how strongly head ``A`` (earlier layer) feeds head ``B``
(later layer) through the residual stream by

    score(A, B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

with ``W_A = W_V^A W_O^A`` (A's OV circuit) and ``W_B`` one of B's inputs: ``W_Q^B W_K^B^T``
for Q-composition, ``W_K^B W_Q^B^T`` for K-composition (A's output in B's keys, as in
induction heads built on a previous-token head), ``W_V^B W_O^B`` for V-composition. This is
TransformerLens's ``all_composition_scores`` (same definition, same ``[n_layers, n_heads,
n_layers, n_heads]`` layout, zero unless B sits in a later layer than A).

**Whitening.** Every matrix is a rank-``d_head`` product, ``W_A = A_1 B_1`` (``A_1 [d_model, d_head]``),
``W_B = A_2 B_2``. With the ``d_head x d_head`` Grams ``G_A = A_1^T A_1`` and
``G_D = B_2 B_2^T``,

    ||W_A W_B||_F^2 = tr(M^T G_A M G_D),  M = B_1 A_2             (d_head x d_head)
                    = ||P_A Q_B||_F^2,  P_A = R_A B_1,  Q_B = A_2 R_D^T   (R^T R = G, Cholesky)
                    = < W_A^T W_A , W_B W_B^T >_F = < B_1^T G_A B_1 , A_2 G_D A_2^T >_F

Two exact methods follow, both large matrix products over stacked heads:

* ``"pairs"``: the whitened ``P`` rows of the earlier heads ``[heads d_head, d_model]``
  times the ``Q`` columns of the later ones, squared and summed per ``d_head x d_head``
  block: ``2 d_head^2 d_model`` FLOPs a pair.
* ``"gram"``: every head's ``d_model x d_model`` Gram (``W_A^T W_A``, ``W_B W_B^T``:
  ``2 d_head d_model^2`` a head, only the blocks on and above the diagonal, as the Grams
  are symmetric), then one ``[heads, packed] x [packed, heads]`` product: about
  ``d_model^2`` a pair. It wins once a head meets more than about ``d_model / d_head``
  later heads (12 layers, d_model 768, 12 heads: 23.9 GFLOP a mode, "pairs" 72.2).

TransformerLens sets every pair whose second head is not in a later layer to zero; those
are skipped: the earlier heads go in groups of layers, each against the later layers only.
:func:`flop_count` counts both methods; the cheaper is used.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from jaxinterp.circuits.weights import attention_weights
from jaxinterp.errors import ConfigError, unknown_name_message
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

MODES = ("Q", "K", "V")
METHODS = ("pairs", "gram")
AXES = ("src_layer", "src_head", "dst_layer", "dst_head")
_GRAM_BLOCK = 192  # the d_model axis of a Gram in blocks of about this size (upper ones kept)
_LAYER_GROUPS = 4  # earlier heads in this many groups of layers, each against later layers only


def _factors(model: HookedTransformer, mode: str) -> tuple[Array, Array, Array, Array]:
    """``W_A = A_1 B_1`` for the earlier heads (layers ``0..L-2``) and ``W_B = A_2 B_2`` for
    the later heads (layers ``1..L-1``), each factor ``[L-1, H, ., .]``."""
    W_Q, W_K, W_V, W_O = attention_weights(model)
    A2, B2 = {"Q": (W_Q, _t(W_K)), "K": (W_K, _t(W_Q)), "V": (W_V, W_O)}[mode]
    return W_V[:-1], W_O[:-1], A2[1:], B2[1:]


def _t(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _root(g: Float[Array, "... e e"]) -> Float[Array, "... e e"]:
    """``R`` with ``R^T R = g`` (symmetric, positive semi-definite): Cholesky, or from the
    eigendecomposition when some ``g`` is singular (a head with zero weights)."""
    chol = _t(jnp.linalg.cholesky(g))

    def from_eigh():
        w, v = jnp.linalg.eigh(g)
        return jnp.sqrt(jnp.maximum(w, 0.0))[..., :, None] * _t(v)

    return lax.cond(jnp.isfinite(chol).all(), lambda: chol, from_eigh)


def _groups(n_layers: int) -> list[tuple[int, int]]:
    """Earlier layers ``0 .. L-2`` in contiguous groups ``[start, stop)``."""
    g = min(_LAYER_GROUPS, n_layers - 1)
    edges = [round(i * (n_layers - 1) / g) for i in range(g + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _block_edges(d: int) -> list[int]:
    n = max(1, round(d / _GRAM_BLOCK))
    return [round(i * d / n) for i in range(n + 1)]


def _packed_gram(x: Float[Array, "n e d"], y: Float[Array, "n e d"], off_diagonal_weight: float) -> Float[Array, "n f"]:
    """The blocks on and above the diagonal of every ``x^T y`` (``d x d``, symmetric),
    flattened; the off-diagonal ones times ``off_diagonal_weight`` (2 on one side makes the
    rows' inner products equal ``<x^T y, x'^T y'>``)."""
    edges = _block_edges(x.shape[-1])
    blocks = []
    for p in range(len(edges) - 1):
        rows = x[..., edges[p]:edges[p + 1]]
        for q in range(p, len(edges) - 1):
            blk = jnp.einsum("nea,neb->nab", rows, y[..., edges[q]:edges[q + 1]]).reshape(x.shape[0], -1)
            blocks.append(blk if p == q else off_diagonal_weight * blk)
    return jnp.concatenate(blocks, axis=1)


def _squared_norms(A1, B1, A2, B2, method: str) -> tuple[Array, Array, Array]:
    """``(||W_A W_B||^2 [L-1, H, L-1, H], ||W_A||^2 [L-1, H], ||W_B||^2 [L-1, H])`` for
    earlier head ``A`` (layer ``i``) and later head ``B`` (layer ``k + 1``) wherever
    ``i <= k`` (other entries arbitrary): the earlier heads in groups of layers, each
    against the layers from the group's first on."""
    n, H, d, e = A1.shape
    g_a = _t(A1) @ A1  # [n, H, e, e]
    g_d = B2 @ _t(B2)
    if method == "gram":  # W_A^T W_A = B_1^T G_A B_1 and W_B W_B^T = A_2 G_D A_2^T, never whitened
        gb = g_a @ B1
        ag = _t(A2 @ g_d)
        kp = _packed_gram(B1.reshape(n * H, e, d), gb.reshape(n * H, e, d), 2.0).reshape(n, H, -1)
        kq = _packed_gram(_t(A2).reshape(n * H, e, d), ag.reshape(n * H, e, d), 1.0).reshape(n, H, -1)
        norm_a, norm_b = (B1 * gb).sum((-1, -2)), (_t(A2) * ag).sum((-1, -2))
    else:  # whitened: ||W_A X|| = ||P X||, ||X W_B|| = ||X Q||
        P = _root(g_a) @ B1  # [n, H, e, d]
        Q = A2 @ _t(_root(g_d))  # [n, H, d, e]
        norm_a, norm_b = (P * P).sum((-1, -2)), (Q * Q).sum((-1, -2))
    rows = []
    for a, b in _groups(n + 1):
        if method == "gram":
            s = kp[a:b].reshape((b - a) * H, -1) @ kq[a:].reshape((n - a) * H, -1).T
        else:
            x = P[a:b].reshape(-1, d) @ jnp.moveaxis(Q[a:], -2, 0).reshape(d, -1)  # [src e, dst e]
            s = (x * x).reshape((b - a) * H, e, (n - a) * H, e).sum((1, 3))
        rows.append(jnp.pad(s.reshape(b - a, H, n - a, H), ((0, 0), (0, 0), (a, 0), (0, 0))))
    return jnp.concatenate(rows, axis=0), norm_a, norm_b


def flop_count(n_layers: int, n_heads: int, d_model: int, d_head: int, method: str | None = None) -> tuple[str, float]:
    """``(method, FLOPs)`` of :func:`composition_scores` (a multiply-add counts 2);
    ``method=None`` picks the cheaper."""
    L, H, d, e = n_layers, n_heads, d_model, d_head
    small = 2 * (L - 1) * H * (4.0 * d * e * e + e**3 / 3)  # G_A (G_D), then R B (G B) a head
    pair_heads = sum((b - a) * H * (L - a - 1) * H for a, b in _groups(L))  # pairs computed
    edges = _block_edges(d)
    sizes = [edges[i + 1] - edges[i] for i in range(len(edges) - 1)]
    packed = sum(sizes[p] * sizes[q] for p in range(len(sizes)) for q in range(p, len(sizes)))
    gram = 2 * (L - 1) * H * 2.0 * e * packed + 2.0 * pair_heads * packed
    pairs = 2.0 * pair_heads * e * e * d
    if method is None:
        method = "pairs" if pairs <= gram else "gram"
    return method, small + (pairs if method == "pairs" else gram)


@eqx.filter_jit
def _all_pairs(model: HookedTransformer, mode: str, method: str) -> Float[Array, "l h l h"]:
    num2, norm_a, norm_b = _squared_norms(*_factors(model, mode), method)  # src 0..L-2, dst 1..L-1
    s = jnp.sqrt(jnp.maximum(num2, 0.0) / (norm_a[:, :, None, None] * norm_b[None, None]))
    n = num2.shape[0]
    later = jnp.arange(n)[:, None] <= jnp.arange(n)[None, :]  # src layer i, dst layer k + 1
    s = jnp.where(later[:, None, :, None], s, 0.0)
    return jnp.pad(s, ((0, 1), (0, 0), (1, 0), (0, 0)))


def composition_scores(model: HookedTransformer, mode: str, *, method: str | None = None) -> NamedArray:
    """Q-, K- or V-composition score of every ordered pair of heads.

    Args:
      model: a :class:`~jaxinterp.models.HookedTransformer` (weights as they are; call
        ``ji.process_weights`` first to fold layer norms in, as TransformerLens does by default).
      mode: ``"Q"``, ``"K"`` or ``"V"``: which input of the later head reads the earlier
        head's OV output.
      method: ``"pairs"`` or ``"gram"`` (see the module docstring); ``None`` picks the one
        with fewer FLOPs. Both give the same scores.

    Returns:
      :class:`NamedArray` ``[src_layer, src_head, dst_layer, dst_head]`` (``.top(5)`` lists
      the strongest ``L0H3 -> L1H6`` pairs); zero unless ``dst_layer > src_layer``.
    """
    if mode not in MODES:
        raise ConfigError(unknown_name_message("composition mode", str(mode), MODES)
                          + " Expected 'Q', 'K' or 'V'.")
    if method not in (None, *METHODS):
        raise ConfigError(f"method must be 'pairs', 'gram' or None, got {method!r}")
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"expected a HookedTransformer, got {type(model).__name__}")
    cfg = model.cfg
    if cfg.n_layers < 2:
        raise ConfigError(f"composition needs at least 2 layers, this model has {cfg.n_layers}")
    chosen, _ = flop_count(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, method)
    values = _all_pairs(model, mode, chosen)
    return NamedArray(values, AXES, attrs={"mode": mode, "method": chosen})


__all__ = ["AXES", "METHODS", "MODES", "composition_scores", "flop_count"]
