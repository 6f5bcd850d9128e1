"""Batched activation patching against single patches, invariants, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _interp_helpers import tiny

from jaxinterp.errors import HookNameError, IndexRangeError, ShapeError, TokenError
from jaxinterp.hooks import run_with_cache
from jaxinterp.interp import (
    COMPONENTS,
    activation_patching,
    logit_diff,
    patched_forward,
    token_prob,
)


@eqx.filter_jit
def _single(model, tokens, source, metric, component, layer, pos, head, mask):
    logits = patched_forward(model, tokens, source[layer], component, layer, pos=pos, head=head,
                             attention_mask=mask)
    return metric(logits).mean()


def loop_reference(model, clean, corrupted, metric, component, by, direction="denoising", mask=None):
    """The sweep done the slow way: one jitted single patch per target."""
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    suffix = COMPONENTS[component][0]
    _, cache = run_with_cache(model, source, mask, names=f"blocks.*.{suffix}")
    stack = jnp.stack([cache[f"blocks.{i}.{suffix}"] for i in range(model.cfg.n_layers)])
    n_heads = model.cfg.n_kv_heads if component in ("k", "v") else model.cfg.n_heads
    sizes = {"layer": model.cfg.n_layers, "head": n_heads, "pos": clean.shape[1]}
    out = np.zeros([sizes[a] for a in by], np.float32)
    for idx in np.ndindex(*out.shape):
        t = dict(zip(by, idx, strict=True))
        pos = None if "pos" not in t else jnp.int32(t["pos"])
        head = None if "head" not in t else jnp.int32(t["head"])
        out[idx] = _single(model, base, stack, metric, component, jnp.int32(t["layer"]), pos, head, mask)
    return out


CASES = [
    ("gpt2", "resid_pre", ("layer", "pos")),
    ("gpt2", "z", ("layer", "head")),
    ("llama", "result", ("layer", "head", "pos")),
    ("gpt2", "pattern", ("layer", "head", "pos")),
    ("llama", "resid_mid", ("layer", "pos")),
    ("llama", "k", ("layer", "head", "pos")),
    ("llama", "q", ("layer", "head")),
    ("neox", "attn_out", ("layer", "pos")),
    ("neox", "resid_post", ("layer", "pos")),
    ("neox", "mlp_out", ("layer",)),
]


@pytest.mark.parametrize("family,component,by", CASES)
def test_sweep_equals_loop_of_single_patches(prompts, family, component, by):
    clean, corrupted, correct, wrong = prompts
    model = tiny(family)
    metric = logit_diff(correct, wrong)  # declares its position: the last layer queries only there
    got = activation_patching(model, clean, corrupted, metric, component, by=by, chunk_size=6)
    want = loop_reference(model, clean, corrupted, metric, component, by)
    assert got.axes == by and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
    assert np.ptp(want) > 1e-2  # the patches do something, so equality means something


def test_user_metric_noising_and_padding(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("llama")
    mask = jnp.ones(clean.shape, jnp.int32).at[0, :2].set(0)  # left padding in example 0

    def metric(logits):  # a plain function reading many positions (not the padding ones)
        return jax.nn.log_softmax(logits, -1)[:, 2:, 7].mean(-1)

    for direction in ("denoising", "noising"):
        got = activation_patching(model, clean, corrupted, metric, "resid_pre", direction=direction,
                                  attention_mask=mask, chunk_size=4)
        want = loop_reference(model, clean, corrupted, metric, "resid_pre", ("layer", "pos"), direction, mask)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("component,by", [("resid_pre", ("layer", "pos")), ("z", ("layer", "head", "pos")),
                                          ("pattern", ("layer", "head")), ("mlp_out", ("layer",))])
def test_clean_into_clean_gives_clean_metric_everywhere(prompts, component, by):
    clean, _, correct, wrong = prompts
    model = tiny("gpt2")
    metric = token_prob(correct)
    res = activation_patching(model, clean, clean, metric, component, by=by)
    np.testing.assert_allclose(np.asarray(res), res.attrs["clean"], atol=1e-6)
    assert res.attrs["clean"] == pytest.approx(float(metric(model(clean)).mean()), abs=1e-6)


def test_result_metadata_and_normalisation(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("gpt2")
    labels = [f"t{i}" for i in range(clean.shape[1])]
    res = activation_patching(model, clean, corrupted, logit_diff(correct, wrong), pos_labels=labels)
    assert res.labels["pos"] == labels and res.attrs["component"] == "resid_pre"
    m = logit_diff(correct, wrong)
    assert res.attrs["corrupted"] == pytest.approx(float(m(model(corrupted)).mean()), abs=1e-5)
    norm = res.normalized()
    # At layer 0 the residual is the embedding: where the prompts agree the patch is a no-op
    # (checked on the metric itself; normalising divides by a small clean-corrupted gap).
    np.testing.assert_allclose(np.asarray(res.sel(layer=0))[[0, 1, 3, 4, 6]], res.attrs["corrupted"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.values), (np.asarray(res.values) - res.attrs["corrupted"])
                               / (res.attrs["clean"] - res.attrs["corrupted"]), rtol=1e-6)
    assert res.sel(layer=1).axes == ("pos",)


def test_bad_input_is_reported(prompts):
    clean, corrupted, correct, wrong = prompts
    model = tiny("gpt2")
    metric = logit_diff(correct, wrong)
    with pytest.raises(ShapeError, match="same"):
        activation_patching(model, clean, corrupted[:, :5], metric)
    with pytest.raises(ShapeError, match="one scalar per example"):
        activation_patching(model, clean, corrupted, lambda logits: logits[:, -1, 0].mean())
    with pytest.raises(HookNameError, match="resid_pre"):
        activation_patching(model, clean, corrupted, metric, "resid_pr")
    with pytest.raises(ShapeError, match="swept by"):
        activation_patching(model, clean, corrupted, metric, "z", by=("layer", "pos"))
    with pytest.raises(HookNameError, match="no 'mlp_out'"):
        activation_patching(tiny("gpt2", attn_only=True), clean, corrupted, metric, "mlp_out")
    with pytest.raises(TokenError):
        activation_patching(model, clean + 100, corrupted, metric)
    src = jnp.zeros(clean.shape + (32,))
    with pytest.raises(IndexRangeError, match="layer 3 is out of range"):
        patched_forward(model, corrupted, src, "resid_pre", 3, pos=1)
    with pytest.raises(IndexRangeError, match="head 4 is out of range"):
        patched_forward(model, corrupted, jnp.zeros(clean.shape + (4, 8)), "z", 0, head=4)
