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

and the norms ``||W_A||_F^2 = tr(W_A^T W_A) = <G_A, B_1 B_1^T>`` need only ``d_head``-sized
pieces. Two exact methods follow:

* ``"gram"``: each side as ``Z = U G U^T`` with ``U [d_model, d_head]`` and a ``d_head`` Gram
  (``W_A^T W_A = B_1^T G_A B_1``, ``W_B W_B^T = A_2 G_D A_2^T``); ``||W||_F^2 = tr Z =
  sum(U * U G)`` comes free. ``Z`` is formed one ``b x b`` block at a time (``b`` about
  128): for each block pair on or above the diagonal (the others by symmetry, weight 2), the
  blocks of all earlier and all later heads (``[heads, e, b]^T [heads, e, b]``) and their
  inner products ``[heads, b b] x [b b, heads]``, added at once, in one ``lax.scan``. No
  Gram is ever held whole: a whole one is ``d_model^2`` floats a head (311 MB for 132
  heads), and on CPU writing such fresh buffers costs more in page faults than the products.
  About ``d_model^2`` FLOPs a pair plus ``2 d_head d_model^2`` a head.
* ``"pairs"``: the whitened ``P`` rows of an earlier layer's heads ``[H e, d]`` times the
  ``Q`` columns of a later layer's ``[d, H e]``, squared and summed per ``e x e`` block,
  one (earlier layer, later layer) tile per ``lax.scan`` step (``R`` from the
  eigendecomposition, so a head with zero weights is exact too): ``2 d_head^2 d_model``
  FLOPs a pair, in well-shaped ``768^3``-like products.

TransformerLens sets every pair whose second head is not in a later layer to zero: "pairs"
skips them, "gram" computes them (its inner products are cheap) and masks them.

**Which method.** :func:`flop_count` counts both; the choice follows measured cost, not
FLOPs alone: the expected CPU-seconds of a first call, compile (measured: "gram" about 0.55,
"pairs" 0.9, its ``eigh``) plus FLOPs over the measured rate ("gram" about 38 GFLOP per
CPU-second, its products have inner dimension ``d_head``; "pairs" 54). At d_model 768 and 12
heads that is "gram" from 2 layers on ("pairs" runs 10-30 ms faster at 2-4 layers but
compiles 0.3-0.5 s slower); "pairs" wins where ``d_head`` is small against ``d_model``.
Each method is one compiled program with one scanned body, so compile time does not grow with
depth, and the three modes share it (their factors differ, not their shapes).

