"""Training-state checkpoints through orbax: atomic, keep-N, verified, resumable.

A checkpoint is everything needed to continue a run as if it had never stopped: the
parameters, the optimiser state, the step (which is also the data position, because
batches are a function of the step) and the RNG key. Layout of one run's folder::

    checkpoints/
      10/state/...     the state's array leaves, flattened in pytree order (OCDBT/zarr)
      10/meta/...      JSON: step, run fingerprint, and each leaf's name, shape, dtype, CRC32
      15/...
      corrupt-20/      a step that failed to restore, moved aside (see below)

Why it is safe to kill a run at any moment (even ``kill -9`` during a save):

* orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to
  ``<step>`` only once every file is written; a rename is atomic, so a half-written step
  is never listed, and leftover tmp folders are deleted when the directory is next opened.
  Saves are synchronous, so a step that is listed was completely written.
* Keep-N deletes old steps only after the new one is committed.
* Restoring verifies each leaf's CRC32 (orbax's compression does not catch garbled bytes).
  A step that cannot be read is skipped with a warning when an older one restores, and
  moved to ``corrupt-<step>`` so that it is no longer "latest"; if none restores the error
  is a :class:`CheckpointError` naming each step and what was wrong with it.
* The fingerprint (a small JSON dict of the run's configuration) is compared with the one
  stored in the checkpoint; resuming under a different configuration names the keys.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.io.weights import key_path_name, mismatch_message, named_leaves

PyTree = Any
_FORMAT = "jaxinterp.train_state.v1"


class _Unreadable(Exception):
    """A step's files are missing, truncated or garbled (internal; never escapes)."""


