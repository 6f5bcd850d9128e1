"""Steering: exact on a model whose site feeds the unembedding linearly, and its bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError, IndexRangeError
from jaxinterp.features.logit_effects import logit_effects
from jaxinterp.features.steering import (
    compare_steering,
    direction_steering,
    feature_direction,
    feature_steering,
)
from jaxinterp.sae import SAEConfig, init_sae

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    cfg = ji.gpt2_config(d_model=16, n_layers=2, n_heads=2, d_vocab=40, n_ctx=24, normalization_type=None)
    model = ji.init_transformer(cfg, jax.random.key(0))
    sae = init_sae(SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4, hook_name=SITE), jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (3, 10), 0, 40)
    return model, sae, tokens


def test_adding_a_feature_moves_logits_by_its_logit_effect(setup):
    """With no norm after the last block, adding c to latent i (error term kept) adds exactly
    c * W_dec[i] @ W_U to every logit: the logit effects table, scaled."""
    model, sae, tokens = setup
    i, c = 5, 3.0
    clean = model(tokens)
    steered = ji.run_with_hooks(model, tokens, interventions=feature_steering(sae, i, value=c, mode="add", site=SITE))
    effect = logit_effects(model, sae, k=40)
    full = np.zeros(40)
    full[effect["pos_index"][i]] = effect["pos_values"][i]
    np.testing.assert_allclose(np.asarray(steered - clean), np.broadcast_to(c * full, clean.shape), atol=2e-5)
    nothing = ji.run_with_hooks(model, tokens, interventions=feature_steering(sae, i, value=0.0, mode="add"))
    np.testing.assert_allclose(np.asarray(nothing), np.asarray(clean), atol=2e-5)   # the error term is kept
    same = ji.run_with_hooks(model, tokens, interventions=direction_steering(SITE, feature_direction(sae, i), c))
    np.testing.assert_allclose(np.asarray(same), np.asarray(steered), atol=2e-5)


def test_clamping_sets_the_latent_and_raises_the_promoted_tokens(setup):
    model, sae, tokens = setup
    i = 7
    effect = logit_effects(model, sae, k=3)
    _, cache = ji.run_with_cache(model, tokens, names=SITE)
    acts = sae.encode(cache[SITE])
    clamp = feature_steering(sae, i, multiple=10, max_activation=float(acts[..., i].max()) + 10.0)
    _, steered_cache = ji.run_with_hooks(model, tokens, interventions=clamp, names=SITE)
    value = 10 * (float(acts[..., i].max()) + 10.0)
    moved = steered_cache[SITE] - cache[SITE]
    want = (value - acts[..., i])[..., None] * sae.W_dec[i]                    # clamp = add (value - a_i)
    np.testing.assert_allclose(np.asarray(moved), np.asarray(want), atol=1e-4)
    result = compare_steering(model, tokens, clamp, tokens_of_interest=effect["pos_index"][i], max_new_tokens=5)
    assert result.token_prob_after > 0.3 > 0.1 > result.token_prob_before and result.kl > 0.1
    assert {int(t) for t in result.after[0].split()} <= {int(t) for t in effect["pos_index"][i]}
    assert len(result.after) == 3 and all(len(t.split()) == 5 for t in result.after)


def test_bad_inputs(setup):
    model, sae, tokens = setup
    with pytest.raises(IndexRangeError, match="d_sae=32"):
        feature_steering(sae, 32, value=1.0)
    with pytest.raises(ConfigError, match="trained on 'blocks.1.hook_resid_post'"):
        feature_steering(sae, 0, value=1.0, site="blocks.0.hook_resid_post")
    with pytest.raises(ConfigError, match="max_activation"):
        feature_steering(sae, 0, multiple=10.0)
    with pytest.raises(ConfigError, match="dead feature"):
        feature_steering(sae, 0, multiple=10.0, max_activation=0.0)
    with pytest.raises(ConfigError, match="mode"):
        feature_steering(sae, 0, value=1.0, mode="multiply")
    assert int(np.asarray(feature_steering(sae, -1, value=1.0)[0].params["edit"]["index"])) == 31
    with pytest.raises(ConfigError, match="non-empty"):
        compare_steering(model, jnp.zeros((0, 3), jnp.int32), [])


@pytest.mark.parametrize("argv,fragment", [
    (["browse", "{tmp}"], "holds no SAE"),
    (["browse", "{tmp}/missing"], "does not exist"),
    (["experiment", "steering", "--run", "{tmp}"], "no finished main job"),
    (["experiment", "steering", "--multiple", "0"], "--multiple must be > 0"),
    (["experiment", "sae_scaling", "--widths", "1,2"], "at least 3 positive widths"),
    (["experiment", "sae_scaling", "--budgets", "1e9,x"], "must be numbers"),
])
def test_cli_bad_inputs(tmp_path, capsys, argv, fragment):
    from jaxinterp import cli

    code = cli.main([a.format(tmp=tmp_path) for a in argv] + (["--runs-dir", str(tmp_path / "runs")]
                                                              if argv[0] == "experiment" else []))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