**Compiler options.** On CPU each program is compiled with XLA's older elemental emitters
(``xla_cpu_use_fusion_emitters=False``, as the tests; "gram" compiled in 0.42 CPU-s
against 0.44, ran the same), and "pairs" without
the YNNPACK fusions (``xla_cpu_experimental_ynn_fusion_type=""``): an earlier form of it
deadlocked in 5 of 8 fresh processes at the default flags and 0 of 10 with the option
(jaxlib 0.10.2; this form rarely either way, RESULTS_circuits.md); "gram" keeps them (its inner
products run about 2x faster with them). A jaxlib that rejects an option gets the defaults.
"""

from __future__ import annotations

import functools
import math

import jax
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
# Measured on the 2-core CPU (jaxlib 0.10.2; RESULTS_circuits.md, 2026-12-02 06:40): CPU-seconds
# of a first call beyond its run (trace and compile; "pairs" compiles eigh) and the run's FLOPs
# per CPU-second (2-6 layers, d_model 768). flop_count picks the cheaper first call.
_COST = {"gram": (0.55, 38e9), "pairs": (0.9, 54e9)}


def _t(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _factors(W_Q, W_K, W_V, W_O, mode: str) -> tuple[Array, Array, Array, Array]:
    """``(A_1, B_1, A_2, B_2^T)``: ``W_A = A_1 B_1`` (OV of every head) and ``W_B = A_2 B_2``
    (the mode's input of every head), ``[n_layers, n_heads, ., .]``. ``B_2`` comes transposed
    (``[d_model, d_head]`` like ``A_2``) so the three modes are one compiled program."""
    A2, C2 = {"Q": (W_Q, W_K), "K": (W_K, W_Q), "V": (W_V, None)}[mode]
    return W_V, W_O, A2, _t(W_O) if C2 is None else C2


def _n_blocks(d: int) -> int:
    """The divisor of ``d`` nearest ``d / _BLOCK`` (ratio-wise): blocks of ``d / n``."""
    target = max(1.0, d / _BLOCK)
    return min((n for n in range(1, d + 1) if d % n == 0), key=lambda n: abs(math.log(n / target)))


def _gram(A1, B1, A2, C2, H: int) -> tuple[Array, Array, Array]:
    """``<W_A^T W_A, W_B W_B^T>`` for the earlier heads (rows ``0 .. N``) and the later ones
    (rows ``H ..``), and both sides' ``||W||_F^2``. Each side is ``Z = U G U^T`` with
    ``U [d, e]`` and a ``d_head`` Gram ``G`` (``W_A^T W_A = B_1^T (A_1^T A_1) B_1``,
    ``W_B W_B^T = A_2 (B_2 B_2^T) A_2^T``), so ``||W||_F^2 = tr Z = sum(U * U G)``. ``Z`` is
    formed one ``b x b`` block at a time (the blocks on and above the diagonal, the others by
    symmetry: weight 2) and each block's inner products added right away."""
    N, e, d = B1.shape[0] - H, B1.shape[1], B1.shape[2]
    U, V = _t(B1[:N]), A2[H:]  # [N, d, e]
    Uw = U @ jnp.einsum("nde,ndf->nef", A1[:N], A1[:N])  # U G_A
    Vw = V @ jnp.einsum("nde,ndf->nef", C2[H:], C2[H:])  # V G_D, G_D = B_2 B_2^T
    norm_a, norm_b = (U * Uw).sum((1, 2)), (V * Vw).sum((1, 2))
    nb = _n_blocks(d)
    b = d // nb
    # [nb, N, e, b]: block i of every head, contiguous (the scan slices the leading axis)
    blocks = lambda z: jnp.transpose(z.reshape(N, nb, b, e), (1, 0, 3, 2))  # noqa: E731
    U, Uw, V, Vw = map(blocks, (U, Uw, V, Vw))
    rows, cols = np.triu_indices(nb)
    weight = jnp.asarray(np.where(rows == cols, 1.0, 2.0), B1.dtype)

    def block(num, ijw):
        i, j, w = ijw
        x = jnp.einsum("nei,nej->nij", U[i], Uw[j]).reshape(N, -1)
        y = jnp.einsum("nei,nej->nij", V[i], Vw[j]).reshape(N, -1)
        return num + w * (x @ y.T), None  # the weight after the product: on y, 20% slower

    num, _ = lax.scan(block, jnp.zeros((N, N), B1.dtype), (jnp.asarray(rows), jnp.asarray(cols), weight))
    return num, norm_a, norm_b


def _root(g: Float[Array, "... e e"]) -> Float[Array, "... e e"]:
    """``R`` with ``R^T R = g`` (symmetric positive semi-definite, singular allowed: a head
    with zero weights) from the eigendecomposition."""
    w, v = jnp.linalg.eigh(g)
    return jnp.sqrt(jnp.maximum(w, 0.0))[..., :, None] * _t(v)


def _pairs(A1, B1, A2, C2, H: int) -> tuple[Array, Array, Array]:
    """``||P_A Q_B||^2`` with the whitened ``P_A = R_A B_1``, ``Q_B = A_2 R_D^T``: one
    ``[H e, d] x [d, H e]`` product per (earlier layer, later layer) tile, squared and
    summed per ``e x e`` block right after; and both sides' ``||W||_F^2 = <G_A, B_1 B_1^T>``."""
    N, e, d = B1.shape[0] - H, B1.shape[1], B1.shape[2]
    n = N // H
    g_a, g_d = _t(A1[:N]) @ A1[:N], _t(C2[H:]) @ C2[H:]
    norm_a = (g_a * (B1[:N] @ _t(B1[:N]))).sum((-1, -2))
    norm_b = ((_t(A2[H:]) @ A2[H:]) * g_d).sum((-1, -2))
    P = (_root(g_a) @ B1[:N]).reshape(n, H * e, d)
    Qt = (_root(g_d) @ _t(A2[H:])).reshape(n, H * e, d)
    src, dst = np.triu_indices(n)

    def tile(_, ak):
        a, k = ak
        x = Qt[k] @ P[a].T  # [dst h e, src h e]
        return None, (x * x).reshape(H, e, H, e).sum((1, 3))

    _, s = lax.scan(tile, None, (jnp.asarray(src), jnp.asarray(dst)))
    num = jnp.zeros((n, n, H, H), B1.dtype).at[src, dst].set(s)  # [src l, dst l, dst h, src h]
    return jnp.transpose(num, (0, 3, 1, 2)).reshape(N, N), norm_a, norm_b


def flop_count(n_layers: int, n_heads: int, d_model: int, d_head: int, method: str | None = None) -> tuple[str, float]:
    """``(method, FLOPs)`` of :func:`composition_scores` (a multiply-add counts 2);
    ``method=None`` picks the one whose first call (compile included) is expected to cost
    less, from measured compile times and rates (module docstring)."""
    L, H, d, e = n_layers, n_heads, d_model, d_head
    N = (L - 1) * H  # earlier heads = later heads
    nb = _n_blocks(d)
    b = d // nb
    blocks = nb * (nb + 1) // 2
    gram = 2 * N * (4.0 * d * e * e + 2.0 * d * e) + blocks * (2 * 2.0 * N * e * b * b + 2.0 * N * N * b * b)
    tiles = (L - 1) * L // 2
    pairs = 2 * N * (6.0 * d * e * e + 9.0 * e**3) + tiles * 2.0 * (H * e) ** 2 * d
    if method is None:
        flops = {"gram": gram, "pairs": pairs}
        method = min(METHODS, key=lambda m: _COST[m][0] + flops[m] / _COST[m][1])
    return method, gram if method == "gram" else pairs


def _scores(A1, B1, A2, C2, method: str) -> Float[Array, "l h l h"]:
    L, H = A1.shape[:2]
    n = L - 1
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    num2, norm_a, norm_b = (_gram if method == "gram" else _pairs)(flat(A1), flat(B1), flat(A2), flat(C2), H)
    s = jnp.sqrt(jnp.maximum(num2, 0.0).reshape(n, H, n, H)
                 / (norm_a.reshape(n, H, 1, 1) * norm_b.reshape(1, 1, n, H)))
    later = jnp.arange(n)[:, None] <= jnp.arange(n)[None, :]  # src layer i, dst layer k + 1
    s = jnp.where(later[:, None, :, None], s, 0.0)
    return jnp.pad(s, ((0, 1), (0, 0), (1, 0), (0, 0)))


# Per-program XLA CPU options (module docstring): the older elemental emitters (a little faster
# to compile here, same run time: the tests' flag); "pairs" also without the YNNPACK fusions,
# under which it deadlocked in some fresh processes. Other backends compile with their defaults.
_CPU_OPTIONS = {
    "gram": {"xla_cpu_use_fusion_emitters": False},
    "pairs": {"xla_cpu_use_fusion_emitters": False, "xla_cpu_experimental_ynn_fusion_type": ""},
}
_OPTIONS_REJECTED: set[str] = set()


@functools.cache
def _program(method: str, options: bool):
    opts = _CPU_OPTIONS[method] if options else None
    return jax.jit(functools.partial(_scores, method=method), compiler_options=opts)


def _run(factors: tuple[Array, ...], method: str) -> Array:
    if jax.default_backend() != "cpu" or method in _OPTIONS_REJECTED:
        return _program(method, False)(*factors)
    try:
        return _program(method, True)(*factors)
    except jax.errors.JaxRuntimeError as err:  # a jaxlib that does not know an option
        if "compile option" not in str(err):
            raise
        _OPTIONS_REJECTED.add(method)
        return _program(method, False)(*factors)


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
    values = _run(_factors(*attention_weights(model), mode), chosen)
    return NamedArray(values, AXES, attrs={"mode": mode, "method": chosen})


__all__ = ["AXES", "METHODS", "MODES", "composition_scores", "flop_count"]
