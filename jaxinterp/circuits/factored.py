"""Low-rank factored matrices: ``M = A @ B`` kept as its two factors.

A head's circuits are products of thin matrices: the QK circuit ``W_Q W_K^T`` and the OV
circuit ``W_V W_O`` are ``d_model x d_model`` matrices of rank at most ``d_head``, and the
full circuits ``W_E W_Q W_K^T W_E^T`` and ``W_E W_V W_O W_U`` are ``d_vocab x d_vocab``.
Forming them is wasteful or impossible; every quantity interpretability needs comes
cheaply from the factors ``A [..., l, m]`` and ``B [..., m, r]`` (``m`` small):

* ``M @ X = A (B X)`` and ``X @ M = (X A) B`` stay factored (the inner size kept small);
* Frobenius norm: ``||A B||_F^2 = <A^T A, B B^T>``, two ``m x m`` Gram matrices;
* SVD: ``A = Q_a R_a``, ``B^T = Q_b R_b``, ``R_a R_b^T = U' S V'^T`` gives
  ``M = (Q_a U') S (Q_b V')^T``: only an ``m x m`` SVD;
* eigenvalues: the non-zero eigenvalues of ``A B`` are those of ``B A`` (``m x m``).

Leading axes (``[n_layers, n_heads]`` of stacked weights) broadcast as in ``jnp.matmul``,
so every head of a model is one :class:`FactoredMatrix` and one batched call. The names
follow TransformerLens's ``FactoredMatrix`` (``AB``, ``BA``, ``T``, ``svd``, ``eigenvalues``,
``norm``, ``collapse_l``, ``collapse_r``), so habits carry over.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float

from jaxinterp.errors import ShapeError


def _leading(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    except ValueError:
        raise ShapeError(f"factors' leading axes do not broadcast: A {a_shape}, B {b_shape}") from None


class FactoredMatrix(eqx.Module):
    """The matrix ``A @ B`` (``A [..., ldim, mdim]``, ``B [..., mdim, rdim]``), never formed
    unless :attr:`AB` is asked for. A pytree: it goes through ``jit`` and ``vmap``."""

    A: Float[Array, "... ldim mdim"]
    B: Float[Array, "... mdim rdim"]
    __array_ufunc__ = None  # `numpy_array @ factored` goes to __rmatmul__

    def __init__(self, A: ArrayLike, B: ArrayLike):
        A, B = jnp.asarray(A), jnp.asarray(B)
        if A.ndim < 2 or B.ndim < 2:
            raise ShapeError(f"factors must be matrices (ndim >= 2), got A {A.shape}, B {B.shape}")
        if A.shape[-1] != B.shape[-2]:
            raise ShapeError(
                f"factored matrix inner dimensions differ: A {A.shape} has {A.shape[-1]} columns, "
                f"B {B.shape} has {B.shape[-2]} rows; expected A [..., l, m] and B [..., m, r]"
            )
        _leading(A.shape, B.shape)
        self.A, self.B = A, B

    # Shapes --------------------------------------------------------------------------
    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return _leading(self.A.shape, self.B.shape) + (self.ldim, self.rdim)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={self.shape}, mdim={self.mdim})"

    # Products ------------------------------------------------------------------------
    @property
    def AB(self) -> Float[Array, "... ldim rdim"]:
        """The full product (expensive for large ``ldim x rdim``)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Array, "... mdim mdim"]:
        """The reverse product ``B @ A``; needs ``ldim == rdim``."""
        if self.ldim != self.rdim:
            raise ShapeError(f"BA needs a square matrix, shape is {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(jnp.swapaxes(self.B, -1, -2), jnp.swapaxes(self.A, -1, -2))

    def __matmul__(self, other: FactoredMatrix | ArrayLike) -> FactoredMatrix | Array:
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = jnp.asarray(other)
        if other.shape[-2 if other.ndim > 1 else 0] != self.rdim:
            raise ShapeError(f"cannot multiply {self.shape} by {other.shape}: inner dimensions differ")
        if other.ndim == 1:  # a vector: the result is a vector
            return jnp.einsum("...lm,...m->...l", self.A, jnp.einsum("...mr,r->...m", self.B, other))
        if self.mdim <= self.rdim:  # keep the smaller inner dimension
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: ArrayLike) -> FactoredMatrix | Array:
        other = jnp.asarray(other)
        if other.shape[-1] != self.ldim:
            raise ShapeError(f"cannot multiply {other.shape} by {self.shape}: inner dimensions differ")
        if other.ndim == 1:
            return jnp.einsum("...m,...mr->...r", jnp.einsum("l,...lm->...m", other, self.A), self.B)
        if self.mdim <= self.ldim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | ArrayLike) -> FactoredMatrix:
        scalar = jnp.asarray(scalar)
        if scalar.ndim:
            raise ShapeError(f"* multiplies by a scalar; got shape {scalar.shape} (use @ for matrices)")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    # Decompositions -----------------------------------------------------------------
    def svd(self) -> tuple[Float[Array, "... ldim k"], Float[Array, "... k"], Float[Array, "... rdim k"]]:
        """``(U, S, V)`` with ``U @ diag(S) @ V^T == A @ B`` and ``k = min(ldim, mdim, rdim)``;
        singular values in decreasing order. Costs two thin QRs and a ``k x k``-ish SVD."""
        lead = self.shape[:-2]
        A = jnp.broadcast_to(self.A, lead + self.A.shape[-2:])
        B = jnp.broadcast_to(self.B, lead + self.B.shape[-2:])
        qa, ra = jnp.linalg.qr(A)  # [l, ka], [ka, m]
        qb, rb = jnp.linalg.qr(jnp.swapaxes(B, -1, -2))  # [r, kb], [kb, m]
        u, s, vt = jnp.linalg.svd(ra @ jnp.swapaxes(rb, -1, -2), full_matrices=False)
        return qa @ u, s, qb @ jnp.swapaxes(vt, -1, -2)

    @property
    def S(self) -> Float[Array, "... k"]:
        return self.svd()[1]

    @property
    def U(self) -> Float[Array, "... ldim k"]:
        return self.svd()[0]

    @property
    def V(self) -> Float[Array, "... rdim k"]:
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Array, "... mdim"]:
        """Eigenvalues of ``A B`` other than the ``ldim - mdim`` trivial zeros: those of
        ``B A`` (if ``A B v = k v`` then ``B A (B v) = k (B v)``). CPU only (``jnp.linalg.eig``)."""
        return jnp.linalg.eigvals(self.BA.astype(jnp.promote_types(self.BA.dtype, jnp.float32)))

    def norm(self) -> Float[Array, "..."]:
        """Frobenius norm ``sqrt(<A^T A, B B^T>)``, from two ``mdim x mdim`` Gram matrices."""
        ga = jnp.swapaxes(self.A, -1, -2) @ self.A
        gb = self.B @ jnp.swapaxes(self.B, -1, -2)
        return jnp.sqrt(jnp.maximum((ga * gb).sum((-1, -2)), 0.0))

    def collapse_l(self) -> Float[Array, "... k rdim"]:
        """``diag(S) V^T``: the matrix with the left orthogonal factor removed (same norm,
        same products from the right), as in TransformerLens."""
        _, s, v = self.svd()
        return s[..., :, None] * jnp.swapaxes(v, -1, -2)

    def collapse_r(self) -> Float[Array, "... ldim k"]:
        """``U diag(S)``: the right orthogonal factor removed."""
        u, s, _ = self.svd()
        return u * s[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U sqrt(S)) (sqrt(S) V^T)``: balanced, orthogonal factors."""
        u, s, v = self.svd()
        r = jnp.sqrt(s)
        return FactoredMatrix(u * r[..., None, :], r[..., :, None] * jnp.swapaxes(v, -1, -2))

    # Indexing -----------------------------------------------------------------------
    def __getitem__(self, index) -> FactoredMatrix:
        """Leading axes first (``circuit[layer, head]``); an index one or two longer than the
        leading axes also selects rows, then columns (``full_ov[l, h, tokens, tokens]``). An
        int on a row or column axis keeps that axis (length 1), as in TransformerLens."""
        index = index if isinstance(index, tuple) else (index,)
        lead = len(self.shape) - 2
        if len(index) > lead + 2:
            raise ShapeError(f"index of length {len(index)} for a FactoredMatrix of shape {self.shape}")
        head, rest = index[:lead], index[lead:]
        for i, (ix, n) in enumerate(zip(head, self.shape[:lead], strict=False)):
            _check_index(ix, n, f"axis {i}")
        A = jnp.broadcast_to(self.A, self.shape[:lead] + self.A.shape[-2:])[head]
        B = jnp.broadcast_to(self.B, self.shape[:lead] + self.B.shape[-2:])[head]
        if len(rest) >= 1:
            A = A[..., _keep(rest[0], self.ldim, "row"), :]
        if len(rest) == 2:
            B = B[..., :, _keep(rest[1], self.rdim, "column")]
        return FactoredMatrix(A, B)

    def rows(self, index: ArrayLike) -> FactoredMatrix:
        """Rows ``index`` (e.g. token ids of a full circuit) of every leading matrix."""
        return FactoredMatrix(self.A[..., _keep(index, self.ldim, "row"), :], self.B)

    def cols(self, index: ArrayLike) -> FactoredMatrix:
        """Columns ``index`` of every leading matrix."""
        return FactoredMatrix(self.A, self.B[..., :, _keep(index, self.rdim, "column")])


def _check_index(index, size: int, what: str) -> None:
    if isinstance(index, int | np.integer) and not -size <= int(index) < size:
        raise ShapeError(f"index {int(index)} is out of range for {what} of size {size}")


def _keep(index, size: int, what: str):
    """An index for a row/column axis that keeps the axis; ints checked, never wrapped."""
    if isinstance(index, slice):
        return index
    if isinstance(index, int | np.integer):
        _check_index(index, size, what)
        return jnp.asarray([int(index) % size])
    arr = None if isinstance(index, jax.core.Tracer) else np.asarray(index)
    if arr is not None and arr.size and (arr.min() < -size or arr.max() >= size):
        raise ShapeError(f"{what} index out of range for size {size}: got {arr.min()}..{arr.max()}")
    return jnp.asarray(index)
