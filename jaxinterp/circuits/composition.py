"""Composition scores: how much a later head reads what an earlier head writes.

Elhage et al. (2021) measure how strongly head ``A`` (earlier layer) feeds head ``B``
(later layer) through the residual stream by

    score(A, B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

with ``W_A = W_V^A W_O^A`` (A's OV circuit) and ``W_B`` one of B's inputs: ``W_Q^B W_K^B^T``
for Q-composition, ``W_K^B W_Q^B^T`` for K-composition (A's output in B's keys, as in
induction heads built on a previous-token head), ``W_V^B W_O^B`` for V-composition. This is
TransformerLens's ``all_composition_scores`` (same definition, same ``[n_layers, n_heads,
n_layers, n_heads]`` layout, zero unless B sits in a later layer than A).

**Factored forms.** Every matrix is a rank-``d_head`` product, ``W_A = A_1 B_1``
(``A_1 [d_model, d_head]``), ``W_B = A_2 B_2``. With the ``d_head x d_head`` Grams
``G_A = A_1^T A_1`` and ``G_D = B_2 B_2^T``,

    ||W_A W_B||_F^2 = ||P_A Q_B||_F^2,  P_A = R_A B_1,  Q_B = A_2 R_D^T    (R^T R = G)
                    = < W_A^T W_A , W_B W_B^T >_F = < B_1^T (G_A B_1) , A_2 (G_D A_2^T) >_F

and the norms ``||W_A||_F^2 = <G_A, B_1 B_1^T>`` need only ``d_head``-sized pieces. Two
exact methods follow:

* ``"gram"``: the ``d_model x d_model`` Grams ``W_A^T W_A`` and ``W_B W_B^T`` of every head,
  one ``b x b`` block (``b`` about 128) at a time: for each block pair on or above the
  diagonal (the others by symmetry, weight 2), the blocks of all earlier and all later
  heads are formed (``[heads, e, b]^T [heads, e, b]``) and their inner products
  ``[heads, b b] x [b b, heads]`` added at once, in one ``lax.scan``. No Gram is ever held
  whole: a whole one is ``d_model^2`` floats a head (311 MB for 132 heads), and on CPU
  writing such fresh buffers costs more in page faults than the products themselves.
  About ``d_model^2`` FLOPs a pair plus ``2 d_head d_model^2`` a head.
* ``"pairs"``: the whitened ``P`` rows of an earlier layer's heads ``[H e, d]`` times the
  ``Q`` columns of a later layer's ``[d, H e]``, squared and summed per ``e x e`` block,
  one (earlier layer, later layer) tile per ``lax.scan`` step (``R`` from the
  eigendecomposition, so a head with zero weights is exact too): ``2 d_head^2 d_model``
  FLOPs a pair, in well-shaped ``768^3``-like products.

TransformerLens sets every pair whose second head is not in a later layer to zero: "pairs"
skips them, "gram" computes them (its inner products are cheap) and masks them.

**Which method.** :func:`flop_count` counts both; the choice follows measured cost, not
FLOPs alone: on the 2-core CPU (12 layers, d_model 768) "gram" ran its 27 GFLOP at about
40 GFLOP per CPU-second and "pairs" its 64 at about 56 (its products have inner dimension
``d_model``, "gram"'s ``d_head``), so "gram" is picked when its FLOPs divided by 0.7 are
fewer than those of "pairs" (2 layers: "pairs"; 12 layers: "gram", 1.7x faster measured).
Each method is one compiled program with one scanned body, so compile time does not grow
with depth.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from jaxinterp.circuits.weights import attention_weights
from jaxinterp.errors import ConfigError, unknown_name_message
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

MODES = ("Q", "K", "V")
METHODS = ("pairs", "gram")
AXES = ("src_layer", "src_head", "dst_layer", "dst_head")
_BLOCK = 128  # "gram": the d_model axis in blocks of about this size
# Measured rate of "gram" over that of "pairs" (FLOPs per CPU-second, 2-core CPU, 12 layers,
# d_model 768: 39.5 and 55.9); the method is picked on FLOPs / rate (module docstring).
_GRAM_RATE_RATIO = 0.7


def _t(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _inputs(model: HookedTransformer, mode: str) -> tuple[Array, Array, Array, Array]:
    """``W_A = A_1 B_1`` (OV of every head) and ``W_B = A_2 B_2`` (the mode's input of
    every head), each factor ``[L H, ., .]`` over all layers (the earlier heads are rows
    ``0 .. (L-1) H``, the later ones rows ``H ..``; slicing happens inside the products)."""
    W_Q, W_K, W_V, W_O = attention_weights(model)
    A2, B2 = {"Q": (W_Q, _t(W_K)), "K": (W_K, _t(W_Q)), "V": (W_V, W_O)}[mode]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return flat(W_V), flat(W_O), flat(A2), flat(B2)


def _n_blocks(d: int) -> int:
    """The divisor of ``d`` nearest ``d / _BLOCK`` (ratio-wise): blocks of ``d / n``."""
    target = max(1.0, d / _BLOCK)
    return min((n for n in range(1, d + 1) if d % n == 0), key=lambda n: abs(math.log(n / target)))


def _gram_num(A1, B1, A2, B2, n: int, H: int) -> Array:
    """``<W_A^T W_A, W_B W_B^T>`` for earlier heads rows ``0 .. nH`` and later heads rows
    ``H ..``: the Grams ``W_A^T W_A = B_1^T (G_A B_1)`` and ``W_B W_B^T = A_2 (G_D A_2^T)``
    formed one ``b x b`` block at a time (the blocks on and above the diagonal, the others
    by symmetry: weight 2), each block's inner products accumulated right away."""
    N, e, d = B1.shape[0] - H, B1.shape[1], B1.shape[2]
    xw = (_t(A1) @ A1) @ B1  # G_A B_1 [L H, e, d]
    yw = (B2 @ _t(B2)) @ _t(A2)  # G_D A_2^T
    nb = _n_blocks(d)
    b = d // nb
    rows, cols = np.triu_indices(nb)
    weight = jnp.asarray(np.where(rows == cols, 1.0, 2.0), B1.dtype)

    def block(num, ijw):
        i, j, w = ijw
        x = jnp.einsum("nei,nej->nij", lax.dynamic_slice(B1, (0, 0, i * b), (N, e, b)),
                       lax.dynamic_slice(xw, (0, 0, j * b), (N, e, b)))
        y = jnp.einsum("nie,nej->nij", lax.dynamic_slice(A2, (H, i * b, 0), (N, b, e)),
                       lax.dynamic_slice(yw, (H, 0, j * b), (N, e, b)))
        return num + w * (x.reshape(N, -1) @ y.reshape(N, -1).T), None

    num, _ = lax.scan(block, jnp.zeros((N, N), B1.dtype), (jnp.asarray(rows), jnp.asarray(cols), weight))
    return num.reshape(n, H, n, H)


