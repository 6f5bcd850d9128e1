"""Attribution patching: exact on a linear model, close to exact patching on a trained one."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.interp import (
    activation_patching,
    attribution_patching,
    compare_attribution,
    logit_diff,
)
from jaxinterp.models import TransformerConfig, init_transformer


def linear_model():
    """Attention-only, no norms, W_Q = W_K = 0: uniform causal attention, so the logits are
    a linear function of every activation and first-order patching is exact."""
    cfg = TransformerConfig(d_model=32, n_layers=3, n_heads=4, d_head=8, d_vocab=40, n_ctx=16,
                            attn_only=True, normalization_type=None, final_norm=False, init_range=0.3)
    model = init_transformer(cfg, jax.random.key(0))
    return eqx.tree_at(lambda m: (m.blocks.attn.W_Q, m.blocks.attn.W_K), model, replace_fn=jnp.zeros_like)


@pytest.mark.parametrize("component,by,direction", [
    ("resid_pre", ("layer", "pos"), "denoising"), ("resid_pre", ("layer", "pos"), "noising"),
    ("z", ("layer", "head"), "noising"), ("attn_out", ("layer", "pos"), "denoising"),
    ("v", ("layer", "head", "pos"), "denoising")])
def test_exact_on_a_linear_model(prompts, component, by, direction):
    clean, corrupted, correct, wrong = prompts
    model, metric = linear_model(), logit_diff(correct, wrong)
    exact = activation_patching(model, clean, corrupted, metric, component, by=by, direction=direction)
    est = attribution_patching(model, clean, corrupted, metric, component, by=by, direction=direction)
    assert est.axes == exact.axes
    np.testing.assert_allclose(np.asarray(est), np.asarray(exact), atol=1e-4)
    assert np.ptp(np.asarray(exact)) > 0.1
    assert est.attrs["clean"] == pytest.approx(exact.attrs["clean"], abs=1e-5)


def test_scanned_and_undeclared_metric_paths_agree(prompts, monkeypatch):
    """Big models scan their layers; a plain-function metric gets no last-layer shortcut."""
    from _interp_helpers import tiny

    import jaxinterp.interp.attribution as A

    clean, corrupted, correct, wrong = prompts
    model, metric = tiny("llama"), logit_diff(correct, wrong)
    fast = attribution_patching(model, clean, corrupted, metric, "z", by=("layer", "head", "pos"))
    plain = attribution_patching(model, clean, corrupted, lambda lg: metric(lg), "z", by=("layer", "head", "pos"))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(fast), atol=1e-5)
    monkeypatch.setattr(A, "UNROLL_BELOW", 0)  # read when tracing: a new `by` traces anew
    scanned = attribution_patching(model, clean, corrupted, metric, "z", by=("layer", "head"))
    base = fast.attrs["corrupted"]
    np.testing.assert_allclose(np.asarray(scanned) - base, (np.asarray(fast) - base).sum(-1), atol=1e-5)


def test_correlates_with_exact_patching_on_a_trained_model(ioi_model):
    from jaxinterp.data.ioi import ioi_batch

    data = ioi_batch(16, seed=7)
    metric = logit_diff(data.io, data.s)
    by = ("layer", "head", "pos")
    exact = activation_patching(ioi_model, data.clean, data.corrupted, metric, "z", by=by)
    est = attribution_patching(ioi_model, data.clean, data.corrupted, metric, "z", by=by)
    stats = compare_attribution(exact, est)
    assert stats["pearson"] > 0.8, stats
    assert stats["rmse"] > 1e-4  # not exact: the model is not linear
    assert exact.attrs["clean"] > exact.attrs["corrupted"] + 3.0  # the model does the task


def test_compare_attribution_reports_errors():
    exact = np.array([[0.0, 1.0], [2.0, 3.0]])
    stats = compare_attribution(exact, exact * 2)
    assert stats["pearson"] == pytest.approx(1.0) and stats["spearman"] == pytest.approx(1.0)
    assert stats["max_abs_error"] == pytest.approx(3.0) and stats["n"] == 4
    assert compare_attribution(exact, -exact)["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shape"):
        compare_attribution(exact, exact[0])
