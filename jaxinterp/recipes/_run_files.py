"""The files every recipe run leaves in ``runs/<name>/``: ``config.json``, ``results.json``
and ``report.md`` (plots are written by the recipe itself)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "shape") and hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_run(out: Path, config: Any, results: dict, report: list[str]) -> None:
    """Writes the config, the results (JSON-able after numpy/jax arrays become lists) and the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    (out / "results.json").write_text(json.dumps(_plain(results), indent=1))
    (out / "report.md").write_text("\n".join(report) + "\n")


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table (cells formatted with ``str``; floats to 4 significant digits)."""
    def cell(v):
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
