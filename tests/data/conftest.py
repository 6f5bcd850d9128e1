"""Fixtures for the data tests: one private cache directory shared by the whole folder.

Every test here sees ``JAXINTERP_CACHE`` pointing at the same temporary directory, so the
embedded corpus is built once (a few seconds) on first use and reused by later tests,
and nothing is written to the user's real cache.
"""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jaxinterp_cache")


@pytest.fixture(autouse=True)
def _use_shared_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXINTERP_CACHE", str(shared_cache))
