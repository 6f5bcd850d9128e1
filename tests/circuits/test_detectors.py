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
    # the induction head predicts the second half exactly: late tokens are much easier
    assert circuits.in_context_learning_score(hand_model, repeated, early=3, late=15) < -1.0
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
