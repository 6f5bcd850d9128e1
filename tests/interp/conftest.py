"""Tiny prompts for the interp tests (the IOI-trained models are in tests/conftest.py)."""

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(scope="session")
def prompts():
    """Clean and corrupted prompts [3, 7] differing in two positions, and answer tokens."""
    clean = jax.random.randint(jax.random.key(1), (3, 7), 0, 40)
    corrupted = clean.at[:, 2].set((clean[:, 2] + 5) % 40).at[:, 5].set((clean[:, 5] + 11) % 40)
    return clean, corrupted, jnp.array([1, 2, 3]), jnp.array([4, 5, 6])
