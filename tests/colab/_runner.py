"""Runs a colab/ notebook headlessly in fast mode, so a broken notebook fails CI.

The notebooks fall in two files, so that `make test` (`--dist loadfile`: whole files per
worker) runs the two halves on different workers: `test_main_job_notebooks.py` holds the
notebooks that share the main job's run (05, 08, 09, 10; in order, in one process, over one
runs folder, as a user runs them: the later ones resume the run notebook 05 made), and
`test_notebooks.py` the independent ones.
"""

import os
from pathlib import Path

import pytest
from o0_flags import O0_FLAGS  # tests/o0_flags.py: the flags the tests compile with

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ALL = sorted((Path(__file__).parent.parent.parent / "colab").glob("*.ipynb"))
# The notebooks that read the main job's run (runs/demo), in the order a user runs them.
MAIN_JOB = [p for p in ALL if p.name[:2] in ("05", "08", "09", "10")]
INDEPENDENT = [p for p in ALL if p not in MAIN_JOB]
# The kernels inherit the tests' LLVM -O0 flags (tests/conftest.py): compiling is most of a
# fast-mode notebook's time, and -O0 compiles about 40% faster. These notebooks spend theirs
# running training loops instead, where -O0's slower code costs more than it saves (CPU
# seconds at -O0 against the default level: 06 41 vs 27, 11 64 vs 53, 12 84 vs 62, 13 55 vs
# 38), so their kernels compile at the default level. Every notebook's asserts hold at both
# levels (notebook 13's fast-mode model is a seed and length checked at each).
RUN_BOUND = ("06", "11", "12", "13")


def run_notebook(path: Path, runs_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JAXINTERP_FAST", "1")
    monkeypatch.setenv("JAXINTERP_RUNS_DIR", str(runs_dir))
    if path.name[:2] in RUN_BOUND:
        flags = os.environ.get("XLA_FLAGS", "").split()
        monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in flags if f not in O0_FLAGS))
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source if nb.cells[0].cell_type == "code" else nb.cells[1].source
    assert "pip install" in first, "notebooks start with a Colab install cell"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
