"""The notebooks that make their own runs, and the public-API rule for every notebook."""

import pytest
from _runner import ALL, INDEPENDENT, MAIN_JOB, run_notebook


@pytest.mark.parametrize("path", INDEPENDENT, ids=[p.name for p in INDEPENDENT])
def test_notebook_runs(path, tmp_path, monkeypatch):
    run_notebook(path, tmp_path / "runs", tmp_path, monkeypatch)


def test_every_notebook_is_run_and_imports_only_the_public_api():
    assert sorted(MAIN_JOB + INDEPENDENT) == ALL and len(MAIN_JOB) == 4
    for path in ALL:
        text = path.read_text()
        assert "jaxinterp._" not in text and "from jaxinterp.hooks._core" not in text, path
