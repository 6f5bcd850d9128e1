"""Sweep targets, and how they are packed into rows and chunks (host-side numpy).

A *target* is one patched run: the layer it enters at, its first changed position
``start``, and what it selects (``pos``/``head``, -1 for all). Targets are packed two to
a row (see :mod:`jaxinterp.interp._fast_forward`) and rows into chunks of a fixed size,
so every chunk has the same shapes and one compiled program serves the whole sweep.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from jaxinterp.errors import HookNameError, ShapeError
from jaxinterp.models.hook_specs import BY_ALIAS, spec

# The activations a sweep can patch, by their TransformerLens short names.
_SWEPT = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "result", "q", "k", "v",
          "pattern")
# component -> (hook suffix inside a block, has a head axis), read from the hook registry
COMPONENTS: dict[str, tuple[str, bool]] = {
    c: (BY_ALIAS[c].name, BY_ALIAS[c].axis("head") is not None) for c in _SWEPT}
BY = {False: (("layer", "pos"), ("layer",)), True: (("layer", "head"), ("layer", "head", "pos"))}


def unknown_component(component: str) -> HookNameError:
    """The error for a name that is not a component, pointing at the one meant."""
    meant = spec(component) or spec(f"attn.{component}") or spec(f"mlp.{component}")
    hint = ""
    if meant is not None and meant.alias in COMPONENTS:
        hint = f" {component!r} is the hook {meant.name!r}: its component is {meant.alias!r}."
    return HookNameError(f"Unknown component {component!r}.{hint} Valid components: "
                         f"{', '.join(COMPONENTS)}.")


def resolve(component: str, by: tuple[str, ...] | None, hook_names: list[str]) -> tuple[str, tuple[str, ...]]:
    """Checks ``component`` and ``by``; returns ``(hook suffix, by)``."""
    if component not in COMPONENTS:
        raise unknown_component(component)
    suffix, headed = COMPONENTS[component]
    if f"blocks.0.{suffix}" not in hook_names:
        raise HookNameError(f"this model has no {component!r} activation (hook {suffix!r}); "
                            f"e.g. attention-only models have no MLP")
    by = BY[headed][0] if by is None else tuple(by)
    if by not in BY[headed]:
        raise ShapeError(f"component {component!r} is swept by one of {BY[headed]}, got {by}")
    return suffix, by


@dataclasses.dataclass(frozen=True)
class Targets:
    layer: np.ndarray
    start: np.ndarray
    pos: np.ndarray
    head: np.ndarray
    shape: tuple[int, ...]


def enumerate_targets(by: tuple[str, ...], n_layers: int, n_heads: int, n_pos: int) -> Targets:
    """Every target of a sweep, in C order of the result array ``by``."""
    sizes = {"layer": n_layers, "head": n_heads, "pos": n_pos}
    shape = tuple(sizes[a] for a in by)
    grid = np.array(list(itertools.product(*[range(n) for n in shape])), dtype=np.int32)
    grid = grid.reshape(-1, len(by))
    col = {a: grid[:, i] for i, a in enumerate(by)}
    none = np.full(len(grid), -1, np.int32)
    pos = col.get("pos", none)
    return Targets(col["layer"], np.maximum(pos, 0), pos, col.get("head", none), shape)


def pack(t: Targets, n_pos: int, chunk_size: int, n_layers: int) -> tuple[list[dict], np.ndarray]:
    """Rows of up to two targets, grouped in chunks of equal shape.

    Returns ``(chunks, index)``: each chunk a dict of int32 arrays, and ``index[c, row, seg]``
    the flat target index of each packed segment (-1 for padding).
    """
    by_layer: list[list[tuple[int, ...]]] = []
    for layer in np.unique(t.layer):
        ids = np.flatnonzero(t.layer == layer)
        ids = ids[np.argsort(t.start[ids], kind="stable")]  # longest suffix first
        rows, i, j = [], 0, len(ids) - 1
        while i <= j:  # pair the longest suffix left with the shortest that fits beside it
            n_i, n_j = n_pos - t.start[ids[i]], n_pos - t.start[ids[j]]
            if i < j and n_i + n_j <= n_pos + 1:
                rows.append((ids[i], ids[j]))
                i, j = i + 1, j - 1
            else:
                rows.append((ids[i],))
                i += 1
        by_layer.append(rows)
    all_rows = [r for rows in by_layer for r in rows]
    n_tok = max(sum(n_pos - t.start[k] for k in r) for r in all_rows)
    # Rows per chunk: about chunk_size targets, never mixing layers (no wasted layers).
    want = max(1, chunk_size * len(all_rows) // len(t.layer))
    most = max(len(rows) for rows in by_layer)
    per_chunk = -(-most // -(-most // want))
    groups = [rows[i:i + per_chunk] for rows in by_layer for i in range(0, len(rows), per_chunk)]
    n_chunks = len(groups)
    chunks, index = [], np.full((n_chunks, per_chunk, 2), -1, np.int64)
    for c in range(n_chunks):
        part = groups[c]
        arr = {
            "tok_pos": np.zeros((per_chunk, n_tok), np.int32),
            "tok_seg": np.full((per_chunk, n_tok), 2, np.int32),
            # three segments per row: two targets and the padding
            "seg_layer": np.full((per_chunk, 3), n_layers, np.int32),
            "seg_start": np.zeros((per_chunk, 3), np.int32),
            "seg_off": np.zeros((per_chunk, 3), np.int32),
            "seg_pos": np.full((per_chunk, 3), -1, np.int32),
            "seg_head": np.full((per_chunk, 3), -1, np.int32),
        }
        for r, row in enumerate(part):
            off = 0
            for s, k in enumerate(row):
                n = n_pos - t.start[k]
                arr["tok_pos"][r, off:off + n] = np.arange(t.start[k], n_pos)
                arr["tok_seg"][r, off:off + n] = s
                arr["seg_layer"][r, s], arr["seg_start"][r, s] = t.layer[k], t.start[k]
                arr["seg_off"][r, s], arr["seg_pos"][r, s] = off, t.pos[k]
                arr["seg_head"][r, s] = t.head[k]
                index[c, r, s] = k
                off += n
        arr["l_min"] = np.int32(min(t.layer[k] for row in part for k in row))
        chunks.append(arr)
    return chunks, index
