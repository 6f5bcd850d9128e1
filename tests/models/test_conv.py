"""The conv net: hooks, interventions, bad inputs, and training on a real offline image set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError, HookNameError, ShapeError
from jaxinterp.models.conv import ConvConfig, init_conv

CFG = ConvConfig(image_size=16, channels=(4, 6), kernel_sizes=(3, 3), pool=(True, False), n_classes=3)


@pytest.fixture(scope="module")
def model():
    return init_conv(CFG, jax.random.key(0))


def test_cache_matches_a_numpy_convolution(model):
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
    logits, cache = ji.run_with_cache(model, x, names=["blocks.0.hook_pre", "blocks.1.hook_post", "hook_pooled"])
    assert list(cache) == ["blocks.0.hook_pre", "blocks.1.hook_post", "hook_pooled"]
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    w = np.asarray(model.W[0])
    want = np.zeros((2, 16, 16, 4))
    for dy in range(3):
        for dx in range(3):
            want += np.einsum("byxi,io->byxo", xp[:, dy:dy + 16, dx:dx + 16], w[dy, dx])
    np.testing.assert_allclose(np.asarray(cache["blocks.0.hook_pre"]), want + np.asarray(model.b[0]), atol=1e-5)
    pooled = np.asarray(cache["blocks.1.hook_post"]).mean((1, 2))
    np.testing.assert_allclose(np.asarray(cache["hook_pooled"]), pooled, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits), pooled @ np.asarray(model.W_out) + np.asarray(model.b_out), atol=1e-5)


def test_interventions_work_on_the_conv_net(model):
    x = jax.random.uniform(jax.random.key(2), (3, 16, 16, 1))
    ablated = ji.run_with_hooks(model, x, interventions=[ji.patch("blocks.1.hook_post", 0.0)])
    np.testing.assert_allclose(np.asarray(ablated), np.broadcast_to(np.asarray(model.b_out), (3, 3)), atol=1e-6)
    # a vmapped sweep over channels of block 0: one program, each differs from the clean run
    def knock(c):
        return ji.run_with_hooks(model, x, interventions=[
            ji.edit("blocks.0.hook_post", lambda a, c: a * (jnp.arange(4) != c), c)])
    sweep = jax.jit(jax.vmap(knock))(jnp.arange(4))
    assert sweep.shape == (4, 3, 3) and float(jnp.abs(sweep - model(x)).max()) > 0
    with pytest.raises(HookNameError, match="blocks.0.hook_post"):
        ji.run_with_cache(model, x, names="blocks.0.hook_psot")


def test_bad_images_and_configs(model):
    with pytest.raises(ShapeError, match="16x16"):
        model(jnp.zeros((1, 15, 15, 1)))
    with pytest.raises(ShapeError, match="channel"):
        model(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ShapeError, match="NHWC"):
        model(jnp.zeros((16, 16, 1)))
    with pytest.raises(ConfigError, match="divisible"):
        ConvConfig(image_size=18, pool=(True, True, True))


def test_training_on_sklearn_digits():
    pytest.importorskip("sklearn")
    from jaxinterp.recipes.conv_net import image_data, train_conv

    data = image_data("digits", 0, 300, size=8)
    cfg = ConvConfig(image_size=8, channels=(16, 32), kernel_sizes=(3, 3), pool=(True, False), n_classes=10)
    model, stats = train_conv(data, cfg, steps=100, batch_size=64, lr=1e-2, progress=False)
    assert stats["test_accuracy"] > 0.6, stats  # chance is 0.1
