"""Toy models of superposition: forward passes, data, loss, analyses and bad inputs.

Training (top-m features when dense, superposition when sparse, the pentagon, sharding,
double descent) is in ``test_toy_train.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.models import toy

sample = jax.jit(toy.sample_features, static_argnums=(2, 3), static_argnames="signed")


def _model(variant, n=6, m=3, seed=0):
    return toy.init_toy(toy.ToyConfig(n, m, variant), jax.random.key(seed))


@pytest.mark.parametrize("variant", ["linear", "relu", "hidden_relu", "abs"])
def test_forward_matches_the_formula(variant):
    model = _model(variant)
    model = jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a, model)  # non-zero biases
    x = np.asarray(jax.random.uniform(jax.random.key(1), (6,)), np.float64)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    if variant == "abs":
        W_in, b_in, W_out, b_out = (np.asarray(a, np.float64) for a in
                                    (model.W_in, model.b_in, model.W_out, model.b_out))
        want = relu(relu(x @ W_in + b_in) @ W_out + b_out)
    else:
        W, b = np.asarray(model.W, np.float64), np.asarray(model.b_final, np.float64)
        h = x @ W if variant != "hidden_relu" else relu(x @ W)
        want = h @ W.T + b if variant == "linear" else relu(h @ W.T + b)
    np.testing.assert_allclose(jax.jit(lambda m, v: m(v))(model, jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-6)


def test_hidden_is_a_hook_point():
    model = _model("relu")
    x = jnp.linspace(0, 1, 6)
    out, cache = ji.run_with_cache(model, x, names=["hook_hidden"])
    np.testing.assert_allclose(cache["hook_hidden"], x @ model.W, rtol=1e-6)
    np.testing.assert_allclose(out, model(x), rtol=1e-6)


@jax.jit
def _four_samples(key):
    k = jax.random.split(key, 4)
    return (toy.sample_features(k[0], 0.2, 10_000, 8), toy.sample_features_two_draws(k[1], 0.2, 10_000, 8),
            toy.sample_features(k[2], 0.2, 10_000, 8, signed=True),
            toy.sample_features_two_draws(k[3], 0.2, 10_000, 8, signed=True))


def test_sparse_features_have_the_stated_distribution():
    p = 0.2
    one, two, one_signed, two_signed = map(np.asarray, _four_samples(jax.random.key(0)))
    for x, ref, lo in ((one, two, 0), (one_signed, two_signed, -1)):
        present = x != 0
        assert abs(present.mean() - p) < 0.01
        v = x[present]
        assert v.min() >= lo and v.max() <= 1
        assert abs(v.mean() - (lo + 1) / 2) < 0.02  # uniform on [lo, 1]
        assert abs(v.var() - (1 - lo) ** 2 / 12) < 0.02
        assert abs(np.corrcoef(present[:, 0], present[:, 1])[0, 1]) < 0.04  # independent
        # The one-draw sampler matches the textbook two-draw one in distribution.
        assert abs((ref != 0).mean() - present.mean()) < 0.01
        qs = [0.1, 0.5, 0.9]
        np.testing.assert_allclose(np.quantile(v, qs), np.quantile(ref[ref != 0], qs), atol=0.04)


def test_sparse_features_edge_probabilities():
    key = jax.random.key(3)
    assert not np.asarray(sample(key, 0.0, 512, 8)).any()
    dense = np.asarray(sample(key, 1.0, 512, 8))
    assert (dense > 0).mean() > 0.999 and dense.max() <= 1
    rare = np.asarray(sample(key, 1e-4, 200_000, 5))
    assert 40 < (rare != 0).sum() < 170 and len(np.unique(rare[rare != 0])) == (rare != 0).sum()


def test_importance_weighted_mse():
    rng = np.random.default_rng(0)
    pred, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    imp, w = rng.uniform(size=4), np.array([1, 1, 1, 0, 1, 0, 1.0])
    got = toy.importance_weighted_mse(jnp.asarray(pred), jnp.asarray(y), jnp.asarray(imp))
    np.testing.assert_allclose(got, np.mean(imp * (y - pred) ** 2), rtol=1e-6)
    got_w = toy.importance_weighted_mse(jnp.asarray(pred), jnp.asarray(y), jnp.asarray(imp), jnp.asarray(w))
    np.testing.assert_allclose(got_w, np.mean((imp * (y - pred) ** 2)[w > 0]), rtol=1e-6)


@pytest.mark.parametrize("variant", ["linear", "relu", "hidden_relu", "abs"])
def test_closed_form_gradient_equals_autodiff(variant):
    """The trainer's hand-written gradient (feature-major batch) against jax.grad of the loss."""
    cfg = toy.ToyConfig(7, 3, variant)
    model = jax.tree.map(lambda a: a + 0.05, toy.init_toy(cfg, jax.random.key(0)))  # live ReLUs
    x = sample(jax.random.key(1), 0.5, 64, 7, signed=cfg.signed_inputs)
    imp = jnp.asarray(toy.geometric_importance(7, 0.8))
    for w in (None, (jnp.arange(64) < 40).astype(jnp.float32)):
        loss, grads = jax.jit(lambda m, x, w: toy.loss_and_grad(cfg, m, x.T, imp, w))(model, x, w)
        ref = jax.jit(jax.value_and_grad(
            lambda m, x, w: toy.importance_weighted_mse(jax.vmap(m)(x), toy.target(cfg, x), imp, w)))
        ref_loss, ref_grads = ref(model, x, w)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            assert np.abs(np.asarray(r)).max() > 1e-4  # a gradient that could be wrong
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)
    # The trainer's logged loss on fresh batches: the first 16 examples (the untied abs
    # model: autodiff, all of them); the gradient: all 64.
    sub_loss, sub_grads = jax.jit(lambda m, x: toy.loss_and_grad(cfg, m, x.T, imp, None, 16))(model, x)
    ref_loss, ref_grads = ref(model, x[:16] if variant != "abs" else x, None)[0], ref(model, x, None)[1]
    np.testing.assert_allclose(sub_loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(sub_grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)


def _threefry_reference(key, x0, x1, rounds):
    """Threefry-2x32-R of one counter pair in plain Python ints (Random123's definition)."""
    rot = ((13, 15, 26, 6), (17, 29, 16, 24))
    mask = 2**32 - 1
    ks = (key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA)
    x0, x1 = (x0 + ks[0]) & mask, (x1 + ks[1]) & mask
    for j in range(rounds):
        r = rot[(j // 4) % 2][j % 4]
        x0 = (x0 + x1) & mask
        x1 = (((x1 << r) | (x1 >> (32 - r))) & mask) ^ x0
        if j % 4 == 3:
            i = j // 4
            x0 = (x0 + ks[(i + 1) % 3]) & mask
            x1 = (x1 + ks[(i + 2) % 3] + i + 1) & mask
    return x0


def test_cipher_words_are_threefry_with_the_step_as_stream():
    from jax.extend.random import threefry_2x32

    key = jnp.asarray([7, 123456789], jnp.uint32)
    words = jax.jit(toy.cipher_words, static_argnums=(1, 3))
    ref = threefry_2x32(key, jnp.concatenate([jnp.arange(15, dtype=jnp.uint32), jnp.full(15, 9, jnp.uint32)]))
    np.testing.assert_array_equal(np.asarray(words(key, (3, 5), jnp.int32(9), 20)).ravel(), np.asarray(ref[:15]))
    # The sampler's default: Threefry-2x32-13, against a plain-Python reference.
    got = np.asarray(words(key, (3, 5), jnp.int32(9), toy.data.ROUNDS)).ravel()
    assert toy.data.ROUNDS == 13
    assert got.tolist() == [_threefry_reference((7, 123456789), i, 9, 13) for i in range(15)]
    src = toy.OnlineFeatures(jnp.float32(0.3), 4096, 6)
    draw = jax.jit(lambda k, t: src.sample_t(k, t)[0])
    a, b = (np.asarray(draw(key, jnp.int32(t))) for t in (0, 1))
    assert a.shape == (6, 4096) and abs((a != 0).mean() - 0.3) < 0.01
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02  # steps draw fresh batches


@pytest.mark.parametrize("p", [0.5, 0.03])
def test_trainer_sampler_passes_statistical_tests(p):
    """The trainer's batches (Threefry-2x32-13, one word per entry) have the paper's
    distribution: presence ~ Bernoulli(p), independently across features, examples, steps
    and instances, and value | present ~ U[0, 1]. Every bound is about 5 standard errors
    of a correct sampler (fixed keys, so the test is deterministic)."""
    n_feat, batch, n_inst, steps = 16, 4096, 8, 4
    src = toy.OnlineFeatures(jnp.float32(p), batch, n_feat)
    keys = jax.random.bits(jax.random.key(5), (n_inst, 2), jnp.uint32)
    draw = jax.jit(jax.vmap(lambda k, t: src.sample_t(k, t)[0], in_axes=(0, None)))
    x = np.stack([np.asarray(draw(keys, jnp.int32(t))) for t in range(steps)])  # [t, i, f, b]
    present = x != 0
    n = present.size
    z = (present.sum() - n * p) / np.sqrt(n * p * (1 - p))
    assert abs(z) < 5, f"presence rate {present.mean():.5f} vs p={p} (z={z:.1f})"
    per_feature = present.mean(axis=(0, 1, 3))  # each feature separately
    assert np.all(np.abs(per_feature - p) < 5 * np.sqrt(p * (1 - p) / (n / n_feat)))
    # Value given presence: Kolmogorov-Smirnov and chi-square (50 bins) against U[0, 1].
    v = np.sort(x[present].astype(np.float64))
    k = v.size
    ks = max(np.max(np.arange(1, k + 1) / k - v), np.max(v - np.arange(k) / k))
    assert np.sqrt(k) * ks < 1.95, f"KS statistic {np.sqrt(k) * ks:.2f} (1.95 is the 0.1% level)"
    counts = np.histogram(v, bins=50, range=(0, 1))[0]
    chi2 = np.sum((counts - k / 50) ** 2 / (k / 50))
    assert chi2 < 49 + 5 * np.sqrt(2 * 49), f"chi-square {chi2:.0f} with 49 degrees of freedom"
    # Independence: neighbouring features, examples (adjacent counters), steps, instances.
    tol = 5 / np.sqrt(n / 2)
    for a, b in ((present[:, :, :-1], present[:, :, 1:]), (present[..., :-1], present[..., 1:]),
                 (present[:-1], present[1:]), (present[:, :-1], present[:, 1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < tol


def test_cipher_words_pass_a_serial_test():
    """Consecutive raw words (counters i, i+1) are jointly uniform: chi-square of their top
    4 bits over 16 x 16 cells (255 degrees of freedom, bound about 5 standard deviations)."""
    words = np.asarray(jax.jit(toy.cipher_words, static_argnums=1)(
        jnp.asarray([3, 99], jnp.uint32), (2**20,), jnp.int32(1)))
    for lag in (1, 2, 4096):
        cells = (words[:-lag] >> 28) * 16 + (words[lag:] >> 28)
        counts = np.bincount(cells.astype(np.int64), minlength=256)
        expected = cells.size / 256
        chi2 = np.sum((counts - expected) ** 2 / expected)
        assert chi2 < 255 + 5 * np.sqrt(2 * 255), f"lag {lag}: chi-square {chi2:.0f}"
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 32).mean(0)  # each bit fair
    assert np.all(np.abs(bits - 0.5) < 5 * 0.5 / np.sqrt(words.size))


def _polygon(k, radius=1.0, phase=0.3):
    a = phase + 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], 1)


def _tegum(*blocks, extra_zero_features=0):
    """Block-diagonal feature vectors: each block in its own orthogonal subspace."""
    dims = sum(b.shape[1] for b in blocks)
    rows, col = [], 0
    for b in blocks:
        r = np.zeros((b.shape[0], dims))
        r[:, col: col + b.shape[1]] = b
        rows.append(r)
        col += b.shape[1]
    rows.append(np.zeros((extra_zero_features, dims)))
    return np.concatenate(rows)


def test_geometry_is_found_from_the_vectors():
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    W = _tegum(_polygon(5), _polygon(3), np.array([[1.0], [-1.0]]), tetra, np.array([[1.0]]),
               extra_zero_features=4) @ rotation  # the geometry must not depend on the basis
    W = W + 0.01 * rng.normal(size=W.shape)
    W[-4:] *= 0.1  # not represented
    groups = toy.feature_geometry(W)
    assert [g.name for g in groups] == ["pentagon", "tetrahedron", "triangle", "antipodal pair",
                                        "dedicated dimension"]
    assert [g.features for g in groups][:2] == [(0, 1, 2, 3, 4), (10, 11, 12, 13)]
    assert all(g.regular for g in groups)
    D = np.asarray(toy.feature_dimensionality(W))
    np.testing.assert_allclose(D[:15], [0.4] * 5 + [2 / 3] * 3 + [0.5] * 2 + [0.75] * 4 + [1.0], atol=0.03)
    assert (D[-4:] < 0.05).all()
    sup = np.asarray(toy.superposition(W))
    assert sup[14] < 0.01 and sup[8] > 0.95  # dedicated vs antipodal
    np.testing.assert_allclose(toy.dimensions_per_feature(W), 9 / 15, rtol=0.02)
    assert int(toy.n_represented(W)) == 15


def test_irregular_and_unknown_groups_are_reported_as_such():
    squashed = _polygon(5) * np.array([1.0, 0.6])  # five features in 2-D, not regular
    (g,) = toy.feature_geometry(squashed)
    assert g.name == "pentagon" and not g.regular and g.deviation > 0.1
    (g,) = toy.feature_geometry(_polygon(7))
    assert g.name == "7 features in 2 dimensions" and g.regular and g.dimensionality == 2 / 7


def test_neighbour_angles_and_batched_analyses():
    W = _polygon(5)[[3, 0, 4, 1, 2]]
    order, gaps = toy.neighbour_angles(W)
    np.testing.assert_allclose(gaps, 72.0, atol=1e-6)
    assert sorted(order.tolist()) == list(range(5))
    stacked = np.stack([W, 2 * W])  # analyses broadcast over a leading instance axis
    np.testing.assert_allclose(toy.feature_norms(stacked), [[1] * 5, [2] * 5], rtol=1e-6)
    np.testing.assert_allclose(toy.dimensions_per_feature(stacked), [0.4, 0.1], rtol=1e-6)


@pytest.mark.parametrize("bad, error", [
    (lambda: toy.ToyConfig(0, 5), ConfigError),
    (lambda: toy.ToyConfig(5, -2), ConfigError),
    (lambda: toy.ToyConfig(5, 2.5), ConfigError),
    (lambda: toy.ToyConfig(5, 2, "tanh"), ConfigError),
    (lambda: toy.check_probabilities([0.5, 1.5]), ConfigError),
    (lambda: toy.check_probabilities([-0.1]), ConfigError),
    (lambda: toy.check_probabilities([float("nan")]), ConfigError),
    (lambda: toy.check_importance(np.ones(4), 5), ShapeError),
    (lambda: toy.check_importance([1, float("nan"), 1], 3), ConfigError),
    (lambda: toy.geometric_importance(5, float("nan")), ConfigError),
    (lambda: toy.ToyTrainConfig(lr=float("nan")), ConfigError),
    (lambda: toy.ToyTrainConfig(lr=0.0), ConfigError),
    (lambda: toy.ToyTrainConfig(weight_decay=float("inf")), ConfigError),
    (lambda: toy.ToyTrainConfig(steps=0), ConfigError),
    (lambda: toy.ToyTrainConfig(batch_size=-1), ConfigError),
    (lambda: toy.ToyTrainConfig(warmup_steps=20, steps=10), ConfigError),
    (lambda: toy.ToyTrainConfig(prng_impl="mt19937"), ConfigError),
    (lambda: toy.train_toys(toy.ToyConfig(5, 2), [0.1, 2.0], np.ones(5)), ConfigError),
    (lambda: toy.train_toys(toy.ToyConfig(5, 2), [0.1, 0.2], np.ones(4)), ShapeError),
    (lambda: toy.train_toys(toy.ToyConfig(5, 2), [0.1, 0.2], np.ones((3, 5))), ShapeError),
    (lambda: toy.feature_geometry(np.ones((2, 5, 2))), ShapeError),
    (lambda: toy.neighbour_angles(np.ones((5, 3))), ShapeError),
])
def test_bad_inputs_raise_clear_errors(bad, error):
    with pytest.raises(error) as info:
        bad()
    assert len(str(info.value)) > 20  # says what was wrong and what was expected
