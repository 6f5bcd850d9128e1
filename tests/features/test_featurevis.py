"""Feature visualisation: known optima, the vmapped program against the loop, parameterisations,
objectives (SAE features), and the errors for bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.features import (
    NO_TRANSFORMS,
    Transforms,
    channel,
    custom,
    direction,
    neuron,
    sae_feature,
    visualize,
)
from jaxinterp.features.objectives import check_objective
from jaxinterp.features.param import Fourier, _irfft2
from jaxinterp.features.robustness import bilinear, diversity
from jaxinterp.models.conv import ConvConfig, init_conv


@pytest.fixture(scope="module")
def linear_units():
    """Block-0 units with known kernels: the optimal [0, 1] input of unit j's centre neuron
    is 1 where its kernel is positive and 0 where negative; its value is the sum of the
    positive weights."""
    cfg = ConvConfig(image_size=16, channels=(3,), kernel_sizes=(5,), pool=(False,), n_classes=2)
    k = np.zeros((5, 5, 1, 3), np.float32)
    k[:, :2, 0, 0], k[:, 3:, 0, 0] = 1.0, -1.0  # a vertical edge
    k[:2, :, 0, 1], k[3:, :, 0, 1] = -0.5, 0.5  # a horizontal edge, other polarity
    k[2, 2, 0, 2] = 1.0
    k[..., 2] -= 0.04  # centre-surround
    model = eqx.tree_at(lambda m: m.W, init_conv(cfg, jax.random.key(0)), (jnp.asarray(k),))
    optimum = np.clip(k[:, :, 0], 0, None).sum((0, 1))
    return model, k[:, :, 0], optimum


def test_optimiser_finds_the_known_optimal_input(linear_units):
    model, k, optimum = linear_units
    obj = neuron("blocks.0.hook_pre", [0, 1, 2], (8, 8))
    vis = visualize(model, obj, param="pixel", transforms=NO_TRANSFORMS, steps=100, lr=0.5)
    reached = np.asarray(vis.activation.values)[:, 0]
    np.testing.assert_allclose(reached, optimum, rtol=0.02)
    patch = vis.images[:, 0, 6:11, 6:11, 0]  # the receptive field
    for j in range(3):
        assert np.all(patch[j][k[..., j] > 0] > 0.95) and np.all(patch[j][k[..., j] < 0] < 0.05)
    # the loop of single optimisations gives the same images (same keys, same program per target)
    looped = visualize(model, obj, param="pixel", transforms=NO_TRANSFORMS, steps=100, lr=0.5, vectorize=False)
    np.testing.assert_allclose(looped.images, vis.images, atol=1e-4)
    # the decorrelated Fourier parameterisation with transformation robustness gets close too
    fourier = visualize(model, neuron("blocks.0.hook_pre", [0], (8, 8)), steps=100, lr=0.1,
                        transforms=Transforms(1.0, (0.95, 1.05), 5.0))
    assert float(fourier.activation.values[0, 0]) > 0.8 * optimum[0]
    assert float(fourier.history.values[0, -1]) > float(fourier.history.values[0, 0]) + 0.5 * optimum[0]


def test_objectives_agree_and_sae_features_use_their_threshold():
    act = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
    by_index = check_objective(channel("h", [1, 3]), act.shape)
    by_dir = check_objective(direction("h", np.eye(5)[[1, 3]]), act.shape)
    W = np.asarray(jax.random.normal(jax.random.key(1), (5,)))
    feat = check_objective(sae_feature("h", W, 0.2, threshold=0.5, b_dec=np.full(5, 0.1), position=(1, 2)), act.shape)

    @jax.jit
    def values(act):  # every objective on every target, one compiled program
        one = jax.vmap(lambda o: o.value(act))
        return one(by_index), one(by_dir), one(feat), jax.vmap(lambda o: o.surrogate(act))(feat)

    idx, dirs, sae, sae_pre = (np.asarray(v) for v in values(act))
    np.testing.assert_allclose(idx, np.asarray(act)[..., [1, 3]].mean((1, 2)).T, rtol=1e-5)
    np.testing.assert_allclose(idx, dirs, rtol=1e-5)
    z = (np.asarray(act)[:, 1, 2] - 0.1) @ W + 0.2
    np.testing.assert_allclose(sae[0], z * (z > 0.5), rtol=1e-5)
    np.testing.assert_allclose(sae_pre[0], z, rtol=1e-5)  # the optimiser climbs the pre-activation
    neg = check_objective(neuron("h", -1, (-1, -1)), act.shape)  # negative means Python's negative
    assert int(neg.index[0]) == 4 and tuple(np.asarray(neg.position[0])) == (3, 3)


def test_bad_input_raises_clear_errors(linear_units):
    model, _, _ = linear_units
    with pytest.raises(ShapeError, match="unit index 3 is out of range.*3 units"):
        visualize(model, channel("blocks.0.hook_post", [0, 3]), steps=2)
    with pytest.raises(ShapeError, match="position .* out of range"):
        visualize(model, neuron("blocks.0.hook_post", 0, (16, 0)), steps=2)
    with pytest.raises(ShapeError, match="16x16"):
        visualize(model, channel("blocks.0.hook_post", 0), image_shape=(30, 30, 1), steps=2)
    with pytest.raises(ConfigError, match="zero gradient"):
        visualize(model, custom("blocks.0.hook_post", lambda a: jnp.round(a.mean((1, 2, 3)))), steps=2)
    with pytest.raises(ConfigError, match="not differentiable"):
        visualize(model, custom("blocks.0.hook_post", lambda a: jnp.argmax(a.reshape(a.shape[0], -1), -1)), steps=2)
    with pytest.raises(ConfigError, match="unknown parameterisation"):
        visualize(model, channel("blocks.0.hook_post", 0), param="wavelet", steps=2)


def test_fourier_basis_transforms_and_diversity():
    rng = np.random.default_rng(0)
    re, im = rng.normal(size=(2, 1, 8, 5)).astype(np.float32), rng.normal(size=(2, 1, 8, 5)).astype(np.float32)
    img = rng.uniform(size=(6, 6, 2)).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(6.0), np.arange(6.0) - 1.0, indexing="ij")  # shift right by one
    apart = np.stack([np.eye(2)[0][None].repeat(4, 0), np.eye(2)[1][None].repeat(4, 0)])

    @jax.jit
    def run():
        fourier = Fourier().image(Fourier().init(jax.random.key(0), (1, 8, 8, 3)))
        return (_irfft2(re, im, 8, 8), fourier, bilinear(img, yy, xx), diversity(jnp.ones((3, 4, 2))),
                diversity(apart), NO_TRANSFORMS(jax.random.key(0), img[None]))

    basis, image, shifted, same, different, untouched = (np.asarray(x) for x in run())
    np.testing.assert_allclose(basis, np.fft.irfft2(re + 1j * im, s=(8, 8), norm="ortho"), atol=1e-5)
    assert image.shape == (1, 8, 8, 3) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(shifted[:, 1:], img[:, :-1], atol=1e-6)
    np.testing.assert_allclose(shifted[:, 0], img[:, 0], atol=1e-6)  # the border replicates
    np.testing.assert_array_equal(untouched[0], img)
    assert same == pytest.approx(1.0, abs=1e-5) and different == pytest.approx(0.0, abs=1e-6)
