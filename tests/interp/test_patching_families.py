"""Activation, attribution and path patching on the families with per-layer attention:
Gemma 2 (local and global layers, soft-capping, post-norms) and Mistral (sliding window)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from _interp_helpers import tiny
from test_activation_patching import loop_reference

from jaxinterp.hooks import patch, run_with_cache, run_with_hooks
from jaxinterp.interp import (
    activation_patching,
    attribution_patching,
    compare_attribution,
    logit_diff,
    path_patching,
    path_patching_sweep,
)


@pytest.mark.parametrize("family,component,by,declared", [
    ("gemma2", "resid_pre", ("layer", "pos"), True),
    ("gemma2", "z", ("layer", "head", "pos"), False),
    ("mistral", "v", ("layer", "head", "pos"), True),
])
def test_sweep_equals_loop_of_single_patches(prompts, family, component, by, declared):
    clean, corrupted, correct, wrong = prompts
    model = tiny(family)
    diff = logit_diff(correct, wrong)  # declares its position: the last layer queries only there
    metric = diff if declared else (lambda logits: diff(logits))  # a plain function declares nothing
    got = activation_patching(model, clean, corrupted, metric, component, by=by, chunk_size=6)
    want = loop_reference(model, clean, corrupted, metric, component, by)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
    assert np.ptp(want) > 1e-2


def linear_window_model():
    """Attention-only Mistral-style model without norms and with W_Q = W_K = 0: every query
    attends uniformly to the 3 positions of its window, so the logits are linear in every
    activation (and the window decides which)."""
    model = tiny("mistral", attn_only=True, normalization_type=None, final_norm=False)
    return eqx.tree_at(lambda m: (m.blocks.attn.W_Q, m.blocks.attn.W_K), model, replace_fn=jnp.zeros_like)


def test_attribution_is_exact_on_a_linear_window_model(prompts):
    clean, corrupted, correct, wrong = prompts
    model, metric = linear_window_model(), logit_diff(correct, wrong)
    component, by = "resid_pre", ("layer", "pos")
    exact = activation_patching(model, clean, corrupted, metric, component, by=by)
    est = attribution_patching(model, clean, corrupted, metric, component, by=by)
    np.testing.assert_allclose(np.asarray(est), np.asarray(exact), atol=1e-4)
    assert np.ptp(np.asarray(exact)) > 0.1


def test_attribution_tracks_exact_patching_on_a_trained_gemma2(ioi_gemma2):
    """Not linear (soft-capping, post-norms), so not exact; close to first order."""
    from jaxinterp.data.ioi import ioi_batch
    from jaxinterp.recipes.ioi import ioi_loss

    data = ioi_batch(16, seed=7)
    assert float(ioi_loss(ioi_gemma2, data.clean, data.io)[1]["accuracy"]) == 1.0
    metric, by = logit_diff(data.io, data.s), ("layer", "head", "pos")
    exact = activation_patching(ioi_gemma2, data.clean, data.corrupted, metric, "z", by=by)
    est = attribution_patching(ioi_gemma2, data.clean, data.corrupted, metric, "z", by=by)
    stats = compare_attribution(exact, est)
    assert stats["pearson"] > 0.95 and stats["rmse"] > 1e-4, stats
    assert exact.attrs["clean"] > exact.attrs["corrupted"] + 3.0


def test_direct_path_through_a_post_norm(prompts):
    """Gemma normalises the attention output (ln1_post) before adding it: a head's direct
    path to the logits is the last layer's head patch, not a linear z @ W_O term."""
    clean, corrupted, correct, wrong = prompts
    model = tiny("gemma2", attn_only=True)
    metric = logit_diff(correct, wrong)
    name = "blocks.2.attn.hook_z"
    _, cache = run_with_cache(model, clean, names=name)
    want = float(metric(run_with_hooks(model, corrupted, interventions=[patch(name, cache[name], head=1)])).mean())
    got = path_patching(model, clean, corrupted, metric, [(2, 1)], "logits")
    assert float(got) == pytest.approx(want, abs=1e-5)
    assert abs(want - got.attrs["corrupted"]) > 1e-2


def test_path_sweep_matches_single_calls_on_a_window_model(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("mistral")
    metric = logit_diff(correct, wrong)
    receivers = [(2, 0, "q"), (2, 1, "k"), (1, "mlp")]
    sweep = path_patching_sweep(model, clean, corrupted, metric, receivers)
    for layer, head in [(0, 1), (1, 3)]:
        one = path_patching(model, clean, corrupted, metric, [(layer, head)], receivers)
        assert float(sweep.values[layer, head]) == pytest.approx(float(one), abs=1e-5)
    np.testing.assert_allclose(np.asarray(sweep.values[2]), sweep.attrs["corrupted"], atol=1e-5)
    assert np.ptp(np.asarray(sweep.values[:2])) > 1e-3
