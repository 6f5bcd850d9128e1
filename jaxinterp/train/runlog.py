"""A run's JSON record: ``config.json`` and ``metrics.json``, written atomically.

``metrics.json`` is a list of records, one per logged step::

    [{"step": 10, "loss": 0.52, "steps_per_s": 180.0, ...}, {"step": 20, ...}, ...]

Files are replaced whole (write a temporary file, then ``os.replace``), so a reader, or
a run killed mid-write, only ever sees a complete old or new file. Rewriting the whole
list costs time proportional to its length, so log-only updates are written at most
every few seconds; every checkpoint, eval and the end of the run write immediately.
Because of that, when a run resumes from step ``s`` the file already holds every record
up to ``s``: records after ``s`` (which the resumed run will redo) are dropped, and the
final file matches an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_FLUSH_SECONDS = 5.0


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json_value(value: Any) -> Any:
    """Host scalars/arrays as JSON numbers or lists; NaN and inf become None."""
    array = np.asarray(value)
    if array.dtype.kind == "b":
        return array.tolist()
    if array.dtype.kind not in "iuf":
        return str(value)
    if array.ndim == 0:
        number = array.item()
        return None if isinstance(number, float) and not math.isfinite(number) else number
    return [to_json_value(v) for v in array]


class RunLog:
    """Collects metric records for one run and keeps ``metrics.json`` up to date.

    Args:
        run_dir: the run's folder.
        config: JSON-able description written once to ``config.json``.
        resume_step: when resuming, keep the existing records up to this step.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None) -> None:
        self.path = run_dir / "metrics.json"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = []
            self.records = [
                r for r in old if isinstance(r, dict) and r.get("step", 0) <= resume_step
            ]
        write_json_atomic(run_dir / "config.json", config)
        self._last_flush = time.monotonic()
        self.flush()

    def record(self, step: int, values: dict[str, Any], *, flush: bool = False) -> None:
        """Add ``values`` to the record of ``step`` (one record per step)."""
        values = {k: to_json_value(v) for k, v in values.items()}
        if self.records and self.records[-1]["step"] == step:
            self.records[-1].update(values)
        else:
            self.records.append({"step": step, **values})
        if flush or time.monotonic() - self._last_flush >= _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        write_json_atomic(self.path, self.records)
        self._last_flush = time.monotonic()
