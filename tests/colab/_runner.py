"""Runs a colab/ notebook headlessly in fast mode, so a broken notebook fails CI.

The notebooks fall in two files, so that `make test` (`--dist loadfile`: whole files per
worker) runs the two halves on different workers: `test_main_job_notebooks.py` holds the
notebooks that share the main job's run (05, 08, 09, 10; in order, in one process, over one
runs folder, as a user runs them: the later ones resume the run notebook 05 made), and
`test_notebooks.py` the independent ones.

Most notebooks run in the pytest process itself, in IPython's `InteractiveShell` (magics and
`!`/`%` lines honoured, a fresh user namespace per notebook, the working directory a fresh
folder): a Jupyter kernel would import jax, jaxinterp and matplotlib again and compile
everything from scratch, a fixed ~2-3 CPU seconds per notebook, and in process the notebooks
share the compiled programs of the library functions they call. A cell that raises fails the
test with the cell's source.
"""

import contextlib
import os
from pathlib import Path

import pytest
from o0_flags import O0_FLAGS  # tests/o0_flags.py: the flags the tests compile with

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("IPython")

ALL = sorted((Path(__file__).parent.parent.parent / "colab").glob("*.ipynb"))
# The notebooks that read the main job's run (runs/demo), in the order a user runs them.
MAIN_JOB = [p for p in ALL if p.name[:2] in ("05", "08", "09", "10")]
INDEPENDENT = [p for p in ALL if p not in MAIN_JOB]
# In process, a notebook compiles with the tests' LLVM -O0 flags (tests/conftest.py):
# compiling is most of a fast-mode notebook's time, and -O0 compiles about 40% faster. These
# notebooks spend more of theirs running training loops, where -O0's slower code costs more
# than it saves (kernel CPU seconds at -O0 against the default level, re-measured on a loaded
# machine: 06 27.5 vs 21, 11 36 vs 39, 12 76 vs 54, 13 60 vs 48; 13's IOI training alone 39
# vs 21), so they share one Jupyter kernel that compiles at the default level
# (`default_level_kernel`). Every notebook's asserts hold at both levels (notebook 13's
# fast-mode model is a seed and length checked at each).
RUN_BOUND = ("06", "11", "12", "13")


def run_notebook(path: Path, runs_dir: Path, tmp_path: Path, monkeypatch, kernel=None) -> None:
    """Runs ``path`` in fast mode over ``runs_dir``: a run-bound notebook in ``kernel`` (see
    :func:`default_level_kernel`), any other in this process."""
    monkeypatch.setenv("JAXINTERP_FAST", "1")
    monkeypatch.setenv("JAXINTERP_RUNS_DIR", str(runs_dir))
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source if nb.cells[0].cell_type == "code" else nb.cells[1].source
    assert "pip install" in first, "notebooks start with a Colab install cell"
    if path.name[:2] in RUN_BOUND:
        assert kernel is not None, f"{path.name} runs in a kernel at XLA's default level"
        _run_in_kernel(nb, kernel, tmp_path, {"JAXINTERP_FAST": "1", "JAXINTERP_RUNS_DIR": str(runs_dir)})
    else:
        monkeypatch.chdir(tmp_path)
        _run_in_process(nb, path.name)


@contextlib.contextmanager
def default_level_kernel(cwd: Path):
    """One Jupyter kernel, compiling at XLA's default level, for the run-bound notebooks of a
    test file (each starts with ``%reset -f``: a fresh namespace, as in process). Shut down on
    exit, so that its CPU time counts in the last test's teardown."""
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client import AsyncKernelManager
    from jupyter_client.utils import run_sync

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in O0_FLAGS]
    km = AsyncKernelManager(kernel_name="python3")
    run_sync(km.start_kernel)(env={**os.environ, "XLA_FLAGS": " ".join(flags)}, cwd=str(cwd))
    try:
        yield km, nbclient
    finally:
        run_sync(km.shutdown_kernel)(now=True)


def _run_in_kernel(nb, kernel, cwd: Path, env: dict) -> None:
    km, nbclient = kernel
    prelude = [nbformat.v4.new_code_cell(f"import os\nos.chdir({str(cwd)!r})\nos.environ.update({env!r})"),
               nbformat.v4.new_code_cell("%reset -f")]
    nb.cells = prelude + nb.cells
    client = nbclient.NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors


def _shell():
    """The process's IPython shell (one per process), with no history file and every display
    format computed (as a notebook front end asks for them)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if not InteractiveShell.initialized():
        config = Config()
        config.HistoryManager.enabled = False
        InteractiveShell.instance(config=config)
    shell = InteractiveShell.instance()
    shell.display_formatter.active_types = list(shell.display_formatter.format_types)
    return shell


def _run_in_process(nb, name: str) -> None:
    shell = _shell()
    shell.reset(new_session=False)  # a fresh user namespace
    try:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            result = shell.run_cell(cell.source, store_history=False)
            error = result.error_before_exec or result.error_in_exec
            if error is not None:
                raise AssertionError(f"{name}, cell {i} raised {type(error).__name__}: {error}\n"
                                     f"--- the cell ---\n{cell.source}") from error
    finally:
        shell.reset(new_session=False)  # free the notebook's arrays
