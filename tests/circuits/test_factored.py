"""FactoredMatrix algebra against the dense products it stands for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.circuits import FactoredMatrix
from jaxinterp.errors import ShapeError


@pytest.fixture(scope="module")
def fm():
    k = jax.random.split(jax.random.key(0), 2)
    return FactoredMatrix(jax.random.normal(k[0], (2, 3, 10, 4)), jax.random.normal(k[1], (2, 3, 4, 10)))


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_products_and_transpose(fm):
    dense = np.asarray(fm.AB)
    other = np.random.default_rng(0).normal(size=(10, 7)).astype(np.float32)
    close((fm @ other).AB, dense @ other)
    close((other.T @ fm).AB, other.T @ dense)
    close(fm @ other[:, 0], dense @ other[:, 0])
    close((fm @ fm).AB, dense @ dense)
    close(fm.T.AB, np.swapaxes(dense, -1, -2))
    close((2.5 * fm).AB, 2.5 * dense)
    close(fm.BA, np.asarray(fm.B) @ np.asarray(fm.A))
    assert fm.shape == (2, 3, 10, 10) and (fm @ other).shape == (2, 3, 10, 7)
    assert (fm @ other).mdim == 4  # the inner size stays the small one


def test_svd_norm_eigenvalues(fm):
    dense = np.asarray(fm.AB, np.float64)
    u, s, v = fm.svd()
    close(u @ (s[..., None] * jnp.swapaxes(v, -1, -2)), dense)
    close(s, np.linalg.svd(dense, compute_uv=False)[..., :4])
    close(jnp.swapaxes(u, -1, -2) @ u, np.broadcast_to(np.eye(4), (2, 3, 4, 4)))
    close(fm.norm(), np.linalg.norm(dense, axis=(-1, -2)))
    close(jnp.linalg.norm(fm.collapse_l(), axis=(-1, -2)), np.linalg.norm(dense, axis=(-1, -2)))
    close(fm.make_even().AB, dense)
    eig = np.sort_complex(np.asarray(fm.eigenvalues[1, 2]))
    dense_eig = np.linalg.eigvals(dense[1, 2])
    dense_eig = np.sort_complex(dense_eig[np.argsort(-np.abs(dense_eig))[:4]])
    close(eig, dense_eig, 1e-3)


def test_indexing_by_layer_head_and_tokens(fm):
    dense = np.asarray(fm.AB)
    close(fm[1].AB, dense[1])
    close(fm[1, 2].AB, dense[1, 2])
    tokens = np.array([3, 0, 7])
    close(fm[1, 2, tokens].AB, dense[1, 2][tokens])
    close(fm[1, 2, tokens, tokens].AB, dense[1, 2][np.ix_(tokens, tokens)])
    close(fm[0, 1, -1].AB, dense[0, 1, -1:])  # an int keeps the axis; negative is Python's
    close(fm.rows(tokens).cols([1, 2]).AB, dense[..., tokens, :][..., [1, 2]])


def test_bad_inputs(fm):
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        FactoredMatrix(np.ones((5, 3)), np.ones((4, 5)))
    with pytest.raises(ShapeError, match="leading axes"):
        FactoredMatrix(np.ones((2, 5, 3)), np.ones((4, 3, 5)))
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        fm @ np.ones((9, 2))
    with pytest.raises(ShapeError, match="out of range"):
        fm[2]
    with pytest.raises(ShapeError, match="out of range"):
        fm[0, 0, 10]
    with pytest.raises(ShapeError, match="square"):
        _ = FactoredMatrix(np.ones((5, 3)), np.ones((3, 4))).BA
