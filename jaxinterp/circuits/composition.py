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
  (``W_A^T W_A = B_1^T G_A B_1``, ``W_B W_B^T = A_2 G_D A_2^T``); ``||W||_F^2 = tr Z`` comes
  from the diagonal blocks. The ``d_head`` Grams are formed once (one small program a
  side); ``Z`` one ``b x b`` block at a time (``b`` about 64: at 128 it ran about 15% slower),
  straight from the stored weights (``W_O`` columns, ``W_Q``/``W_K``/``W_V`` rows: no
  transposed copies, which cost more in page faults than they save; measured): for each
  column block ``j``, ``G_A B_1j`` and ``A_2j G_D`` once, then
  for each ``i <= j`` (the blocks below the diagonal by symmetry, weight 2) the blocks of all
  earlier and all later heads (``[heads, e, b]^T [heads, e, b]``) and their inner products
  ``[heads, b b] x [b b, heads]``, added at once. No Gram is ever held whole: a whole one is
  ``d_model^2`` floats a head (311 MB for 132 heads), and on CPU writing such fresh buffers
  costs more in page faults than the products. About ``d_model^2`` FLOPs a pair plus
  ``2 d_head d_model^2`` a head.
* ``"pairs"``: the whitened ``P`` rows of an earlier layer's heads ``[H e, d]`` times the
  ``Q`` columns of a later layer's ``[d, H e]``, squared and summed per ``e x e`` block,
  one (earlier layer, later layer) tile per ``lax.scan`` step (``R`` from the
  eigendecomposition, so a head with zero weights is exact too): ``2 d_head^2 d_model``
  FLOPs a pair, in well-shaped ``768^3``-like products.

TransformerLens sets every pair whose second head is not in a later layer to zero: "pairs"
skips them, "gram" computes them (its inner products are cheap) and masks them.

**Which method.** :func:`flop_count` counts both; the choice follows measured cost, not
FLOPs alone: the expected CPU-seconds of a first call, compile (measured: "gram" about 0.18,
"pairs" 0.55, its ``eigh``) plus FLOPs over the measured rate ("gram" about 65 GFLOP per
CPU-second, its products have inner dimension ``d_head``; "pairs" 57). At d_model 768 and 12
heads that is "gram" at every depth; "pairs" wins where ``d_head`` is small against
``d_model``. Compile time does not grow with depth (scanned bodies), and the modes share
programs (their factors differ, not their shapes; V's ``W_O`` enters as stored, so V has its
own "gram" program).

**Parts, side by side.** XLA's CPU backend runs each batched ``d_head``-sized product on one
thread. So on CPU "gram" computes the two sides' Grams at once, then deals its column blocks
to one part per core (about as many block pairs each) and runs the parts at once, from Python
threads; each part is the same compiled program with its own list of blocks, and the parts'
sums are added on the host. Elsewhere, and under tracing, it is one part. (Skipping the
inner products of pairs that are masked anyway, a quarter of them in two or three products
a block, ran no faster.)

**Compiler options.** On CPU each program is compiled with XLA's older elemental emitters
(``xla_cpu_use_fusion_emitters=False``, as the tests); "gram" at backend optimisation level
1 (it compiled in 0.15-0.18 CPU-s against 0.25-0.35 at the default level, and ran the same);
"pairs" without the YNNPACK fusions (``xla_cpu_experimental_ynn_fusion_type=""``): an earlier
form of it deadlocked in 5 of 8 fresh processes at the default flags and 0 of 10 with the
option (jaxlib 0.10.2; this form rarely either way, RESULTS_circuits.md); "gram" keeps them
(its inner products run about 2x faster with them). A jaxlib that rejects an option gets the
defaults.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os

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
_BLOCK = 64  # "gram": the d_model axis in blocks of about this size
# Measured on the 2-core CPU (jaxlib 0.10.2; RESULTS_circuits.md: "pairs" 2026-12-02 10:10, "gram"
# 16:40 after its Grams were shared): CPU-seconds of a first call beyond its run (trace and
# compile; "pairs" compiles eigh) and the run's FLOPs per CPU-second (2-12 layers, d_model 768;
# "gram" 64-78). flop_count picks the cheaper first call.
_COST = {"gram": (0.18, 65e9), "pairs": (0.55, 57e9)}