class Checkpointer:
    """Save and restore training state in ``directory`` (an orbax ``CheckpointManager``).

    Args:
        directory: the checkpoint folder (created if needed).
        keep: how many most recent steps to keep.
        fingerprint: JSON-able dict describing the run; checked against existing steps.
    """

    def __init__(
        self, directory: str | os.PathLike, *, keep: int = 3, fingerprint: Mapping | None = None
    ) -> None:
        if keep < 1:
            raise ConfigError(f"keep must be >= 1, got {keep}.")
        self.directory = Path(directory).absolute()
        self.fingerprint = _json_normalise(fingerprint) if fingerprint is not None else None
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        if self.fingerprint is not None:
            for step in reversed(self.steps()):
                try:
                    self._check_fingerprint(self._read_meta(step), step)
                    break
                except _Unreadable:
                    continue

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: PyTree) -> None:
        """Write ``state`` (array leaves; PRNG keys allowed) as ``step``; returns once committed."""
        arrays, records = {}, []
        for i, (name, leaf) in enumerate(named_leaves(state, _is_array)):
            is_key = _is_key(leaf)
            data = jax.random.key_data(leaf) if is_key else jnp.asarray(leaf)
            arrays[f"{i:06d}"] = data
            shape, dtype, crc = list(data.shape), str(data.dtype), _crc32(data)
            records.append(dict(name=name, shape=shape, dtype=dtype, prng_key=is_key, crc32=crc))
        meta = dict(format=_FORMAT, step=int(step), fingerprint=self.fingerprint, leaves=records)
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            raise CheckpointError(f"Step {step} already exists in {self.directory}.") from None
        self._manager.wait_until_finished()

    def restore(self, template: PyTree, step: int | None = None) -> tuple[int, PyTree]:
        """Read a step into the structure, dtypes and shardings of ``template``.

        Args:
            template: a pytree like the saved state (concrete arrays give the placement).
            step: which step; default the latest readable one, falling back (with a
                warning) past unreadable newer steps, which are moved aside.

        Returns:
            ``(step, state)``.
        """
        self._manager.reload()
        steps = self.steps()
        if not steps or (step is not None and step not in steps):
            wanted = "" if step is None else f" for step {step}"
            raise CheckpointError(f"No checkpoint{wanted} in {self.directory} (steps: {steps}).")
        candidates = [step] if step is not None else steps[::-1]
        failures: list[str] = []
        for s in candidates:
            try:
                meta = self._read_meta(s)
                self._check_fingerprint(meta, s)
                state = self._read_state(s, meta, template)
            except _Unreadable as e:
                failures.append(f"step {s}: {e}")
                continue
            if failures:
                self._move_aside(candidates[: len(failures)])
                warnings.warn(
                    f"Skipped unreadable checkpoint(s) in {self.directory} ({'; '.join(failures)}); "
                    f"moved them to corrupt-<step> and restored step {s}.",
                    stacklevel=2,
                )
            return s, state
        raise CheckpointError(
            f"No readable checkpoint in {self.directory}; every step is corrupt or incomplete:\n  "
            + "\n  ".join(failures)
            + "\nDelete the folder (or those steps) to start over."
        )

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _read_meta(self, step: int) -> dict:
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
        except Exception as e:
            raise _Unreadable(f"metadata unreadable ({_short(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("step") != step:
            raise _Unreadable("metadata is not a jaxinterp training state for this step")
        return meta

    def _check_fingerprint(self, meta: dict, step: int) -> None:
        if self.fingerprint is None:
            return
        saved, now = _flatten_dict(meta.get("fingerprint") or {}), _flatten_dict(self.fingerprint)
        show = lambda d, k: repr(d[k]) if k in d else "absent"  # noqa: E731
        diffs = [
            f"{k} (checkpoint {show(saved, k)}, now {show(now, k)})"
            for k in sorted(saved.keys() | now.keys())
            if k not in saved or k not in now or saved[k] != now[k]
        ]
        if diffs:
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} was written by a different "
                f"configuration; mismatched keys: {'; '.join(diffs)}. Use a new run name, "
                "or delete the folder to start over."
            )

    def _read_state(self, step: int, meta: dict, template: PyTree) -> PyTree:
        named = named_leaves(template, _is_array)
        saved = {r["name"]: r for r in meta["leaves"]}
        targets = {}
        for name, leaf in named:
            data = jax.eval_shape(jax.random.key_data, leaf) if _is_key(leaf) else leaf
            targets[name] = jax.ShapeDtypeStruct(
                data.shape, data.dtype, sharding=_sharding_of(leaf)
            )
        missing = sorted(targets.keys() - saved.keys())
        unexpected = sorted(saved.keys() - targets.keys())
        mismatched = [
            f"{n}: checkpoint {saved[n]['dtype']}{saved[n]['shape']}, expected "
            f"{targets[n].dtype}{list(targets[n].shape)}"
            for n in sorted(targets.keys() & saved.keys())
            if saved[n]["shape"] != list(targets[n].shape)
            or saved[n]["dtype"] != str(targets[n].dtype)
        ]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                mismatch_message(
                    f"Checkpoint step {step} in {self.directory}", missing, unexpected, mismatched
                )
            )
        order = [r["name"] for r in meta["leaves"]]
        abstract = {f"{i:06d}": targets[name] for i, name in enumerate(order)}
        try:
            arrays = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise _Unreadable(f"arrays unreadable ({_short(e)})") from None
        values = {}
        for i, name in enumerate(order):
            value, crc = arrays[f"{i:06d}"], saved[name]["crc32"]
            if crc is not None and _crc32(value) not in (None, crc):
                raise _Unreadable(f"checksum mismatch in {name}")
            values[name] = value

        def fill(path: tuple[Any, ...], leaf: Any) -> Any:
            if not _is_array(leaf):
                return leaf
            value = values[key_path_name(path)]
            return (
                jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
                if _is_key(leaf)
                else value
            )

        return jax.tree_util.tree_map_with_path(fill, template)

    def _move_aside(self, steps: list[int]) -> None:
        if jax.process_index() != 0:
            return
        for s in steps:
            target, n = self.directory / f"corrupt-{s}", 1
            while target.exists():
                target, n = self.directory / f"corrupt-{s}-{n}", n + 1
            os.replace(self.directory / str(s), target)
        self._manager.reload()


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _is_key(leaf: Any) -> bool:
    return _is_array(leaf) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _sharding_of(leaf: Any) -> jax.sharding.Sharding:
    """Where a restored leaf goes: like the template's array, else the default device."""
    if isinstance(leaf, jax.Array):
        return (jax.random.key_data(leaf) if _is_key(leaf) else leaf).sharding
    sharding = None if _is_key(leaf) else getattr(leaf, "sharding", None)
    return sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _crc32(array: Any) -> int | None:
    """CRC32 of the bytes, for arrays this process holds entirely (else None: not checked)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return None
    host = np.ascontiguousarray(np.asarray(jax.device_get(array)))
    return zlib.crc32(host.view(np.uint8).reshape(-1))


def _json_normalise(obj: Mapping) -> dict:
    try:
        return json.loads(json.dumps(dict(obj), sort_keys=True))
    except TypeError as e:
        raise ConfigError(f"The run fingerprint must be JSON-serialisable: {e}") from None


def _flatten_dict(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
