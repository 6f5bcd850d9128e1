"""The notebooks that make their own runs, and the public-API rule for every notebook."""

import pytest
from _runner import ALL, INDEPENDENT, MAIN_JOB, RUN_BOUND, default_level_kernel, run_notebook


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with default_level_kernel(tmp_path_factory.mktemp("kernel")) as k:
        yield k


@pytest.mark.parametrize("path", INDEPENDENT, ids=[p.name for p in INDEPENDENT])
def test_notebook_runs(path, tmp_path, monkeypatch, request):
    kernel = request.getfixturevalue("kernel") if path.name[:2] in RUN_BOUND else None
    run_notebook(path, tmp_path / "runs", tmp_path, monkeypatch, kernel)


def test_every_notebook_is_run_and_imports_only_the_public_api():
    assert sorted(MAIN_JOB + INDEPENDENT) == ALL and len(MAIN_JOB) == 4
    for path in ALL:
        text = path.read_text()
        assert "jaxinterp._" not in text and "from jaxinterp.hooks._core" not in text, path
