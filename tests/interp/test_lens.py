"""Logit lens, residual decompositions and direct logit attribution add up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _interp_helpers import tiny

from jaxinterp.interp import (
    accumulated_resid,
    decompose_resid,
    direct_logit_attribution,
    logit_lens,
    per_token_loss,
)
from jaxinterp.models.transformer import unembed


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logit_lens_ends_at_the_logits(prompts, family):
    clean, _, _, _ = prompts
    model = tiny(family, use_unembed_bias=True)
    lens = logit_lens(model, clean)
    assert lens.axes == ("layer", "batch", "pos", "d_vocab") and lens.shape[0] == 4
    assert lens.labels["layer"][-1] == "final_post"
    np.testing.assert_allclose(lens.values[-1], model(clean), atol=1e-5)
    resid = accumulated_resid(model, clean)
    # Each layer's own norm statistics: layer 1's lens is unembed(resid_pre of layer 1).
    np.testing.assert_allclose(lens.values[1], unembed(model, resid.values[1]), atol=1e-5)
    np.testing.assert_allclose(logit_lens(model, clean, pos=-1).values, lens.values[:, :, -1], rtol=1e-6, atol=1e-6)


def test_decomposition_sums_to_the_final_residual(prompts):
    clean, _, _, _ = prompts
    model = tiny("gpt2")
    parts = decompose_resid(model, clean)
    assert parts.labels["component"][:3] == ["embed", "pos_embed", "0_attn_out"]
    np.testing.assert_allclose(parts.values.sum(0), model(clean, return_type="resid"), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_direct_logit_attribution_adds_up_to_the_logit_difference(prompts, family):
    clean, _, correct, wrong = prompts
    model = tiny(family, use_unembed_bias=True)
    model = jax.tree.map(lambda a: a + 0.05, model)  # non-trivial norm weights and biases
    dla = direct_logit_attribution(model, clean, correct, wrong)
    total = dla["heads"].values.sum() + dla["mlp"].values.sum() + dla["other"].values.sum()
    logits = model(clean)[:, -1]
    want = float((logits[jnp.arange(3), correct] - logits[jnp.arange(3), wrong]).mean())
    assert float(total) == pytest.approx(want, abs=1e-4) and dla["heads"].shape == (3, 4)
    assert dla["other"].attrs["total"] == pytest.approx(want, abs=1e-5)


def test_per_token_loss(prompts):
    clean, _, _, _ = prompts
    model = tiny("gpt2")
    loss = per_token_loss(model, clean)
    logp = jax.nn.log_softmax(model(clean), -1)
    assert loss.shape == (3, 6)
    assert float(loss[1, 2]) == pytest.approx(-float(logp[1, 2, clean[1, 3]]), abs=1e-5)