def _t(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _factors(W_Q, W_K, W_V, W_O, mode: str) -> tuple[tuple[Array, Array, Array, Array], bool]:
    """``(A_1, B_1, A_2, C_2)`` and whether ``C_2`` is ``[d_head, d_model]``: ``W_A = A_1 B_1``
    (OV of every head), ``W_B = A_2 B_2`` (the mode's input of every head) with ``B_2 B_2^T``
    the Gram of ``C_2`` (``W_K`` or ``W_Q`` as stored, ``[d_model, d_head]``; for V ``W_O``,
    ``[d_head, d_model]``). All ``[n_layers, n_heads, ., .]``, as stored: nothing is copied."""
    A2, C2 = {"Q": (W_Q, W_K), "K": (W_K, W_Q), "V": (W_V, W_O)}[mode]
    return (W_V, W_O, A2, C2), mode == "V"


def _flat(x: Array) -> Array:
    """``[n_layers, n_heads, ...]`` as ``[n_layers * n_heads, ...]``."""
    return x.reshape(-1, *x.shape[2:])


def _gram_e(x: Array, rows: bool) -> Array:
    """The ``d_head x d_head`` Gram over ``d_model``: ``x^T x`` of ``[.., d_model, d_head]``,
    ``x x^T`` of ``[.., d_head, d_model]`` (``rows``)."""
    return jnp.einsum("ned,nfd->nef", x, x) if rows else jnp.einsum("nde,ndf->nef", x, x)


def _n_blocks(d: int) -> int:
    """The divisor of ``d`` nearest ``d / _BLOCK`` (ratio-wise): blocks of ``d / n``."""
    target = max(1.0, d / _BLOCK)
    return min((n for n in range(1, d + 1) if d % n == 0), key=lambda n: abs(math.log(n / target)))


def _block_plan(nb: int, n_parts: int) -> np.ndarray:
    """The column blocks ``j`` of the d_model axis dealt to ``n_parts`` parts so that each
    part gets about as many block pairs ``(i <= j)`` (``j + 1`` for block ``j``; largest first,
    to the lightest part), each part padded with ``-1`` (nothing) to one length:
    ``[n_parts, blocks a part]``."""
    parts: list[list[int]] = [[] for _ in range(min(n_parts, nb))]
    for j in reversed(range(nb)):
        min(parts, key=lambda p: sum(k + 1 for k in p)).append(j)
    width = max(map(len, parts))
    return np.array([p + [-1] * (width - len(p)) for p in parts], np.int32)


def _side_gram(x, *, rows: bool) -> Array:
    """Every head's ``d_head x d_head`` Gram, which every part of "gram" reads, computed once
    a side: ``W_V^T W_V`` (``x = W_V``) or ``B_2 B_2^T``, ``[L H, e, e]`` (the parts take the
    earlier or the later heads'; the sides share one compiled program where their factors'
    shapes agree). Each contracts the minor axis of a transposed view: XLA's CPU ran that
    faster than the contraction over ``d_model`` as ``W_V`` is stored (6.7 against 9.6 ms at
    12 layers, 2 threads)."""
    x = _flat(x)
    return _gram_e(x if rows else _t(x), True)


def _gram_part(g_a, g_d, B1, A2, js, *, H: int, nb: int) -> tuple[Array, Array, Array]:
    """One part of "gram": for each column block ``j`` in ``js`` (``-1``: none) and every
    ``i <= j``, the ``b x b`` blocks ``Z_ij = B_1i^T (G_A B_1j)`` of every earlier head and
    ``Y_ij = A_2i (A_2j G_D)^T`` of every later one (``[heads, b b]``) and their inner
    products ``Z_ij . Y_ij`` (weight 2 off the diagonal: ``Z_ji = Z_ij^T``), summed; with the
    norms' share ``tr Z_jj``, ``tr Y_jj``. Returns ``num [N, N]``, ``||W_A||^2 [N]``,
    ``||W_B||^2 [N]`` summed over this part's blocks."""
    B1, A2 = _flat(B1), _flat(A2)
    LH, e, d = B1.shape
    N, b = LH - H, d // nb
    G_A, G_D = g_a[:N], g_d[H:]  # the earlier heads', the later heads'
    src = lambda k: lax.dynamic_slice(B1, (0, 0, k * b), (N, e, b))  # noqa: E731  B_1 columns of block k
    dst = lambda k: lax.dynamic_slice(A2, (H, k * b, 0), (N, b, e))  # noqa: E731  A_2 rows of block k

    def column(carry, j):
        num, norm_a, norm_b = carry
        jj = jnp.maximum(j, 0)
        B1j, A2j = src(jj), dst(jj)
        Uw, Vw = G_A @ B1j, A2j @ G_D  # [N, e, b], [N, b, e]
        live = (j >= 0).astype(num.dtype)

        def pair(i, num):
            x = jnp.einsum("nei,nej->nij", src(i), Uw).reshape(N, -1)
            y = jnp.einsum("nie,nje->nij", dst(i), Vw).reshape(N, -1)
            return num + jnp.where(i == j, 1.0, 2.0).astype(num.dtype) * (x @ y.T)

        num = lax.fori_loop(0, j + 1, pair, num)  # j = -1: no pair
        return (num, norm_a + live * (B1j * Uw).sum((1, 2)), norm_b + live * (A2j * Vw).sum((1, 2))), None

    zeros = jnp.zeros((N,), B1.dtype)
    (num, norm_a, norm_b), _ = lax.scan(column, (jnp.zeros((N, N), B1.dtype), zeros, zeros), js)
    return num, norm_a, norm_b


def _root(g: Float[Array, "... e e"]) -> Float[Array, "... e e"]:
    """``R`` with ``R^T R = g`` (symmetric positive semi-definite, singular allowed: a head
    with zero weights) from the eigendecomposition."""
    w, v = jnp.linalg.eigh(g)
    return jnp.sqrt(jnp.maximum(w, 0.0))[..., :, None] * _t(v)


def _pairs(A1, B1, A2, C2, *, H: int, c2_rows: bool) -> tuple[Array, Array, Array]:
    """``||P_A Q_B||^2`` with the whitened ``P_A = R_A B_1``, ``Q_B = A_2 R_D^T``: one
    ``[H e, d] x [d, H e]`` product per (earlier layer, later layer) tile, squared and
    summed per ``e x e`` block right after; and both sides' ``||W||_F^2 = <G_A, B_1 B_1^T>``."""
    A1, B1, A2, C2 = map(_flat, (A1, B1, A2, C2))
    N, e, d = B1.shape[0] - H, B1.shape[1], B1.shape[2]
    n = N // H
    g_a, g_d = _gram_e(A1, False)[:N], _gram_e(C2, c2_rows)[H:]
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
    gram = 2 * (2.0 * L * H * d * e * e + N * (2.0 * d * e * e + 2.0 * d * e)) \
        + blocks * (2 * 2.0 * N * e * b * b + 2.0 * N * N * b * b)
    tiles = (L - 1) * L // 2
    pairs = 2 * N * (6.0 * d * e * e + 9.0 * e**3) + tiles * 2.0 * (H * e) ** 2 * d
    if method is None:
        flops = {"gram": gram, "pairs": pairs}
        method = min(METHODS, key=lambda m: _COST[m][0] + flops[m] / _COST[m][1])
    return method, gram if method == "gram" else pairs


def _finish(parts: list[tuple[Array, Array, Array]], n: int, H: int, xp=np) -> Array:
    """Scores from the parts' sums: ``sqrt(num / (||W_A||^2 ||W_B||^2))``, zero unless the
    later head's layer is later, ``[n_layers, n_heads, n_layers, n_heads]``. ``xp``: numpy
    for finished parts (a few ``[N, N]`` operations on the host, nothing to compile), jax.numpy
    under tracing."""
    num2, norm_a, norm_b = (sum(x[1:], x[0]) for x in zip(*parts, strict=True))
    s = xp.sqrt(xp.maximum(num2, 0.0).reshape(n, H, n, H)
                / (norm_a.reshape(n, H, 1, 1) * norm_b.reshape(1, 1, n, H)))
    later = np.arange(n)[:, None] <= np.arange(n)[None, :]  # src layer i, dst layer k + 1
    s = xp.where(later[:, None, :, None], s, 0.0)
    return xp.pad(s, ((0, 1), (0, 0), (1, 0), (0, 0)))


# Per-program XLA CPU options (module docstring): the older elemental emitters (a little faster
# to compile here, same run time: the tests' flag); "pairs" also without the YNNPACK fusions,
# under which it deadlocked in some fresh processes. Other backends compile with their defaults.
_CPU_OPTIONS = {
    "gram": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1},
    "pairs": {"xla_cpu_use_fusion_emitters": False, "xla_cpu_experimental_ynn_fusion_type": ""},
}
_CPU_OPTIONS["gram side"] = _CPU_OPTIONS["gram"]
_FUNCTIONS = {"pairs": _pairs, "gram": _gram_part, "gram side": _side_gram}
_OPTIONS_REJECTED: set[str] = set()


