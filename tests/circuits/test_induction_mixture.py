"""The induction run's training mixture: text repeats and random-token segments seen twice."""

import numpy as np
import pytest

from jaxinterp.errors import ConfigError
from jaxinterp.recipes._attn_only import repeat_beginnings
from jaxinterp.recipes.induction import InductionConfig


def _text(batch=16, length=32):
    return np.arange(batch * length).reshape(batch, length) + 10_000  # no token repeats in "text"


def _second_copies(row):
    """``(first, second, n)`` of the longest segment that occurs twice in ``row``."""
    best = None
    for n in range(len(row) // 2, 0, -1):
        for a in range(len(row) - 2 * n + 1):
            for b in range(a + n, len(row) - n + 1):
                if (row[a:a + n] == row[b:b + n]).all():
                    return a, b, n
    return best


def test_text_repeats_and_random_segments():
    batch = repeat_beginnings(_text(), 0.25, (0, 7), 0.5, d_vocab=100)
    lengths, gaps = set(), set()
    for i, row in enumerate(batch):
        found = _second_copies(row)
        if i < 4:  # the window's own beginning, right after itself
            a, b, n = found
            assert a == 0 and b == n and 8 <= n <= 16 and (row[:n] == _text()[i, :n]).all()
        elif i < 12:  # random tokens below d_vocab, twice; the rest of the window is untouched
            a, b, n = found
            assert 4 <= n <= 16 and (row[a:a + n] < 100).all()
            rest = np.ones(32, bool)
            rest[a:a + n] = rest[b:b + n] = False
            assert (row[rest] == _text()[i, rest]).all()
            lengths.add(n)
            gaps.add(b - a)
        else:
            assert found is None and (row == _text()[i]).all()
    assert len(lengths) > 2 and len(gaps) > 2  # nothing positional to memorise


def test_mixture_is_a_function_of_the_seed_and_text_repeats_are_unchanged():
    a = repeat_beginnings(_text(), 0.25, (3, 5), 0.5, d_vocab=100)
    assert (a == repeat_beginnings(_text(), 0.25, (3, 5), 0.5, d_vocab=100)).all()
    assert not (a == repeat_beginnings(_text(), 0.25, (3, 6), 0.5, d_vocab=100)).all()
    # without random segments the text repeats are the same draws as before they existed
    sizes = np.random.default_rng((3, 5)).integers(8, 17, 4)
    plain = repeat_beginnings(_text(), 0.25, (3, 5))
    for row, n in enumerate(sizes):
        assert (plain[row, n:2 * n] == _text()[row, :n]).all()


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (-0.1, 0.5)])
def test_fractions_are_validated(fractions):
    with pytest.raises(ConfigError, match="add up to at most 1"):
        InductionConfig(repeat_fraction=fractions[0], random_fraction=fractions[1])
