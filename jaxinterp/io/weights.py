"""Parameters as named arrays: safetensors and npz, never pickle.

A parameter pytree (a nested dict, or an Equinox module) is written as a flat mapping
from dotted key paths to arrays, the names every checkpoint format uses::

    {"blocks": [{"attn": {"W_Q": ...}}]}   ->   "blocks.0.attn.W_Q"
    Linear(weight=..., bias=...)            ->   "weight", "bias"

Only array leaves are weights; anything else (activation functions, ints in a module's
fields) is structure, and comes back from the *template* when loading. Loading into a
template checks the file against it first and raises one :class:`CheckpointError` that
lists every missing, unexpected and mismatched name, so a wrong file never half-loads.

The format follows the suffix: ``.safetensors`` (bfloat16 and friends kept as such) or
``.npz`` (read with ``allow_pickle=False``; dtypes numpy lacks, like bfloat16, are stored
as raw bits plus a small JSON entry naming the dtype). Writes are atomic: a temporary
file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxinterp.errors import CheckpointError

PyTree = Any
_NPZ_DTYPES = "__jaxinterp_dtypes__"  # npz entry: JSON {name: dtype} for non-numpy dtypes
_FORMATS = (".safetensors", ".npz")


def key_path_name(path: tuple[Any, ...]) -> str:
    """A jax key path as a dotted name: ``(GetAttrKey('blocks'), SequenceKey(0))`` -> ``blocks.0``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def is_weight(leaf: Any) -> bool:
    """Array leaves (jax, numpy or abstract) are weights; PRNG keys and the rest are not."""
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return False
    return not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def named_leaves(tree: PyTree, keep: Callable[[Any], bool] = is_weight) -> list[tuple[str, Any]]:
    """``(dotted name, leaf)`` for the leaves of ``tree`` that ``keep``; names must be unique."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    named = [(key_path_name(path), leaf) for path, leaf in flat if keep(leaf)]
    seen: set[str] = set()
    duplicates = {name for name, _ in named if name in seen or seen.add(name)}
    if duplicates:
        raise CheckpointError(f"Parameter names collide after flattening: {sorted(duplicates)}.")
    return named


def save_weights(path: str | os.PathLike, params: PyTree) -> Path:
    """Write the weight leaves of ``params`` to ``path`` (``.safetensors`` or ``.npz``).

    Returns:
        The path written.
    """
    path = Path(path)
    _check_suffix(path)
    arrays = {
        name: np.asarray(jax.device_get(leaf), order="C") for name, leaf in named_leaves(params)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".npz":
                np.savez(f, **_npz_encode(arrays))
        if path.suffix == ".safetensors":
            save_file(arrays, tmp, metadata={"format": "np"})
        os.chmod(tmp, 0o644)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights(path: str | os.PathLike, template: PyTree | None = None) -> PyTree:
    """Read weights written by :func:`save_weights` (or any safetensors / plain npz file).

    Args:
        path: a ``.safetensors`` or ``.npz`` file.
        template: a pytree with the expected structure (an Equinox module, a dict...); its
            array leaves give names, shapes and dtypes (floats are cast to the template's
            float dtype; any other dtype change is a mismatch). Without a template the
            result is a nested dict keyed by the parts of each dotted name.

    Returns:
        ``template`` with its weights replaced, or the nested dict; leaves are jax arrays,
        placed with the template leaf's sharding where it has one.

    Raises:
        CheckpointError: unreadable file, or names / shapes / dtypes that do not match.
    """
    arrays = _read(Path(path))
    if template is None:
        return _nest({name: jnp.asarray(a) for name, a in arrays.items()}, path)
    expected = dict(named_leaves(template))
    missing = sorted(expected.keys() - arrays.keys())
    unexpected = sorted(arrays.keys() - expected.keys())
    mismatched = [
        f"{name}: file {arrays[name].dtype}{list(arrays[name].shape)}, "
        f"expected {expected[name].dtype}{list(expected[name].shape)}"
        for name in sorted(expected.keys() & arrays.keys())
        if not _compatible(arrays[name], expected[name])
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            mismatch_message(f"Weights in {path}", missing, unexpected, mismatched)
        )

    def fill(path_: tuple[Any, ...], leaf: Any) -> Any:
        if not is_weight(leaf):
            return leaf
        value = arrays[key_path_name(path_)].astype(leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

    return jax.tree_util.tree_map_with_path(fill, template)


def mismatch_message(
    what: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    """One message listing every missing / unexpected / mismatched name."""
    lines = [f"{what} do not match the expected structure:"]
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mismatched", mismatched),
    ):
        if names:
            shown = names[:20] + ([f"... and {len(names) - 20} more"] if len(names) > 20 else [])
            lines.append(f"  {label} ({len(names)}): " + "; ".join(shown))
    return "\n".join(lines)


def _compatible(array: np.ndarray, leaf: Any) -> bool:
    if tuple(array.shape) != tuple(leaf.shape):
        return False
    same_kind = jnp.issubdtype(array.dtype, jnp.inexact) and jnp.issubdtype(leaf.dtype, jnp.inexact)
    return same_kind or np.dtype(array.dtype) == np.dtype(leaf.dtype)


def _check_suffix(path: Path) -> None:
    if path.suffix not in _FORMATS:
        raise CheckpointError(
            f"Unknown weights format {path.suffix!r} for {path}; use one of {_FORMATS}."
        )


def _npz_encode(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store dtypes numpy cannot name (bfloat16, float8...) as unsigned bits + a dtype note."""
    out, exotic = {}, {}
    for name, a in arrays.items():
        if name == _NPZ_DTYPES:
            raise CheckpointError(f"{_NPZ_DTYPES!r} is reserved in npz files.")
        if a.dtype.kind == "V":
            exotic[name] = a.dtype.name
            a = a.view(np.dtype(f"u{a.dtype.itemsize}"))
        out[name] = a
    if exotic:
        out[_NPZ_DTYPES] = np.array(json.dumps(exotic))
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    _check_suffix(path)
    if not path.is_file():
        raise CheckpointError(f"No weights file at {path}.")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        exotic = json.loads(str(arrays.pop(_NPZ_DTYPES, np.array("{}"))))
        for name, dtype in exotic.items():
            arrays[name] = arrays[name].view(jnp.dtype(dtype))
        return arrays
    except Exception as e:  # any library's parse error becomes one clear message
        raise CheckpointError(
            f"Could not read weights from {path} (corrupt, truncated or not a {path.suffix} "
            f"file; pickled npz is refused): {type(e).__name__}: {e}"
        ) from None


def _nest(flat: Mapping[str, Any], path: Any) -> dict[str, Any]:
    """``{"a.b": x}`` -> ``{"a": {"b": x}}``."""
    root: dict[str, Any] = {}
    for name, value in flat.items():
        node = root
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{path}: {name!r} nests under a weight of the same name.")
        if last in node:
            raise CheckpointError(f"{path}: {name!r} is both a weight and a group of weights.")
        node[last] = value
    return root
