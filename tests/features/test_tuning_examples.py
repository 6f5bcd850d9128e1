"""Tuning curves measure selectivity (no labels involved), dataset examples equal brute force,
the conv weight grid reads the kernels, and the text optimisers improve on their start."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ShapeError
from jaxinterp.features import (
    channel_weights,
    curvature_tuning,
    curve_index,
    dataset_examples,
    neuron,
    orientation_tuning,
    selectivity,
    visualize_text,
)
from jaxinterp.models.conv import ConvConfig, init_conv


@pytest.fixture(scope="module")
def oriented():
    """Block 0: a vertical-bar detector, a horizontal-bar detector and an isotropic blob;
    block 1 sums the vertical detector's rectified output over a 3x3 patch."""
    cfg = ConvConfig(image_size=16, channels=(3, 2), kernel_sizes=(5, 3), pool=(False, False), n_classes=2)
    k = np.full((5, 5, 1, 3), -0.2, np.float32)
    k[:, 2, 0, 0] = 0.8
    k[2, :, 0, 1] = 0.8
    k[..., 2] = 0.1
    k1 = np.zeros((3, 3, 3, 2), np.float32)
    k1[:, :, 0, 0] = 1.0
    k1[:, :, 1, 1] = -1.0
    model = init_conv(cfg, jax.random.key(0))
    return eqx.tree_at(lambda m: m.W, model, (jnp.asarray(k), jnp.asarray(k1)))


def test_orientation_selectivity_is_measured(oriented):
    curve = orientation_tuning(oriented, "blocks.0.hook_post", "line", n_angles=8)
    assert curve.axes == ("unit", "angle") and curve.shape == (3, 8)
    s = selectivity(curve)
    # a "line" at theta runs along (cos, sin): the vertical bar detector prefers 90 degrees
    assert abs(np.degrees(s["preferred"][0]) - 90) < 5 and abs(np.degrees(s["preferred"][1]) % 180) < 5
    assert s["selectivity"][0] > 0.5 and s["selectivity"][1] > 0.5 and s["selectivity"][2] < 0.1
    assert s["osi"][0] > 0.8 and s["osi"][2] < 0.1
    tuning = curvature_tuning(oriented, "blocks.0.hook_post", (0.0, 0.15), n_angles=8)
    c = curve_index(tuning)  # a straight-bar detector prefers straight segments to arcs
    assert c["curve_index"][0] < 0 and tuning.shape == (3, 2, 8)


def test_dataset_examples_equal_brute_force(oriented):
    images = np.asarray(jax.random.uniform(jax.random.key(3), (37, 16, 16, 1)))
    obj = neuron("blocks.0.hook_post", [0, 1, 2], (8, 8))
    ex = dataset_examples(oriented, obj, images, k=3, batch_size=16)
    _, cache = ji.run_with_cache(oriented, jnp.asarray(images), names="blocks.0.hook_post")
    act = np.asarray(cache["blocks.0.hook_post"])
    want = np.argsort(-act[:, 8, 8], axis=0, kind="stable")[:3].T
    np.testing.assert_array_equal(ex.items, want)
    every = dataset_examples(oriented, obj, images, k=2, batch_size=16, per_position=True)
    flat = act.reshape(37, -1, 3)
    best = flat.reshape(-1, 3).argmax(0)
    np.testing.assert_array_equal(every.items[:, 0], best // 256)
    np.testing.assert_array_equal(every.positions[:, 0], np.stack(np.unravel_index(best % 256, (16, 16)), -1))
    np.testing.assert_allclose(every.top, flat.reshape(-1, 3).max(0), rtol=1e-6)


def test_weight_grid_reads_the_kernels(oriented):
    grid = channel_weights(oriented, 1, src=[0, 1], dst=[0])
    assert grid.axes == ("dst", "src", "y", "x") and grid.labels["src"] == ["0.0", "0.1"]
    np.testing.assert_array_equal(np.asarray(grid.values[0, 0]), np.ones((3, 3)))
    np.testing.assert_array_equal(np.asarray(grid.values[0, 1]), np.zeros((3, 3)))
    with pytest.raises(ShapeError, match="out of range"):
        channel_weights(oriented, 1, src=[3])
    with pytest.raises(ShapeError, match="no previous block"):
        channel_weights(oriented, 0)


def test_text_soft_prompt_and_token_search():
    cfg = ji.gpt2_config(d_model=32, n_layers=1, n_heads=4, d_vocab=64, n_ctx=16)
    model = ji.init_transformer(cfg, jax.random.key(0))
    obj = neuron("blocks.0.mlp.hook_pre", [0, 5], -1)
    vis = visualize_text(model, obj, seq_len=4, steps=40, lr=0.1, search_steps=8, n_candidates=32, top_k=8)
    found = np.asarray(vis.activation.values)
    assert np.all(found >= vis.projected_activation - 1e-5)  # the search only accepts improvements
    assert np.all(np.diff(vis.history_search, axis=1) >= -1e-6)
    _, cache = ji.run_with_cache(model, jnp.asarray(vis.tokens), names="blocks.0.mlp.hook_pre")
    np.testing.assert_allclose(np.asarray(cache["blocks.0.mlp.hook_pre"])[[0, 1], -1, [0, 5]], found, rtol=1e-4)
    random = np.random.default_rng(0).integers(0, 64, (256, 4))
    ex = dataset_examples(model, neuron("blocks.0.mlp.hook_pre", [0, 5], -1), random, k=1, batch_size=256)
    assert np.all(found > ex.top)  # beats the best of 256 random sequences
    assert np.all(vis.soft_activation > ex.top)
    with pytest.raises(ShapeError, match="out of range"):
        visualize_text(model, neuron("blocks.0.mlp.hook_pre", [cfg.d_mlp], -1), seq_len=4)
