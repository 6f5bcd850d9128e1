"""Composition scores: how much a later head reads what an earlier head writes.

Elhage et al. (2021) measure how strongly head ``A`` (earlier layer) feeds head ``B``
(later layer) through the residual stream by

    score(A, B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

with ``W_A = W_V^A W_O^A`` (A's OV circuit) and ``W_B`` one of B's inputs: ``W_Q^B W_K^B^T``
for Q-composition, ``W_K^B W_Q^B^T`` for K-composition (A's output in B's keys, as in
induction heads built on a previous-token head), ``W_V^B W_O^B`` for V-composition. This is
TransformerLens's ``all_composition_scores`` (same definition, same ``[n_layers, n_heads,
n_layers, n_heads]`` layout, zero unless B sits in a later layer than A).

Every matrix is a rank-``d_head`` product ``A B``, so the norms need only small pieces.
With ``A_1 = Q_1 R_1`` (thin QR) the left matrix has ``||A_1 B_1 X||_F = ||P_1 X||_F`` for
``P_1 = R_1 B_1`` (``d_head x d_model``); likewise ``B_2^T = Q_2 R_2`` gives
``||Y A_2 B_2||_F = ||Y Q_2'||_F`` for ``Q_2' = A_2 R_2^T`` (``d_model x d_head``). Then

    ||W_A W_B||_F^2 = ||P_A Q_B||_F^2 = < P_A^T P_A , Q_B Q_B^T >

and the pair's work is either a ``d_head x d_model x d_head`` product ("pairs") or the
inner product of two ``d_model x d_model`` Gram matrices formed once per head ("gram"),
symmetric so only the blocks on and above the diagonal are stored. Both are one batched
contraction over all head pairs; the cheaper by FLOP count is used (:func:`flop_count`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxinterp.circuits.weights import attention_weights
from jaxinterp.errors import ConfigError, unknown_name_message
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

MODES = ("Q", "K", "V")
AXES = ("src_layer", "src_head", "dst_layer", "dst_head")
_GRAM_BLOCKS = 4  # the d_model axis in this many blocks: store 5/8 of each Gram matrix


def _factors(model: HookedTransformer, mode: str):
    """``(A_1, B_1, A_2, B_2)``: the earlier heads' OV factors and the later heads' input."""
    W_Q, W_K, W_V, W_O = attention_weights(model)

    def t(x):
        return jnp.swapaxes(x, -1, -2)

    right = {"Q": (W_Q, t(W_K)), "K": (W_K, t(W_Q)), "V": (W_V, W_O)}[mode]
    return (W_V, W_O) + right


def _r(x: Float[Array, "... n e"]) -> Float[Array, "... e e"]:
    """``R`` of a thin QR, so ``R^T R = x^T x``."""
    return jnp.linalg.qr(x, mode="r")


def _gram_blocks(x: Float[Array, "n e d"], n_blocks: int) -> Float[Array, "n f"]:
    """The blocks on and above the diagonal of each ``x^T x`` (``d x d``), flattened, the
    off-diagonal ones scaled by sqrt(2): inner products of rows equal ``<x^T x, y^T y>``."""
    n, e, d = x.shape
    c = -(-d // n_blocks)
    xb = jnp.pad(x, ((0, 0), (0, 0), (0, n_blocks * c - d))).reshape(n, e, n_blocks, c)  # zeros add nothing
    i, j = np.triu_indices(n_blocks)
    blocks = jnp.einsum("nepc,nepd->npcd", xb[:, :, i], xb[:, :, j])
    weight = jnp.where(jnp.asarray(i == j), 1.0, math.sqrt(2.0)).astype(x.dtype)
    return (blocks * weight[None, :, None, None]).reshape(n, -1)


def _scores(A1, B1, A2, B2, method: str) -> Float[Array, "n1 n2"]:
    """Scores of every (earlier, later) pair of the flattened heads ``n1`` and ``n2``."""
    P = _r(A1) @ B1  # [n1, e, d]: ||A1 B1 X|| = ||P X||
    Q = A2 @ jnp.swapaxes(_r(jnp.swapaxes(B2, -1, -2)), -1, -2)  # [n2, d, e]
    norm_p = jnp.sqrt((P * P).sum((-1, -2)))
    norm_q = jnp.sqrt((Q * Q).sum((-1, -2)))
    if method == "pairs":
        n1, e, d = P.shape
        prod = P.reshape(n1 * e, d) @ jnp.swapaxes(Q, 0, 1).reshape(d, -1)  # [n1 e, n2 e]
        num2 = (prod * prod).reshape(n1, e, -1, e).sum((1, 3))
    else:
        kp = _gram_blocks(P, _GRAM_BLOCKS)
        kq = _gram_blocks(jnp.swapaxes(Q, -1, -2), _GRAM_BLOCKS)
        num2 = kp @ kq.T
    return jnp.sqrt(jnp.maximum(num2, 0.0)) / (norm_p[:, None] * norm_q[None, :])


def flop_count(n_layers: int, n_heads: int, d_model: int, d_head: int, method: str | None = None) -> tuple[str, float]:
    """``(method, FLOPs)`` of :func:`composition_scores`' main contraction (heads of layers
    ``0..L-2`` against heads of layers ``1..L-1``); ``method=None`` picks the cheaper."""
    n = (n_layers - 1) * n_heads
    pairs = 2.0 * n * n * d_head * d_head * d_model
    fill = (_GRAM_BLOCKS + 1) / (2 * _GRAM_BLOCKS)
    gram = fill * (2.0 * 2 * n * d_model * d_model * d_head + 2.0 * n * n * d_model * d_model)
    small = 2.0 * 2 * n * (d_model * d_head * d_head * 2)  # QRs and the R B products
    if method is None:
        method = "pairs" if pairs <= gram else "gram"
    return method, small + (pairs if method == "pairs" else gram)


@eqx.filter_jit
def _all_pairs(model: HookedTransformer, mode: str, method: str) -> Float[Array, "l h l h"]:
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    A1, B1, A2, B2 = _factors(model, mode)

    def flat(x, layers):
        return x[layers].reshape((-1,) + x.shape[-2:])

    src, dst = slice(0, L - 1), slice(1, L)
    s = _scores(flat(A1, src), flat(B1, src), flat(A2, dst), flat(B2, dst), method)
    s = s.reshape(L - 1, H, L - 1, H)
    later = jnp.arange(L - 1)[:, None] < jnp.arange(1, L)[None, :]  # [src layer, dst layer]
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
    if method not in (None, "pairs", "gram"):
        raise ConfigError(f"method must be 'pairs', 'gram' or None, got {method!r}")
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"expected a HookedTransformer, got {type(model).__name__}")
    cfg = model.cfg
    if cfg.n_layers < 2:
        raise ConfigError(f"composition needs at least 2 layers, this model has {cfg.n_layers}")
    chosen, _ = flop_count(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, method)
    values = _all_pairs(model, mode, chosen)
    return NamedArray(values, AXES, attrs={"mode": mode, "method": chosen})