@functools.cache
def _program(method: str, options: bool, **static):
    opts = _CPU_OPTIONS[method] if options else None
    return jax.jit(functools.partial(_FUNCTIONS[method], **static), compiler_options=opts)


def _run(method: str, args: tuple, static: dict, traced: bool) -> tuple[Array, Array, Array]:
    if traced or jax.default_backend() != "cpu" or method in _OPTIONS_REJECTED:  # options: top-level jit only
        return _program(method, False, **static)(*args)
    try:
        return _program(method, True, **static)(*args)
    except jax.errors.JaxRuntimeError as err:  # a jaxlib that does not know an option
        if "compile option" not in str(err):
            raise
        _OPTIONS_REJECTED.add(method)
        return _program(method, False, **static)(*args)


def _cpu_parts() -> int:
    """How many parts "gram" runs at once: one per core on CPU, where XLA runs each batched
    ``d_head`` product on one thread; one elsewhere."""
    if jax.default_backend() != "cpu":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _each(fn, args: list[tuple], threads: int) -> list:
    """``[fn(*a) for a in args]``, finished; from ``threads`` Python threads at once when more
    than one (XLA releases the GIL while a program runs)."""
    run = lambda a: jax.block_until_ready(fn(*a))  # noqa: E731
    if threads == 1:
        return [run(a) for a in args]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, args))


