"""Head detectors on hand-built heads whose behaviour is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _circuits_helpers import VOCAB

from jaxinterp import circuits
from jaxinterp.data import repeated_tokens
from jaxinterp.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def repeated():
    return repeated_tokens(jax.random.key(3), 6, 10, VOCAB)  # [6, 20]: 10 random tokens twice


def test_each_detector_finds_its_head(hand_model, repeated):
    table = circuits.head_scores(hand_model, repeated)
    assert table.labels["detector"] == list(circuits.DETECTORS)
    scores = {name: np.asarray(table.values[i]) for i, name in enumerate(table.labels["detector"])}
    assert scores["previous_token"][0, 0] > 0.99
    assert scores["duplicate_token"][0, 1] > 0.99
    assert scores["induction"][1, 0] > 0.85  # adjacent repeats ("6 6") make it attend to itself
    for name, (layer, head) in {"previous_token": (0, 0), "duplicate_token": (0, 1), "induction": (1, 0)}.items():
        others = np.delete(scores[name].ravel(), layer * 2 + head)
        assert others.max() < 0.5, (name, scores[name])
    assert scores["copying"][1, 0] > 2.0  # raises the attended token's logit by > 2 standard deviations
    assert abs(scores["copying"][1, 1]) < 1e-3  # a head that writes nothing
    # the single-detector functions agree with the table, and label their top entry
    ind = circuits.induction_scores(hand_model, repeated)
    np.testing.assert_allclose(np.asarray(ind), scores["induction"], rtol=1e-5)
    assert ind.top(1)[0].label == "L1H0"
    assert circuits.prefix_matching_scores is circuits.induction_scores


def test_in_context_learning_score_and_loss_by_position(hand_model, repeated):
    # the induction head raises the right logit by 1 in the second half (the direct path
    # raises the current token's by 1 everywhere): late tokens are easier, by about
    # log(12 / 2) - log(2 + 10 / e) = 0.7 nats at 12 tokens
    score = circuits.in_context_learning_score(hand_model, repeated, early=3, late=15)
    assert -0.8 < score < -0.4
    by_pos = circuits.loss_by_position(hand_model, repeated)
    assert np.isnan(by_pos.values[0]) and by_pos.values[15] < by_pos.values[3]


def test_ov_copying_scores(hand_model):
    score = circuits.ov_copying_scores(hand_model)
    assert score.values[1, 0] > 0.99  # an identity OV circuit: every eigenvalue positive
    frac = circuits.ov_copying_scores(hand_model, "positive_fraction")
    assert 0.0 <= float(frac.values.min()) and float(frac.values[1, 0]) > 0.1
    with pytest.raises(ConfigError, match="statistic"):
        circuits.ov_copying_scores(hand_model, "trace")


def test_bad_inputs(hand_model):
    with pytest.raises(ShapeError, match="at least 2 tokens"):
        circuits.previous_token_scores(hand_model, jnp.zeros((2, 1), jnp.int32))
    no_repeats = jnp.arange(8)[None]
    with pytest.raises(ShapeError, match="tokens repeat"):
        circuits.induction_scores(hand_model, no_repeats)
    with pytest.raises(ShapeError, match="reads token 500"):
        circuits.in_context_learning_score(hand_model, jnp.zeros((2, 20), jnp.int32))
    with pytest.raises(ConfigError, match="head detector"):
        circuits.head_scores(hand_model, no_repeats, detectors=("inducton",))


def test_skip_trigrams_read_off_a_hand_built_head():
    """One head in which token 5 attends back to token 2, and attending to 2 raises token 7."""
    import equinox as eqx

    import jaxinterp as ji

    V = 10
    cfg = ji.attn_only_config(n_layers=1, d_model=V, n_heads=1, d_vocab=V, n_ctx=8, normalization_type=None,
                              positional_embedding_type="none", use_attn_bias=False, attn_scale=1.0)
    model = ji.init_transformer(cfg, jax.random.key(0))
    W = np.zeros((4, 1, 1, V, V), np.float32)
    W[0, 0, 0, 5, 0], W[1, 0, 0, 2, 0] = 10.0, 1.0  # QK: 5 queries, 2 answers
    W[2, 0, 0, 2, 0], W[3, 0, 0, 0, 7] = 1.0, 1.0  # OV: 2 -> 7
    attn = eqx.tree_at(lambda a: (a.W_Q, a.W_K, a.W_V, a.W_O), model.blocks.attn, tuple(jnp.asarray(w) for w in W))
    model = eqx.tree_at(lambda m: (m.W_E, m.W_U, m.blocks.attn), model,
                        (jnp.eye(V), jnp.eye(V), attn))
    best = circuits.skip_trigrams(model, np.arange(V), k=1)[0]
    assert (best.source, best.destination, best.output) == (2, 5, 7)
    assert best.ov > 0.5 and best.qk > 5
