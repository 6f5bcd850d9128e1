"""Token streams and deterministic, resumable batches of fixed-length windows.

A language-model dataset here is one flat 1-D array of token ids: documents tokenized and
concatenated with an end-of-text token after each (:func:`tokenize_corpus`), or a token
file made elsewhere (:func:`load_tokens`: ``.npy``, or raw ``.bin`` uint16/uint32 read
through ``np.memmap`` so it never has to fit in memory).

:class:`TokenWindows` cuts the stream into ``n_windows = len(tokens) // seq_len``
non-overlapping windows and serves them in a shuffled order that is a pure function of
``(seed, step)``. Batch ``step`` holds the windows at global positions
``step * batch_size ... + batch_size - 1``; position ``i`` falls in epoch
``i // n_windows`` and takes window ``perm_epoch[i % n_windows]``, where ``perm_epoch``
is a permutation drawn from ``np.random.default_rng((seed, epoch))``. Every window is seen
once per epoch, and a run resumed at step ``k`` gets exactly the batches an
uninterrupted run would have, with nothing but the step number saved.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path

import numpy as np

from jaxinterp.data.corpus import atomic_write_bytes, cache_dir, load_text_files
from jaxinterp.data.tokenizers import Tokenizer
from jaxinterp.errors import DataError


def tokenize_corpus(
    docs: Sequence[str],
    tokenizer: Tokenizer,
    eos: bool | None = None,
    cache: bool = True,
) -> np.ndarray:
    """Tokenize documents into one flat stream, with ``eos_token_id`` after each document.

    Args:
        docs: the documents.
        tokenizer: any :class:`~jaxinterp.data.tokenizers.Tokenizer`.
        eos: append the tokenizer's EOS after every document; ``None`` means "if it has one".
        cache: reuse / store the result as ``$JAXINTERP_CACHE/tokens/<name>-<hash>.npy``,
            keyed by the documents' contents and the tokenizer's ``name``.

    Returns:
        A 1-D ``uint16`` array (``uint32`` for vocabularies over 65,536 tokens).
    """
    if isinstance(docs, str) or len(docs) == 0:
        raise DataError("tokenize_corpus needs a non-empty list of documents (not a str).")
    eos_id = tokenizer.eos_token_id
    if eos and eos_id is None:
        raise DataError(f"Tokenizer {tokenizer.name!r} has no EOS token; pass eos=False.")
    sep = [eos_id] if eos_id is not None and eos is not False else []
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    digest = hashlib.sha256(f"{tokenizer.name}|{sep}|{len(docs)}".encode())
    for doc in docs:
        digest.update(len(doc).to_bytes(8, "little") + doc.encode("utf-8", "surrogatepass"))
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in tokenizer.name)
    path = cache_dir() / "tokens" / f"{safe_name}-{digest.hexdigest()[:16]}.npy"
    if cache and path.exists():
        return np.load(path, mmap_mode="r")
    chunks = []
    for start in range(0, len(docs), 256):
        for ids in tokenizer.encode_batch(list(docs[start : start + 256])):
            chunks.append(np.asarray(ids + sep, dtype=dtype))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    if tokens.size == 0:
        raise DataError("The documents produced no tokens (all empty).")
    if cache:
        buf = io.BytesIO()
        np.save(buf, tokens)
        atomic_write_bytes(path, buf.getvalue())
    return tokens


def load_tokens(
    path: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    dtype: str | np.dtype = "uint16",
) -> np.ndarray:
    """A 1-D token array from a local file, memory-mapped where possible.

    Args:
        path: ``.npy`` (any integer dtype), ``.bin`` (raw tokens of ``dtype``), or
            ``.txt`` (UTF-8 text, tokenized with ``tokenizer``; EOS appended if it has one).
        tokenizer: needed for ``.txt`` files only.
        dtype: element type of a ``.bin`` file: ``"uint16"`` or ``"uint32"``.

    Raises:
        DataError: the file is missing, empty, of an unknown kind, or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Token file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if tokenizer is None:
            raise DataError(f"Reading text file {path} needs a tokenizer.")
        return tokenize_corpus(load_text_files(path), tokenizer)
    if path.stat().st_size == 0:
        raise DataError(f"Token file {path} is empty.")
    if suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise DataError(f"Token file {path} is not a valid .npy array: {e}") from e
    elif suffix == ".bin":
        dtype = np.dtype(dtype)
        if dtype not in (np.uint16, np.uint32):
            raise DataError(f"A .bin token file holds uint16 or uint32, not {dtype}.")
        if path.stat().st_size % dtype.itemsize:
            raise DataError(f"Size of {path} is not a multiple of {dtype.itemsize} ({dtype}).")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    else:
        raise DataError(f"Unknown token file type {path.name!r}; expected .npy, .bin or .txt.")
    _check_tokens(tokens, str(path))
    return tokens


