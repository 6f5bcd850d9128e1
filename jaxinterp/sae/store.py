"""The activation store: a model's activations at hook sites, through a bounded shuffle.

Training an SAE needs many more activations than fit in memory, and consecutive tokens
of one context are strongly correlated, so activations are generated on the fly and
shuffled in a buffer::

    generation g = token batches g*M .. g*M + M - 1     (M forward passes of the model)
    buffer_g     = their activations at every site, [rows, d] each, permuted by (seed, g)
    batch(step)  = rows j*B .. j*B + B - 1 of buffer_g,  g, j = divmod(step, steps_per_gen)

Everything is a function of the step, so a resumed run regenerates exactly the batches
an uninterrupted run would have seen, and memory is one buffer (``buffer_tokens`` rows
per site) whatever the number of training tokens. Several sites come from one forward
pass (their rows stay aligned: row ``i`` of every site is the same token, which is what
a transcoder needs). With ``cache_dir``, each generation's activations are written once
as ``.npy`` shards (one per site) under a key of the model's weights, the sites and the
token source, and later runs read them instead of running the model. (npy rather than
array_record: a generation is read and written whole, which is one contiguous read for an
npy file, while array_record's per-record framing and compression serve random access to
many small records; npy also needs nothing beyond numpy and any tool can open the shards.)

The model is anything :func:`jaxinterp.run_with_cache` accepts: a ``HookedTransformer``
or any function of the tokens that tags values with ``ji.hook``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import DataError, HookNameError, unknown_name_message
from jaxinterp.hooks import hook_names, run_with_cache


class ActivationStore:
    """Batches ``{site: [batch_size, d]}`` of a model's activations, a function of the step.

    Args:
        model: a ``HookedTransformer`` or any function ``tokens -> output`` with hook tags.
        tokens: token batches: an object with ``.batch(i)`` (``TokenWindows``), a callable
            ``i -> int array [b, pos]``, or a 2-D array of sequences (cut into batches of
            ``model_batch`` rows, cycling).
        sites: hook names to read (one forward pass gives all of them).
        batch_size: activation rows per training batch.
        buffer_tokens: rows per generation (per site); the shuffling window.
        model_batch: sequences per forward pass when ``tokens`` is an array.
        skip_first: positions dropped from the start of every sequence (e.g. a BOS).
        seed: permutation seed.
        cache_dir: optional folder for ``.npy`` activation shards reused by later runs.
        cache_key: extra text for the cache key (the key covers the model's weights, the
            sites and the token source; give a plain function's name or version here).
    """

    def __init__(self, model: Any, tokens: Any, sites: str | Sequence[str], *, batch_size: int,
                 buffer_tokens: int = 1 << 16, model_batch: int = 16, skip_first: int = 0,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 cache_key: str = "") -> None:
        self.model = model
        self.sites = None  # filled below: {site: width}
        names = [sites] if isinstance(sites, str) else list(sites)
        if not names:
            raise DataError("ActivationStore needs at least one hook site.")
        self.batch_size, self.seed, self.skip_first = int(batch_size), int(seed), int(skip_first)
        self._tokens = _token_source(tokens, model_batch)
        first = np.asarray(self._tokens(0))
        if first.ndim != 2 or first.shape[1] <= self.skip_first:
            raise DataError(f"Token batches must be [batch, pos] with pos > skip_first; got {first.shape}.")
        self._check_sites(names, first)
        self._reader = _Reader(tuple(names), self.skip_first)
        shapes = eqx.filter_eval_shape(_read, self._reader, model, jnp.asarray(first))
        self.sites = {n: int(shapes[n].shape[-1]) for n in names}
        self._names = names
        rows_per_forward = first.shape[0] * (first.shape[1] - self.skip_first)
        self.forwards_per_generation = max(1, math.ceil(buffer_tokens / rows_per_forward))
        self.rows_per_generation = self.forwards_per_generation * rows_per_forward
        self.steps_per_generation = self.rows_per_generation // self.batch_size
        if self.steps_per_generation < 1:
            raise DataError(f"buffer_tokens={buffer_tokens} gives {self.rows_per_generation} rows, "
                            f"fewer than one batch of {self.batch_size}.")
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / self._key(first, cache_key)
        self._buffer: tuple[int, dict[str, jax.Array]] | None = None
        self.generated_tokens, self.generation_seconds, self.cached_generations = 0, 0.0, 0

    # The batch function ---------------------------------------------------------------
    def __call__(self, step: int) -> dict[str, jax.Array]:
        g, j = divmod(int(step), self.steps_per_generation)
        if self._buffer is None or self._buffer[0] != g:
            self._buffer = (g, self._generation(g))
        start = j * self.batch_size
        return {n: jax.lax.dynamic_slice_in_dim(v, start, self.batch_size) for n, v in self._buffer[1].items()}

    def fingerprint(self) -> dict[str, Any]:
        """What defines the stream (stored with checkpoints; resuming under another is refused)."""
        return {"sites": self.sites, "batch_size": self.batch_size, "seed": self.seed,
                "rows_per_generation": self.rows_per_generation, "skip_first": self.skip_first,
                "tokens": getattr(self._tokens, "describe", "callable")}

    def tokens_per_second(self) -> float:
        """Activation rows generated per second of model time so far (cached reads excluded)."""
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    # Generations ----------------------------------------------------------------------
    def _generation(self, g: int) -> dict[str, jax.Array]:
        block = self._read_cache(g)
        if block is None:
            start = time.perf_counter()
            parts: dict[str, list[jax.Array]] = {n: [] for n in self._names}
            for i in range(self.forwards_per_generation):
                toks = jnp.asarray(self._tokens(g * self.forwards_per_generation + i))
                acts = _read(self._reader, self.model, toks)
                for n in self._names:
                    parts[n].append(acts[n])
            block = {n: jnp.concatenate(p) for n, p in parts.items()}
            jax.block_until_ready(block)
            self.generation_seconds += time.perf_counter() - start
            self.generated_tokens += self.rows_per_generation
            self._check_finite(block, g)
            self._write_cache(g, block)
        perm = jax.random.permutation(jax.random.fold_in(jax.random.key(self.seed), g),
                                      self.rows_per_generation)
        return {n: v[perm] for n, v in block.items()}

    def _check_finite(self, block: dict[str, jax.Array], g: int) -> None:
        for n, v in block.items():
            if not bool(jnp.isfinite(v).all()):
                raise DataError(f"Non-finite activations at {n!r} in generation {g} (token batches "
                                f"{g * self.forwards_per_generation}..); an SAE cannot train on NaN "
                                "or inf. Check the model's dtype (overflow) and the tokens.")

    def _check_sites(self, names: list[str], first: np.ndarray) -> None:
        known = hook_names(self.model, jnp.asarray(first[:1]))
        for n in names:
            if n not in known:
                raise HookNameError(unknown_name_message("site", n, known))

    # On-disk cache --------------------------------------------------------------------
    def _key(self, first: np.ndarray, extra: str) -> str:
        digest = hashlib.sha256(extra.encode())
        for leaf in jax.tree.leaves(eqx.filter(self.model, eqx.is_array)):
            host = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{host.dtype}{host.shape}{zlib.crc32(host.view(np.uint8).ravel())}".encode())
        digest.update(json.dumps({"sites": self._names, "skip": self.skip_first,
                                  "rows": self.rows_per_generation,
                                  "tokens": getattr(self._tokens, "describe", "callable")}).encode())
        digest.update(first.tobytes())
        return digest.hexdigest()[:16]

    def _shard(self, site: str, g: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in site)
        return self.cache_dir / safe / f"{g:06d}.npy"

    def _read_cache(self, g: int) -> dict[str, jax.Array] | None:
        if self.cache_dir is None or not all(self._shard(n, g).is_file() for n in self._names):
            return None
        try:
            block = {n: jnp.asarray(np.load(self._shard(n, g), allow_pickle=False)) for n in self._names}
        except (OSError, ValueError):
            return None  # a damaged shard is regenerated
        if any(v.shape != (self.rows_per_generation, self.sites[n]) for n, v in block.items()):
            return None
        self.cached_generations += 1
        return block

    def _write_cache(self, g: int, block: dict[str, jax.Array]) -> None:
        if self.cache_dir is None or jax.process_index() != 0:
            return
        for n, v in block.items():
            path = self._shard(n, g)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, np.asarray(v))
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, path)


class _Reader(eqx.Module):
    """One forward pass: every site's activations as ``[rows, d]`` float32."""

    names: tuple[str, ...] = eqx.field(static=True)
    skip_first: int = eqx.field(static=True)

    def __call__(self, model: Any, tokens: jax.Array) -> dict[str, jax.Array]:
        _, cache = run_with_cache(model, tokens, names=list(self.names))
        out = {}
        for n in self.names:
            act = cache[n][:, self.skip_first:]  # [batch, pos, ...]; hook_z's heads flatten
            out[n] = act.reshape(act.shape[0] * act.shape[1], -1).astype(jnp.float32)
        return out


@eqx.filter_jit
def _read(reader: _Reader, model: Any, tokens: jax.Array) -> dict[str, jax.Array]:
    """One compiled forward per (sites, model structure, token shape), shared by all stores."""
    return reader(model, tokens)


def site_activations(model: Any, tokens: np.ndarray, sites: str | Sequence[str], *,
                     chunk: int = 16) -> dict[str, np.ndarray]:
    """Activations at ``sites`` for token sequences ``[n, pos]``, as host arrays
    ``[n * pos, d]`` (one compiled forward per chunk shape; for evaluation sets)."""
    names = (sites,) if isinstance(sites, str) else tuple(sites)
    reader = _Reader(names, 0)
    tokens = np.asarray(tokens)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(tokens), chunk):
        out = _read(reader, model, jnp.asarray(tokens[start:start + chunk]))
        for n in names:
            parts[n].append(np.asarray(out[n]))
    return {n: np.concatenate(p) for n, p in parts.items()}


def _token_source(tokens: Any, model_batch: int) -> Callable[[int], np.ndarray]:
    if hasattr(tokens, "batch") and callable(tokens.batch):
        fn = tokens.batch
        fn_desc = repr(tokens)
    elif callable(tokens):
        fn, fn_desc = tokens, "callable"
    else:
        array = np.asarray(tokens)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"tokens must be [n_sequences, pos] integers, a TokenWindows or a "
                            f"callable; got {array.dtype}{list(array.shape)}.")
        n = array.shape[0]
        rows = min(model_batch, n)

        def fn(i: int) -> np.ndarray:
            return array[(np.arange(rows) + i * rows) % n]

        fn_desc = f"array{list(array.shape)}:{zlib.crc32(array.tobytes())}"

    class Source:
        describe = fn_desc

        def __call__(self, i: int) -> np.ndarray:
            return np.asarray(fn(i), np.int32)

    return Source()
