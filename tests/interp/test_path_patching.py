"""Path patching: no senders is a no-op; a direct path equals the matching activation patch."""

import jax.numpy as jnp
import numpy as np
import pytest
from _interp_helpers import tiny

from jaxinterp.errors import IndexRangeError, ShapeError
from jaxinterp.hooks import patch, run_with_cache, run_with_hooks
from jaxinterp.interp import logit_diff, path_patching, path_patching_sweep


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_empty_sender_set_is_a_no_op(prompts, family):
    clean, corrupted, correct, wrong = prompts
    model = tiny(family)
    metric = logit_diff(correct, wrong)
    base = float(metric(model(clean)).mean())
    receivers = [(2, 1, "q"), (1, 0, "k"), (2, 1, "v"), (1, "mlp")]
    assert path_patching(model, clean, corrupted, metric, [], receivers) == pytest.approx(base, abs=1e-5)
    # ...and senders at or after a receiver's layer have no path to it.
    late = [(2, 0), (2, 3), (2, "mlp")]
    assert path_patching(model, clean, corrupted, metric, late, receivers) == pytest.approx(base, abs=1e-5)
    assert path_patching(model, clean, corrupted, metric, [], "logits") == pytest.approx(base, abs=1e-5)


def test_direct_path_to_logits_equals_patching_a_last_layer_head(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("gpt2", attn_only=True)  # nothing after the last layer's heads but the unembedding
    metric = logit_diff(correct, wrong)
    _, cache = run_with_cache(model, corrupted, names="blocks.2.attn.hook_z")
    iv = patch("blocks.2.attn.hook_z", cache["blocks.2.attn.hook_z"], head=1)
    want = float(metric(run_with_hooks(model, clean, interventions=[iv])).mean())
    got = path_patching(model, clean, corrupted, metric, [(2, 1)], "logits")
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(want - float(metric(model(clean)).mean())) > 1e-2


def test_path_through_values_matches_manual_two_step_patch(prompts):
    """Step 1: receiver input = clean resid + sender delta; step 2: patch the receiver's v."""
    clean, corrupted, correct, wrong = prompts
    model = tiny("gpt2", normalization_type=None)
    metric = logit_diff(correct, wrong)
    _, c = run_with_cache(model, clean, names=["blocks.*.attn.hook_z", "blocks.2.hook_resid_pre"])
    _, k = run_with_cache(model, corrupted, names="blocks.0.attn.hook_z")
    delta = jnp.einsum("bpe,ed->bpd", k["blocks.0.attn.hook_z"][:, :, 3] - c["blocks.0.attn.hook_z"][:, :, 3],
                       model.W_O[0, 3])
    v = jnp.einsum("bpd,hde->bphe", c["blocks.2.hook_resid_pre"] + delta, model.W_V[2]) + model.blocks.attn.b_V[2]
    want = float(metric(run_with_hooks(model, clean, interventions=[patch("blocks.2.attn.hook_v", v, head=2)])).mean())
    got = path_patching(model, clean, corrupted, metric, [(0, 3)], [(2, 2, "v")])
    assert got == pytest.approx(want, abs=1e-5)


def test_sweep_matches_single_calls(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("gpt2")
    metric = logit_diff(correct, wrong)
    receivers = [(2, 0, "q"), (2, 1, "k")]
    sweep = path_patching_sweep(model, clean, corrupted, metric, receivers, chunk_size=5)
    assert sweep.axes == ("layer", "head") and sweep.shape == (3, 4)
    for layer, head in [(0, 1), (1, 3)]:
        one = path_patching(model, clean, corrupted, metric, [(layer, head)], receivers)
        assert float(sweep.values[layer, head]) == pytest.approx(one, abs=1e-5)
    np.testing.assert_allclose(np.asarray(sweep.values[2]), sweep.attrs["base"], atol=1e-5)


def test_bad_senders_and_receivers(prompts):
    clean, corrupted, correct, wrong = prompts
    model, metric = tiny("gpt2"), logit_diff(correct, wrong)
    with pytest.raises(IndexRangeError, match="head 4 is out of range"):
        path_patching(model, clean, corrupted, metric, [(0, 4)], "logits")
    with pytest.raises(IndexRangeError, match="layer 5 is out of range"):
        path_patching(model, clean, corrupted, metric, [(5, 0)], "logits")
    with pytest.raises(ShapeError, match="unknown receiver"):
        path_patching(model, clean, corrupted, metric, [(0, 0)], [(2, 0, "z")])
    with pytest.raises(ShapeError, match="use it alone"):
        path_patching(model, clean, corrupted, metric, [(0, 0)], ["logits", (2, 0, "q")])
