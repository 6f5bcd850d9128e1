"""Token windows as a grain pipeline: sharded per process, deterministic, resumable by step.

grain builds input pipelines from a random-access source, and every stage of a
``grain.MapDataset`` maps an index to an element::

    windows = MapDataset.source(WindowSource(tokens, seq_len))   # window w = tokens[w*T : (w+1)*T]
    stream  = windows.shuffle(seed).repeat()                     # position i -> a window
    local   = stream[process::n_processes].batch(batch_size // n_processes)
    batch(step) = local[step]

Position ``i`` of the stream falls in epoch ``i // n_windows`` and takes window
``shuffle_epoch(i % n_windows)``, grain's index shuffle seeded by ``seed + epoch``: every
window is seen once per epoch, in a new order each epoch. Process ``p`` of ``P`` takes
positions ``p, p + P, ...``, so at each step the processes hold disjoint rows that
together make the global batch. Batch ``step`` is a pure function of ``(seed, step)``:
the training loop's ``batch_fn(step)``, whose exact resume needs nothing but the step
(``jaxinterp.train``). :meth:`GrainWindows.batch_fn` adds grain's threaded prefetching
and stays that same function of the step.

A TFDS dataset enters the same way: :func:`tfds_documents` is its text feature as a
``MapDataset`` of documents (random access, sharded like anything else), and
:func:`tfds_windows` tokenizes it once (cached, :func:`~jaxinterp.data.tokenize_corpus`)
into windows. The numpy path (:class:`~jaxinterp.data.TokenWindows`) stays the default;
this module imports grain, which ``import jaxinterp`` never does
(``pip install 'jaxinterp[grain]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from jaxinterp.data.batching import _check_tokens, tokenize_corpus
from jaxinterp.data.tokenizers import Tokenizer
from jaxinterp.errors import DataError

try:
    import grain
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("jaxinterp.data.grain_source needs grain: pip install 'jaxinterp[grain]'") from e


class WindowSource:
    """Non-overlapping windows of a 1-D token array (``np.memmap`` welcome) as a grain
    random-access source: ``len`` windows, ``source[w] = tokens[w*T : (w+1)*T]`` (int32)."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        _check_tokens(tokens, "WindowSource")
        if seq_len < 1 or tokens.size < seq_len:
            raise DataError(f"seq_len={seq_len} must be in [1, {tokens.size}] (the number of tokens).")
        self.tokens, self.seq_len = tokens, int(seq_len)

    def __len__(self) -> int:
        return self.tokens.size // self.seq_len

    def __getitem__(self, window: int) -> np.ndarray:
        if not 0 <= window < len(self):
            raise IndexError(f"window {window} is out of range for {len(self)} windows")
        start = window * self.seq_len
        return np.asarray(self.tokens[start : start + self.seq_len], dtype=np.int32)

    def __repr__(self) -> str:
        return f"WindowSource({self.tokens.size} tokens, seq_len={self.seq_len}, {len(self)} windows)"


class GrainWindows:
    """Shuffled token windows through grain; ``batch(step)`` is a pure function of the step.

    Args:
        tokens: a 1-D integer array (may be a ``np.memmap``).
        seq_len: tokens per window.
        batch_size: windows per step over all processes (a multiple of ``shard_count``).
        seed: picks the per-epoch shuffles (0 <= seed < 2**32).
        shuffle: if ``False``, windows come in stream order every epoch.
        shard_index, shard_count: this process's share; default ``jax.process_index()``
            of ``jax.process_count()``.

    Attributes:
        dataset: the grain ``MapDataset`` of this process's batches (add transforms here).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, shard_index: int | None = None,
                 shard_count: int | None = None) -> None:
        if shard_index is None or shard_count is None:
            import jax

            shard_index = jax.process_index() if shard_index is None else shard_index
            shard_count = jax.process_count() if shard_count is None else shard_count
        if not 0 <= shard_index < shard_count:
            raise DataError(f"shard_index must be in [0, {shard_count}), got {shard_index}.")
        if batch_size < 1 or batch_size % shard_count:
            raise DataError(f"batch_size={batch_size} must be a positive multiple of the "
                            f"{shard_count} processes sharing it.")
        if not 0 <= seed < 2**32:
            raise DataError(f"seed must be in [0, 2**32), got {seed}.")
        self.source = WindowSource(tokens, seq_len)
        self.seq_len, self.batch_size, self.seed, self.shuffle = int(seq_len), batch_size, seed, shuffle
        self.shard_index, self.shard_count = shard_index, shard_count
        stream = grain.MapDataset.source(self.source)
        stream = (stream.shuffle(seed=seed) if shuffle else stream).repeat()
        local = stream[shard_index::shard_count]
        self.dataset = local.batch(batch_size // shard_count, drop_remainder=True)

    def __repr__(self) -> str:
        return (f"GrainWindows({self.source!r}, batch_size={self.batch_size}, seed={self.seed}, "
                f"shard {self.shard_index}/{self.shard_count})")

    @property
    def n_windows(self) -> int:
        return len(self.source)

    def batch(self, step: int) -> np.ndarray:
        """This process's rows of batch ``step``: int32[batch_size / shard_count, seq_len]."""
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}.")
        return self.dataset[step]

    def iterate(self, start_step: int = 0, *, threads: int = 2, prefetch: int = 4) -> Iterator[np.ndarray]:
        """Batches ``start_step, start_step + 1, ...`` read ahead by ``threads`` threads."""
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        return iter(self.dataset[start_step:].to_iter_dataset(options))

    def batch_fn(self, *, threads: int = 2, prefetch: int = 4) -> Callable[[int], np.ndarray]:
        """``batch_fn(step)`` for :func:`jaxinterp.train.train`, prefetching while steps come
        in order; any other step (a resume) restarts the reader there. Either way it returns
        exactly :meth:`batch` ``(step)``."""
        state: dict = {"next": None, "it": None}

        def batch_fn(step: int) -> np.ndarray:
            if step != state["next"]:
                state["it"] = self.iterate(step, threads=threads, prefetch=prefetch)
            state["next"] = step + 1
            return next(state["it"])

        return batch_fn


def tfds_documents(name: str, data_dir: str | os.PathLike, split: str = "train",
                   text_key: str = "text"):
    """A prepared TFDS dataset's text feature as a grain ``MapDataset`` of ``str``
    (random access: shard it with ``[process::n_processes]``, map a tokenizer over it)."""
    from jaxinterp.data.tfds_source import open_tfds

    return grain.MapDataset.source(open_tfds(name, data_dir, split=split, text_key=text_key))


def tfds_windows(name: str, data_dir: str | os.PathLike, tokenizer: Tokenizer, seq_len: int,
                 batch_size: int, *, split: str = "train", text_key: str = "text",
                 **kwargs) -> GrainWindows:
    """:class:`GrainWindows` over a TFDS text dataset, tokenized once in document order
    (EOS after each document; cached by content). ``kwargs`` go to :class:`GrainWindows`."""
    docs = tfds_documents(name, data_dir, split, text_key)
    tokens = tokenize_corpus([docs[i] for i in range(len(docs))], tokenizer)
    return GrainWindows(tokens, seq_len, batch_size, **kwargs)
