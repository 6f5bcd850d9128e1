"""Synthetic generators: shapes, the repeat property, and feature statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.data import feature_importance, repeated_tokens, sparse_features
from jaxinterp.errors import ConfigError


@pytest.fixture(autouse=True)
def _strict_numpy():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


def test_repeated_tokens_repeat_and_shapes():
    key = jax.random.key(0)
    tokens = np.asarray(repeated_tokens(key, batch=16, seq_len=20, d_vocab=50))
    assert tokens.shape == (16, 40) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, :20], tokens[:, 20:])
    assert tokens.min() >= 0 and tokens.max() < 50
    np.testing.assert_array_equal(tokens, repeated_tokens(key, 16, 20, 50))  # same key
    assert not np.array_equal(tokens, repeated_tokens(jax.random.key(1), 16, 20, 50))


def test_repeated_tokens_with_bos_never_samples_it():
    tokens = np.asarray(repeated_tokens(jax.random.key(0), batch=64, seq_len=30, d_vocab=5, bos=2))
    assert tokens.shape == (64, 61)
    assert np.all(tokens[:, 0] == 2) and not np.any(tokens[:, 1:] == 2)
    np.testing.assert_array_equal(tokens[:, 1:31], tokens[:, 31:])
    assert set(np.unique(tokens[:, 1:]).tolist()) == {0, 1, 3, 4}
    outside = repeated_tokens(jax.random.key(0), 2, 3, 5, bos=5)  # a BOS beyond d_vocab
    assert outside.shape == (2, 7) and int(outside[:, 1:].max()) < 5


def test_sparse_features_statistics():
    x = np.asarray(
        sparse_features(jax.random.key(0), batch=20_000, n_features=8, feature_probability=0.1)
    )
    assert x.shape == (20_000, 8) and x.dtype == np.float32
    present = x > 0
    assert abs(present.mean() - 0.1) < 0.01
    assert x.min() == 0.0 and x.max() <= 1.0
    assert abs(x[present].mean() - 0.5) < 0.02  # U[0, 1] where present


def test_sparse_features_per_instance_probability():
    p = jnp.array([1.0, 0.5, 0.05])
    x = np.asarray(sparse_features(jax.random.key(1), 10_000, 6, p, n_instances=3))
    assert x.shape == (10_000, 3, 6)
    np.testing.assert_allclose((x > 0).mean(axis=(0, 2)), p, atol=0.015)
    per_feature = jnp.linspace(0.0, 1.0, 6)[None, :]  # [1, n_features]
    y = np.asarray(sparse_features(jax.random.key(2), 10_000, 6, per_feature, n_instances=3))
    np.testing.assert_allclose((y > 0).mean(axis=(0, 1)), per_feature[0], atol=0.015)


def test_sparse_features_under_jit():
    f = jax.jit(sparse_features, static_argnames=("batch", "n_features", "n_instances"))
    x = f(
        jax.random.key(0),
        batch=4,
        n_features=5,
        feature_probability=jnp.float32(0.3),
        n_instances=2,
    )
    assert x.shape == (4, 2, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_probability": 1.5}, r"must lie in \[0, 1\]"),
        ({"feature_probability": jnp.ones(4)}, "does not fit"),
        ({"feature_probability": jnp.ones(3), "n_instances": 3}, "ambiguous"),
        ({"feature_probability": 0.5, "n_features": 0}, "n_features must be a positive int"),
    ],
)
def test_sparse_features_errors(kwargs, match):
    args = {"batch": 2, "n_features": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        sparse_features(jax.random.key(0), **args)


def test_repeated_tokens_errors_and_importance():
    with pytest.raises(ConfigError, match="seq_len must be a positive int"):
        repeated_tokens(jax.random.key(0), 2, 0, 10)
    with pytest.raises(ConfigError, match="d_vocab must be at least 2"):
        repeated_tokens(jax.random.key(0), 2, 3, 1, bos=0)
    np.testing.assert_allclose(feature_importance(3, 0.5), [1.0, 0.5, 0.25])
