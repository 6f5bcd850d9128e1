"""Token files, tokenize_corpus caching, and deterministic resumable TokenWindows."""

from itertools import islice

import numpy as np
import pytest

from jaxinterp.data import (
    EOS,
    ByteTokenizer,
    TokenWindows,
    cache_dir,
    load_corpus,
    load_tokens,
    tokenize_corpus,
)
from jaxinterp.errors import DataError

TOKENS = np.arange(1000, dtype=np.uint16)  # token i sits at position i


def test_batch_depends_only_on_seed_and_step():
    a = TokenWindows(TOKENS, seq_len=10, batch_size=8, seed=3)
    b = TokenWindows(TOKENS.copy(), seq_len=10, batch_size=8, seed=3)
    for step in (0, 5, 12, 13, 40, 7, 0):  # any order, crossing epochs (12.5 steps each)
        batch = a.batch(step)
        assert batch.dtype == np.int32 and batch.shape == (8, 10)
        np.testing.assert_array_equal(batch, b.batch(step))
    assert not np.array_equal(a.batch(0), TokenWindows(TOKENS, 10, 8, seed=4).batch(0))


def test_resume_from_step_equals_the_tail_of_a_full_run():
    windows = TokenWindows(TOKENS, seq_len=16, batch_size=5, seed=0)
    full = list(windows.iterate(0, 30))
    resumed = list(
        TokenWindows(TOKENS, seq_len=16, batch_size=5, seed=0).iterate(start_step=17, stop_step=30)
    )
    assert len(resumed) == 13
    for x, y in zip(full[17:], resumed, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(islice(iter(windows), 30), full, strict=True):
        np.testing.assert_array_equal(x, y)


def test_every_window_once_per_epoch_and_rows_are_real_windows():
    windows = TokenWindows(TOKENS, seq_len=10, batch_size=8, seed=1)  # 100 windows
    rows = np.concatenate([windows.batch(s) for s in range(25)])  # exactly two epochs
    starts = rows[:, 0]
    np.testing.assert_array_equal(rows, starts[:, None] + np.arange(10))  # contiguous slices
    assert np.all(starts % 10 == 0)
    for epoch in (starts[:100], starts[100:]):
        assert sorted(epoch.tolist()) == list(range(0, 1000, 10))
    assert not np.array_equal(starts[:100], starts[100:])  # a fresh permutation each epoch
    ordered = TokenWindows(TOKENS, seq_len=10, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(ordered.batch(1)[:, 0], np.arange(80, 160, 10))


def test_batch_larger_than_the_data_wraps_into_the_next_epoch():
    windows = TokenWindows(TOKENS[:35], seq_len=10, batch_size=7, seed=0)  # 3 windows
    assert windows.n_windows == 3 and windows.steps_per_epoch == pytest.approx(3 / 7)
    starts = windows.batch(0)[:, 0]
    assert sorted(starts[:3].tolist()) == sorted(starts[3:6].tolist()) == [0, 10, 20]


@pytest.mark.parametrize(
    ("seq_len", "batch_size", "match"),
    [
        (0, 4, "seq_len and batch_size must be >= 1"),
        (5, 0, "must be >= 1"),
        (1001, 1, "seq_len=1001 is longer than the data: 1000 tokens"),
    ],
)
def test_window_errors(seq_len, batch_size, match):
    with pytest.raises(DataError, match=match):
        TokenWindows(TOKENS, seq_len=seq_len, batch_size=batch_size)


def test_bad_token_arrays_and_steps():
    with pytest.raises(DataError, match="1-D integer"):
        TokenWindows(np.zeros((4, 4), np.int32), seq_len=2, batch_size=1)
    with pytest.raises(DataError, match="1-D integer"):
        TokenWindows(np.zeros(8, np.float32), seq_len=2, batch_size=1)
    with pytest.raises(DataError, match="empty"):
        TokenWindows(np.zeros(0, np.int32), seq_len=2, batch_size=1)
    with pytest.raises(DataError, match="step must be >= 0"):
        TokenWindows(TOKENS, 10, 2).batch(-1)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_and_npy_token_files(tmp_path, dtype):
    tokens = (np.arange(500) * 131 % 60000).astype(dtype)
    tokens.tofile(tmp_path / "t.bin")
    np.save(tmp_path / "t.npy", tokens)
    from_bin = load_tokens(tmp_path / "t.bin", dtype=dtype)
    assert isinstance(from_bin, np.memmap)
    np.testing.assert_array_equal(from_bin, tokens)
    np.testing.assert_array_equal(load_tokens(tmp_path / "t.npy"), tokens)
    batch = TokenWindows(from_bin, seq_len=50, batch_size=3, seed=0).batch(2)
    assert batch.shape == (3, 50) and batch.dtype == np.int32


def test_text_token_file(tmp_path):
    (tmp_path / "doc.txt").write_text("héllo", encoding="utf-8")
    tok = ByteTokenizer(eos_token=EOS)
    np.testing.assert_array_equal(load_tokens(tmp_path / "doc.txt", tok), [*"héllo".encode(), 256])
    with pytest.raises(DataError, match="needs a tokenizer"):
        load_tokens(tmp_path / "doc.txt")


def test_token_file_errors(tmp_path):
    with pytest.raises(DataError, match=f"not found: {tmp_path / 'missing.bin'}"):
        load_tokens(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty.bin'} is empty"):
        load_tokens(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="not a multiple of 2"):
        load_tokens(tmp_path / "odd.bin")
    (tmp_path / "t.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="expected .npy, .bin or .txt"):
        load_tokens(tmp_path / "t.csv")
    np.save(tmp_path / "grid.npy", np.zeros((2, 3), np.int32))
    with pytest.raises(DataError, match=r"1-D integer token array, got int32\[2, 3\]"):
        load_tokens(tmp_path / "grid.npy")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_tokens(tmp_path / "empty.txt", ByteTokenizer())


def test_tokenize_corpus_separates_documents_and_caches():
    tok = ByteTokenizer(eos_token=EOS)
    tokens = tokenize_corpus(["ab", "c"], tok)
    np.testing.assert_array_equal(tokens, [97, 98, 256, 99, 256])
    assert tokens.dtype == np.uint16
    cached = tokenize_corpus(["ab", "c"], tok)
    assert isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, tokens)
    files = [p.name for p in (cache_dir() / "tokens").glob("bytes*.npy")]
    assert files and all(c.isalnum() or c in "-_." for name in files for c in name)
    np.testing.assert_array_equal(
        tokenize_corpus(["ab", "c"], tok, eos=False, cache=False), [97, 98, 99]
    )
    np.testing.assert_array_equal(tokenize_corpus(["ab", "c"], ByteTokenizer()), [97, 98, 99])
    with pytest.raises(DataError, match="has no EOS token"):
        tokenize_corpus(["ab"], ByteTokenizer(), eos=True)
    with pytest.raises(DataError, match="non-empty list"):
        tokenize_corpus("abc", tok)


@pytest.mark.usefixtures("built_corpus")  # conftest.py
def test_whole_corpus_to_batches():
    tok = ByteTokenizer(eos_token=EOS)
    docs = load_corpus("bible")[:50]
    tokens = tokenize_corpus(docs, tok)
    assert tokens.size == sum(len(d.encode()) + 1 for d in docs)
    batch = TokenWindows(tokens, seq_len=128, batch_size=4, seed=0).batch(0)
    assert tok.decode(batch[0]) in tok.decode(tokens)
