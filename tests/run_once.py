"""Work done once per test run and shared by its xdist workers: the first worker to ask
builds under a file lock in the run's shared temporary folder, and the others wait for it
and read what it built. A module of its own name (see tests/o0_flags.py for why)."""

import contextlib
import fcntl
import os
from pathlib import Path

import pytest


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The temporary folder this run's xdist workers share, or ``None`` outside xdist."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent


@contextlib.contextmanager
def run_lock(root: Path, name: str):
    """Held by one worker at a time (released when the lock file closes)."""
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
