"""The notebooks that share the main job's run: 05 makes it (fast mode), 08-10 resume it."""

import pytest
from _runner import MAIN_JOB, run_notebook


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("main_job_notebook_runs")


@pytest.mark.parametrize("path", MAIN_JOB, ids=[p.name for p in MAIN_JOB])
def test_notebook_runs(path, runs_dir, tmp_path, monkeypatch):
    run_notebook(path, runs_dir, tmp_path, monkeypatch)
