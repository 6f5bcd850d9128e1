"""What a training run is asked to do (:class:`TrainConfig`) and what it gives back.

Steps are counted in updates: "step ``s``" is the state after ``s`` optimiser updates,
and update ``i`` (0-based) sees ``batch_fn(i)`` and the key ``fold_in(key, i)``. So a
checkpoint at step ``s`` says exactly where the data and the randomness resume.

Every run writes to ``<runs_dir>/<name>/``: ``config.json``, ``metrics.json`` and, when
``checkpoint_every > 0``, ``checkpoints/``. Running the same command again resumes from
the latest checkpoint there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePath
from typing import Any

from jaxinterp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run's schedule and where it writes.

    Attributes:
        steps: total optimiser updates (a resumed run continues up to this many).
        seed: seeds the RNG key handed to the loss (``fold_in(key(seed), step)``).
        log_every: fetch loss and metrics to the host, log them, every this many steps.
        eval_every: run ``eval_fn`` every this many steps (0: only after the last step).
        checkpoint_every: save a checkpoint every this many steps and after the last one
            (0: never save, never resume).
        keep_checkpoints: keep this many most recent checkpoints.
        name: the run's folder under ``runs_dir``.
        runs_dir: parent folder of all runs.
        progress: show a tqdm progress bar.
    """

    steps: int
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    name: str = "train"
    runs_dir: str = "runs"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 0,
            "log_every": self.log_every >= 1,
            "eval_every": self.eval_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 1,
        }
        for field, ok in checks.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not ok:
                raise ConfigError(
                    f"TrainConfig.{field} must be a non-negative int "
                    f"(log_every, keep_checkpoints >= 1); got {value!r}."
                )
        parts = PurePath(self.name).parts
        if not self.name or PurePath(self.name).is_absolute() or ".." in parts:
            raise ConfigError(
                f"TrainConfig.name must be a relative folder name; got {self.name!r}."
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def to_json(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, PurePath) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        params: the trained parameters, same structure as the ``params`` passed in.
        opt_state: the final optimiser state.
        state: the final extra state (``train(..., state=...)``), or None.
        step: the step reached (``config.steps``).
        metrics: every logged record, including those of earlier (resumed) processes.
        run_dir: the run's folder.
        resumed_from: the checkpoint step this process started from, or None.
    """

    params: Any
    opt_state: Any
    state: Any
    step: int
    metrics: list[dict[str, Any]]
    run_dir: Path
    resumed_from: int | None
