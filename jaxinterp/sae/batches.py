"""Activation batches as a function of the step: arrays, iterators, or an activation store.

The training loop asks for ``batch(step)`` and resumes exactly because the answer
depends on nothing else. A batch is a dict ``{site: [batch_size, d]}`` of host arrays
(one site, ``"x"``, for a plain array; ``"x"`` and ``"y"`` for a transcoder's pairs).

* :class:`ArrayBatches`: rows of an array (``np.ndarray``, ``np.memmap`` or a dict of
  them), in an order reshuffled every epoch from ``(seed, epoch)``: row ``i`` of step
  ``s`` is ``perm_epoch[(s * batch_size + i) % n]``.
* :class:`IteratorBatches`: any iterator of batches (arrays or dicts). Iterators cannot
  jump, so a resumed run skips the first ``step`` batches of a fresh iterator: give it
  an iterable that restarts from the beginning to resume exactly.
* :class:`jaxinterp.sae.store.ActivationStore`: activations of a model, generated on
  the fly through a bounded shuffling buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from jaxinterp.errors import DataError, ShapeError


def as_site_dict(batch: Any) -> dict[str, np.ndarray]:
    """An array, ``(x, y)`` pair or dict of arrays as ``{name: 2-D array}``."""
    if isinstance(batch, Mapping):
        out = dict(batch)
    elif isinstance(batch, tuple) and len(batch) == 2:
        out = {"x": batch[0], "y": batch[1]}
    else:
        out = {"x": batch}
    for name, value in out.items():
        if not hasattr(value, "shape") or len(value.shape) < 2:
            raise ShapeError(f"Activations {name!r} must be [n, d] (or [..., d]); got "
                             f"{getattr(value, 'shape', type(value).__name__)}.")
        if len(value.shape) > 2:
            out[name] = value.reshape(-1, value.shape[-1])
    return out


def check_finite(batch: Mapping[str, np.ndarray], where: str) -> None:
    """:class:`DataError` if any activation is NaN or infinite (host arrays)."""
    for name, value in batch.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            raise DataError(f"{bad} non-finite activations in {name!r} ({where}); an SAE cannot "
                            "train on NaN or inf. Check the model (dtype overflow?) or the data.")


class ArrayBatches:
    """Shuffled batches of rows of in-memory (or memory-mapped) activations."""

    def __init__(self, data: Any, batch_size: int, seed: int = 0, check: bool = True) -> None:
        self.data = as_site_dict(data)
        sizes = {k: v.shape[0] for k, v in self.data.items()}
        if len(set(sizes.values())) != 1:
            raise ShapeError(f"Activation arrays must have the same number of rows; got {sizes}.")
        self.n = next(iter(sizes.values()))
        if self.n < batch_size:
            raise DataError(f"{self.n} activation rows cannot fill one batch of {batch_size}.")
        if check:
            for start in range(0, self.n, 1 << 16):
                check_finite({k: v[start:start + (1 << 16)] for k, v in self.data.items()},
                             f"rows {start}..")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def sites(self) -> dict[str, int]:
        return {k: v.shape[-1] for k, v in self.data.items()}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return self._perms[epoch]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        pos = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(pos, self.n)
        rows = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            rows[mask] = self._perm(int(epoch))[offsets[mask]]
        order = np.argsort(rows)  # sorted reads are kinder to memory maps
        out = {}
        for k, v in self.data.items():
            taken = np.empty((self.batch_size, v.shape[-1]), np.float32)
            taken[order] = np.asarray(v[rows[order]], np.float32)
            out[k] = taken
        return out


class IteratorBatches:
    """Batches pulled from an iterator, in order; skips ahead to the requested step and
    keeps the last ``LOOKBACK`` batches (the trainer reads the first few twice: once to
    estimate the input scale)."""

    LOOKBACK = 16

    def __init__(self, batches: Iterable[Any], check: bool = True) -> None:
        self._it: Iterator[Any] = iter(batches)
        self._pulled = 0  # batches taken from the iterator so far
        self._recent: dict[int, dict[str, np.ndarray]] = {}
        self.check = check

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        if step in self._recent:
            return self._recent[step]
        if step < self._pulled:
            raise DataError(f"An iterator cannot go back to batch {step} (at {self._pulled}).")
        while self._pulled <= step:
            try:
                batch = next(self._it)
            except StopIteration:
                raise DataError(f"The iterator of activation batches ran out after "
                                f"{self._pulled} batches; give it one per training step.") from None
            self._pulled += 1
        batch = {k: np.asarray(v, np.float32) for k, v in as_site_dict(batch).items()}
        if self.check:
            check_finite(batch, f"batch {step}")
        self._recent[step] = batch
        if len(self._recent) > self.LOOKBACK:
            self._recent.pop(min(self._recent))
        return batch

    @property
    def sites(self) -> dict[str, int]:
        first = self._recent[max(self._recent)] if self._recent else self(self._pulled)
        return {k: v.shape[-1] for k, v in first.items()}