def _check_tokens(tokens: np.ndarray, what: str) -> None:
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(
            f"{what}: expected a 1-D integer token array, got {tokens.dtype}{list(tokens.shape)}."
        )
    if tokens.size == 0:
        raise DataError(f"{what}: the token array is empty.")


class TokenWindows:
    """Shuffled fixed-length windows of a token stream; ``batch(step)`` is a pure function.

    Args:
        tokens: a 1-D integer array (may be a ``np.memmap``).
        seq_len: tokens per window.
        batch_size: windows per batch.
        seed: picks the per-epoch permutations.
        shuffle: if ``False``, windows come in stream order every epoch.

    Example:
        >>> windows = TokenWindows(tokens, seq_len=128, batch_size=32, seed=0)
        >>> for step, batch in zip(range(start, n_steps), windows.iterate(start)):
        ...     params = train_step(params, batch)  # batch: int32[32, 128]
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        _check_tokens(tokens, "TokenWindows")
        if int(seq_len) < 1 or int(batch_size) < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}.")
        if tokens.size < seq_len:
            raise DataError(
                f"seq_len={seq_len} is longer than the data: {tokens.size} tokens "
                "cannot fill a single window."
            )
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self._perms: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"TokenWindows({self.tokens.size} tokens, seq_len={self.seq_len}, "
            f"batch_size={self.batch_size}, seed={self.seed}, n_windows={self.n_windows})"
        )

    @property
    def n_windows(self) -> int:
        """Non-overlapping windows in the stream (a trailing partial window is dropped)."""
        return self.tokens.size // self.seq_len

    @property
    def steps_per_epoch(self) -> float:
        """Batches per pass over all windows (fractional: batches straddle epochs)."""
        return self.n_windows / self.batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng((self.seed, epoch))
            order = np.arange(self.n_windows)
            self._perms[epoch] = rng.permutation(self.n_windows) if self.shuffle else order
        return self._perms[epoch]

    def window_indices(self, step: int) -> np.ndarray:
        """Which windows batch ``step`` holds: int64[batch_size]."""
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}.")
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.n_windows)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._permutation(int(epoch))[offsets[mask]]
        return out

    def batch(self, step: int) -> np.ndarray:
        """The batch for ``step``: int32[batch_size, seq_len], the same on every call."""
        starts = self.window_indices(step) * self.seq_len
        rows = [np.asarray(self.tokens[s : s + self.seq_len]) for s in starts]  # (B, T)
        return np.stack(rows).astype(np.int32)

    def iterate(self, start_step: int = 0, stop_step: int | None = None) -> Iterator[np.ndarray]:
        """Batches ``start_step, start_step + 1, ...`` up to ``stop_step`` (or forever)."""
        steps = count(start_step) if stop_step is None else range(start_step, stop_step)
        for step in steps:
            yield self.batch(step)

    def __iter__(self) -> Iterator[np.ndarray]:
        """An endless stream of batches from step 0; use :meth:`iterate` to resume."""
        return self.iterate(0)