def _scores(factors: tuple[Array, ...], c2_rows: bool, H: int, method: str) -> Array:
    """"pairs" as one program; "gram" as parts over the d_model blocks, on CPU one per core
    run side by side (threads); the parts' sums finished on the host (:func:`_finish`)."""
    L = factors[0].shape[0]
    traced = any(isinstance(x, jax.core.Tracer) for x in factors)
    if method == "pairs":
        parts = [_run("pairs", factors, {"H": H, "c2_rows": c2_rows}, traced)]
    else:
        nb = _n_blocks(factors[1].shape[-1])
        plan = _block_plan(nb, 1 if traced else _cpu_parts())
        A1, B1, A2, C2 = factors
        grams = _each(lambda x, rows: _run("gram side", (x,), {"rows": rows}, traced),
                      [(A1, False), (C2, c2_rows)], len(plan))
        parts = _each(lambda js: _run("gram", (*grams, B1, A2, js), {"H": H, "nb": nb}, traced),
                      [(js,) for js in plan], len(plan))
    if traced:
        return _finish(parts, L - 1, H, jnp)
    with np.errstate(invalid="ignore", divide="ignore"):  # a head with zero weights: NaN, as under jit
        return jax.device_put(_finish([tuple(map(np.asarray, p)) for p in parts], L - 1, H))


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
    factors, c2_rows = _factors(*attention_weights(model), mode)
    values = _scores(factors, c2_rows, cfg.n_heads, chosen)
    return NamedArray(values, AXES, attrs={"mode": mode, "method": chosen})


__all__ = ["AXES", "METHODS", "MODES", "composition_scores", "flop_count"]
