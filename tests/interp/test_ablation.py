"""Ablations replace exactly what they say, with zero, mean or resampled values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _interp_helpers import tiny

from jaxinterp.errors import HookNameError, IndexRangeError, ShapeError
from jaxinterp.hooks import edit, run_with_cache, run_with_hooks
from jaxinterp.interp import (
    ablate_direction,
    ablate_heads,
    ablate_layers,
    ablate_neurons,
    knockout_edges,
)


def captured(model, tokens, ivs, name):
    _, cache = run_with_hooks(model, tokens, interventions=ivs, names=name)
    return cache[name]


def test_head_ablations(prompts):
    clean, corrupted, _, _ = prompts
    model = tiny("gpt2")
    name = "blocks.1.attn.hook_z"
    z = captured(model, clean, ablate_heads(model, [(1, 2)]), name)
    _, ref = run_with_cache(model, corrupted, names=name)
    assert np.all(np.asarray(z[:, :, 2]) == 0) and np.any(np.asarray(z[:, :, 1]) != 0)
    z = captured(model, clean, ablate_heads(model, [(1, 2)], method="mean", reference=corrupted), name)
    np.testing.assert_allclose(z[:, :, 2], jnp.broadcast_to(ref[name][:, :, 2].mean(0), z[:, :, 2].shape), atol=1e-6)
    z = captured(model, clean, ablate_heads(model, [(1, 2)], method="mean", reference=corrupted,
                                            per_position=False), name)
    np.testing.assert_allclose(z[0, 0, 2], ref[name][:, :, 2].mean((0, 1)), atol=1e-6)
    z = captured(model, clean, ablate_heads(model, [(1, 2)], method="resample", reference=corrupted,
                                            key=jax.random.key(3)), name)
    for b in range(z.shape[0]):  # each example took some reference example's activation
        assert any(np.allclose(z[b, :, 2], ref[name][r, :, 2], atol=1e-6) for r in range(3))
    logits = run_with_hooks(model, clean, interventions=ablate_heads(model, [(0, 0), (2, 3)]))
    assert not np.allclose(logits, model(clean))


def test_neuron_layer_and_direction_ablations(prompts):
    clean, corrupted, _, _ = prompts
    model = tiny("gpt2")
    post = captured(model, clean, ablate_neurons(model, [(0, 5), (0, 9), (2, 1)]), "blocks.0.mlp.hook_post")
    assert np.all(np.asarray(post[..., [5, 9]]) == 0) and np.any(np.asarray(post[..., 4]) != 0)
    out = captured(model, clean, ablate_layers(model, [1], component="mlp"), "blocks.1.hook_mlp_out")
    assert np.all(np.asarray(out) == 0)
    u = jax.random.normal(jax.random.key(4), (32,))
    name = "blocks.1.hook_resid_post"
    x = captured(model, clean, [ablate_direction(model, name, u)], name)
    _, base = run_with_cache(model, clean, names=name)
    unit = u / jnp.linalg.norm(u)
    np.testing.assert_allclose(x @ unit, 0.0, atol=1e-5)  # the component along u is gone
    rest = base[name] - (base[name] @ unit)[..., None] * unit
    np.testing.assert_allclose(x, rest, atol=1e-5)  # and nothing else moved
    x = captured(model, clean, [ablate_direction(model, name, u, method="mean", reference=corrupted)], name)
    _, ref = run_with_cache(model, corrupted, names=name)
    np.testing.assert_allclose(x @ unit, jnp.broadcast_to((ref[name] @ unit).mean(0), x.shape[:2]), atol=1e-5)


def test_edge_knockout_equals_masking_the_scores(prompts):
    clean, _, _, _ = prompts
    model = tiny("gpt2")
    edges = [(4, 2), (4, 3), (6, 0)]
    got = run_with_hooks(model, clean, interventions=[knockout_edges(model, 1, edges, head=2, n_pos=7)])
    mask = np.zeros((7, 7), bool)
    for q, k in edges:
        mask[q, k] = True
    heads = (jnp.arange(4) == 2)[:, None, None] & mask[None]
    scores = edit("blocks.1.attn.hook_attn_scores", lambda s, m: jnp.where(m, jnp.finfo(s.dtype).min, s), heads)
    want = run_with_hooks(model, clean, interventions=[scores])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, model(clean), atol=1e-3)


def test_bad_ablations(prompts):
    clean, _, _, _ = prompts
    model = tiny("gpt2")
    with pytest.raises(IndexRangeError, match="head 4 is out of range"):
        ablate_heads(model, [(0, 4)])
    with pytest.raises(IndexRangeError, match="layer 3 is out of range"):
        ablate_layers(model, [3])
    with pytest.raises(IndexRangeError, match="neuron 64 is out of range"):
        ablate_neurons(model, [(0, 64)])
    with pytest.raises(ValueError, match="reference tokens"):
        ablate_heads(model, [(0, 0)], method="mean")
    with pytest.raises(ValueError, match="method must be"):
        ablate_heads(model, [(0, 0)], method="median", reference=clean)
    with pytest.raises(HookNameError):
        ablate_direction(model, "blocks.1.hook_resid_pos", jnp.ones(32))
    with pytest.raises(ShapeError, match="non-zero"):
        ablate_direction(model, "blocks.1.hook_resid_post", jnp.zeros(32))
