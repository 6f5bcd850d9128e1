"""Hand-built heads with known behaviour, and the IOI-trained model (tests/conftest.py) with prompts for EAP."""

import pytest
from _circuits_helpers import hand_built_model

from jaxinterp.data.ioi import ioi_batch


@pytest.fixture(scope="session")
def hand_model():
    return hand_built_model()


@pytest.fixture(scope="session")
def ioi_small(ioi_model):
    """The 2-layer d_model 32 IOI model the interp tests use, and 12 held-out prompts."""
    return ioi_model, ioi_batch(12, seed=7)
