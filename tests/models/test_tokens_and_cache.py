"""TransformerLens habits: text in, string tokens out, short cache keys, residual methods."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.data import ByteTokenizer
from jaxinterp.models.hook_specs import SPECS

CFG = ji.gpt2_config(d_model=32, n_layers=2, n_heads=4, d_vocab=260, n_ctx=32)
TOK = ByteTokenizer(bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model():
    return ji.init_transformer(CFG, jax.random.key(0)).with_tokenizer(TOK)


def test_text_round_trips_with_and_without_bos(model):
    tokens = model.to_tokens("hi!")
    np.testing.assert_array_equal(tokens, [[104, 105, 33]])  # bytes; no BOS by default
    with_bos = model.to_tokens("hi!", prepend_bos=True)
    assert int(with_bos[0, 0]) == TOK.bos_token_id and with_bos.shape == (1, 4)
    assert model.to_str_tokens("hi!", prepend_bos=True) == ["<bos>", "h", "i", "!"]
    assert model.to_string(model.to_tokens("hello")[0]) == "hello"
    batch = model.to_tokens(["a", "abc"])  # right-padded with EOS
    np.testing.assert_array_equal(batch[0], [97, TOK.eos_token_id, TOK.eos_token_id])
    assert model.to_string(batch) == ["a<eos><eos>", "abc"]
    np.testing.assert_allclose(model("abc"), model(jnp.asarray([[97, 98, 99]])), atol=1e-6)
    np.testing.assert_allclose(model([97, 98, 99]), model(np.array([97, 98, 99])), atol=1e-6)
    default_bos = model.with_tokenizer(TOK, prepend_bos=True)
    assert default_bos.to_tokens("a").shape == (1, 2)


def test_get_act_name_names_every_layered_hook():
    names = set(ji.models.hook_names_for(CFG))
    for spec in SPECS:
        if spec.alias is None or not spec.layered or f"blocks.0.{spec.name}" not in names:
            continue
        assert ji.get_act_name(spec.alias, 1) == f"blocks.1.{spec.name}"
    assert ji.get_act_name("scale", 0, "ln2") == "blocks.0.ln2.hook_scale"
    assert ji.get_act_name("embed") == "hook_embed"
    assert ji.get_act_name("attn", 1) == "blocks.1.attn.hook_pattern"  # TransformerLens's alias


def test_short_cache_keys(model):
    tokens = model.to_tokens("the cat sat")
    _, cache = ji.run_with_cache(model, tokens)
    np.testing.assert_array_equal(cache["resid_pre", 0], cache["blocks.0.hook_resid_pre"])
    np.testing.assert_array_equal(cache["pattern", -1], cache["blocks.1.attn.hook_pattern"])
    np.testing.assert_array_equal(cache["scale", 1, "ln1"], cache["blocks.1.ln1.hook_scale"])
    np.testing.assert_array_equal(cache["embed"], cache["hook_embed"])
    assert ("z", 1) in cache and ("z", 2) not in cache
    with pytest.raises(ji.HookNameError, match="ambiguous"):
        cache["scale", 0]


def test_residual_methods_decompose_the_logits(model):
    tokens = model.to_tokens(["the cat sat", "a dog ran!!"])
    logits, cache = ji.run_with_cache(model, tokens)
    acc = cache.accumulated_resid()
    assert acc.labels["component"] == ["0_pre", "1_pre", "final_post"]
    np.testing.assert_allclose(acc.values[-1], cache["resid_post", 1], atol=1e-6)
    lens = ji.accumulated_resid(model, tokens)  # the lens function agrees with the method
    np.testing.assert_allclose(lens.values, acc.values, atol=1e-6)
    parts = cache.decompose_resid()
    np.testing.assert_allclose(parts.values.sum(0), cache["resid_post", 1], atol=1e-5)
    # Through the final norm, the direct contributions add up to the logits (minus the
    # final norm's bias, which is zero at initialisation).
    normed = cache.decompose_resid(apply_ln=True)
    target = jnp.array([[5] * tokens.shape[1], [9] * tokens.shape[1]])
    attrs = cache.logit_attrs(normed, target)
    want = jnp.take_along_axis(logits, target[..., None], -1)[..., 0]
    np.testing.assert_allclose(attrs.values.sum(0), want, atol=1e-4)
    heads = cache.stack_head_results()
    assert heads.labels["component"][:2] == ["L0H0", "L0H1"] and heads.shape[0] == 8
    attn_out = heads.values[:4].sum(0) + model.blocks.attn.b_O[0]
    np.testing.assert_allclose(attn_out, cache["attn_out", 0], atol=1e-5)
    jitted = jax.jit(lambda m, t: ji.run_with_cache(m, t, names="blocks.*.hook_resid_pre"))(model, tokens)[1]
    with pytest.raises(ji.ShapeError, match="pass model="):
        jitted.accumulated_resid(layer=1)
    np.testing.assert_allclose(jitted.accumulated_resid(layer=1, model=model).values[0],
                               cache["resid_pre", 0], atol=1e-6)


def test_named_array_top_labels_entries():
    heads = ji.NamedArray(jnp.array([[0.1, -0.9], [0.5, 0.0]]), ("layer", "head"))
    top = heads.top(2)
    assert [e.label for e in top] == ["L0H1", "L1H0"] and top[0].index == {"layer": 0, "head": 1}
    assert heads.top(1, order="largest")[0].label == "L1H0"
    assert "L0H1" in str(top) and "rank" in str(top)
    by_pos = ji.NamedArray(jnp.array([[0.0, 2.0]]), ("layer", "pos"), {"pos": ["The", " cat"]})
    assert by_pos.top(1)[0].label == "L0 pos 1 ' cat'"
