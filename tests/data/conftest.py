"""Fixtures for the data tests: one private cache directory shared by the whole folder.

Every test here sees ``JAXINTERP_CACHE`` pointing at the same temporary directory, so the
embedded corpus is built once (a few seconds) on first use and reused by later tests,
and nothing is written to the user's real cache. Under xdist the tests that read the
corpus (``pytest.mark.usefixtures("built_corpus")``) get its files built once per test
run, by the first worker to ask, in the run's shared temporary folder, and copied into
each worker's private cache.
"""

import os
import shutil
from pathlib import Path

import pytest
from run_once import run_folder, run_lock  # tests/run_once.py


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jaxinterp_cache")


@pytest.fixture(scope="session")
def built_corpus(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = run_folder(tmp_path_factory)
    if root is not None:  # alone, the first load_corpus() builds it
        _copy_corpus_built_once(root, shared_cache)


def _copy_corpus_built_once(run_root: Path, cache: Path) -> None:
    from jaxinterp.data import load_corpus

    built = run_root / "jaxinterp_corpus"
    with run_lock(run_root, "jaxinterp_corpus"):
        if not built.is_dir():
            tmp = run_root / "jaxinterp_corpus.tmp"
            old = os.environ.get("JAXINTERP_CACHE")
            os.environ["JAXINTERP_CACHE"] = str(tmp)
            try:
                load_corpus()  # writes the default, python and bible corpora
            finally:
                if old is None:
                    del os.environ["JAXINTERP_CACHE"]
                else:
                    os.environ["JAXINTERP_CACHE"] = old
            tmp.rename(built)
    for f in built.glob("corpus-*.txt"):
        shutil.copy(f, cache / f.name)


@pytest.fixture(autouse=True)
def _use_shared_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXINTERP_CACHE", str(shared_cache))