def _root(g: Float[Array, "... e e"]) -> Float[Array, "... e e"]:
    """``R`` with ``R^T R = g`` (symmetric positive semi-definite, singular allowed: a head
    with zero weights) from the eigendecomposition."""
    w, v = jnp.linalg.eigh(g)
    return jnp.sqrt(jnp.maximum(w, 0.0))[..., :, None] * _t(v)


def _pairs_num(A1, B1, A2, B2, n: int, H: int) -> Array:
    """``||P_A Q_B||^2`` with the whitened ``P_A = R_A B_1``, ``Q_B = A_2 R_D^T``: one
    ``[H e, d] x [d, H e]`` product per (earlier layer, later layer) tile, squared and
    summed per ``e x e`` block right after."""
    e, d = B1.shape[1], B1.shape[2]
    P = (_root(_t(A1[:-H]) @ A1[:-H]) @ B1[:-H]).reshape(n, H * e, d)
    Qt = (_root(B2[H:] @ _t(B2[H:])) @ _t(A2[H:])).reshape(n, H * e, d)
    src, dst = np.triu_indices(n)

    def tile(_, ak):
        a, k = ak
        x = Qt[k] @ P[a].T  # [dst h e, src h e]
        return None, (x * x).reshape(H, e, H, e).sum((1, 3))

    _, s = lax.scan(tile, None, (jnp.asarray(src), jnp.asarray(dst)))
    num = jnp.zeros((n, n, H, H), B1.dtype).at[src, dst].set(s)  # [src l, dst l, dst h, src h]
    return jnp.transpose(num, (0, 3, 1, 2))


def flop_count(n_layers: int, n_heads: int, d_model: int, d_head: int, method: str | None = None) -> tuple[str, float]:
    """``(method, FLOPs)`` of :func:`composition_scores` (a multiply-add counts 2);
    ``method=None`` picks the one expected to run faster (FLOPs over measured rates), and
    "gram" from 3 layers on (see the comment below)."""
    L, H, d, e = n_layers, n_heads, d_model, d_head
    N = (L - 1) * H  # earlier heads = later heads
    nb = _n_blocks(d)
    b = d // nb
    blocks = nb * (nb + 1) // 2
    gram = 2 * L * H * (2.0 * d * e * e + 2.0 * e * e * d) + blocks * (2 * 2.0 * N * e * b * b + 2.0 * N * N * b * b)
    tiles = (L - 1) * L // 2
    pairs = 2 * N * (2.0 * d * e * e + 9.0 * e**3 + 2.0 * e * e * d) + tiles * 2.0 * (H * e) ** 2 * d
    if method is None:
        # From 3 layers on, "pairs" deadlocked in XLA CPU's YNNPACK fusion at the default
        # flags (jaxlib 0.10.2: 3 hangs in 5 fresh runs at 3 layers, none with the fusion
        # off; RESULTS_circuits.md) while "gram" ran 5 in 5; so it is only picked below that.
        method = "pairs" if L < 3 and pairs <= gram / _GRAM_RATE_RATIO else "gram"
    return method, gram if method == "gram" else pairs


@eqx.filter_jit
def _all_pairs(model: HookedTransformer, mode: str, method: str) -> Float[Array, "l h l h"]:
    A1, B1, A2, B2 = _inputs(model, mode)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n = L - 1
    num2 = (_gram_num if method == "gram" else _pairs_num)(A1, B1, A2, B2, n, H)  # src 0..L-2, dst 1..L-1
    # ||A B||_F^2 = <A^T A, B B^T>: d_head x d_head Grams
    norm_a = ((_t(A1[:-H]) @ A1[:-H]) * (B1[:-H] @ _t(B1[:-H]))).sum((-1, -2)).reshape(n, H)
    norm_b = ((_t(A2[H:]) @ A2[H:]) * (B2[H:] @ _t(B2[H:]))).sum((-1, -2)).reshape(n, H)
    s = jnp.sqrt(jnp.maximum(num2, 0.0) / (norm_a[:, :, None, None] * norm_b[None, None]))
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
        expected to run faster (FLOPs over measured rates). Both give the same scores.

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
