"""SAE tests run under strict dtype promotion (no silent float64 or int/float mixing)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_dtype_promotion("strict"):
        yield
