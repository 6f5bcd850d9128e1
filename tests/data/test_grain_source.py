"""Token windows through grain: deterministic, one epoch covers every window once, sharded
per process into disjoint rows of the global batch, resumable by step in the training loop."""

import ast
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.errors import DataError

grain_source = pytest.importorskip("jaxinterp.data.grain_source")
GrainWindows, WindowSource = grain_source.GrainWindows, grain_source.WindowSource

TOKENS = np.arange(10 * 4 + 3, dtype=np.uint16)  # 10 windows of 4, and 3 tokens left over


def windows_of(batch: np.ndarray) -> list[int]:
    return [int(row[0]) // 4 for row in batch]


def test_batches_are_a_pure_function_of_the_step():
    a, b = GrainWindows(TOKENS, 4, 5, seed=7), GrainWindows(TOKENS, 4, 5, seed=7)
    assert a.n_windows == 10 and a.batch(3).dtype == np.int32 and a.batch(3).shape == (5, 4)
    for step in (0, 3, 11):
        np.testing.assert_array_equal(a.batch(step), b.batch(step))
    for row in a.batch(0):  # rows are whole windows of the stream
        np.testing.assert_array_equal(row, TOKENS[row[0] : row[0] + 4])
    assert not np.array_equal(a.batch(0), GrainWindows(TOKENS, 4, 5, seed=8).batch(0))


def test_each_epoch_covers_every_window_once_in_a_new_order():
    w = GrainWindows(TOKENS, 4, 5, seed=0)
    epochs = [windows_of(w.batch(2 * e)) + windows_of(w.batch(2 * e + 1)) for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    ordered = GrainWindows(TOKENS, 4, 5, shuffle=False)
    assert windows_of(ordered.batch(0)) + windows_of(ordered.batch(1)) == list(range(10))


def test_processes_hold_disjoint_rows_of_the_global_batch():
    whole = GrainWindows(TOKENS, 4, 6, seed=3, shard_index=0, shard_count=1)
    shards = [GrainWindows(TOKENS, 4, 6, seed=3, shard_index=p, shard_count=3) for p in range(3)]
    for step in (0, 4):
        rows = [s.batch(step) for s in shards]
        assert all(r.shape == (2, 4) for r in rows)
        np.testing.assert_array_equal(np.stack(rows, 1).reshape(6, 4), whole.batch(step))


def test_prefetching_batch_fn_equals_batch_and_resumes_anywhere():
    w = GrainWindows(TOKENS, 4, 3, seed=1)
    fn = w.batch_fn(threads=2, prefetch=2)
    for step in [0, 1, 2, 7, 8, 3]:  # in order, then a jump (resume), then back
        np.testing.assert_array_equal(fn(step), w.batch(step))
    assert windows_of(next(w.iterate(5))) == windows_of(w.batch(5))


def test_training_resumes_exactly_from_a_step(tmp_path):
    import jax.numpy as jnp
    import optax

    from jaxinterp.train import TrainConfig, train

    w = GrainWindows(TOKENS, 4, 2, seed=5)

    def loss_fn(params, batch, key):
        return jnp.mean((params["w"] - batch.astype(jnp.float32) / 40.0) ** 2), {}

    def run(name, steps):
        config = TrainConfig(steps=steps, checkpoint_every=3, name=name, runs_dir=str(tmp_path),
                             progress=False, log_every=3)
        return train(loss_fn, {"w": jnp.zeros(4)}, optax.sgd(0.1), w.batch_fn(), config).params

    straight = run("straight", 6)
    run("resumed", 3)
    resumed = run("resumed", 6)  # continues from the step-3 checkpoint
    np.testing.assert_array_equal(np.asarray(resumed["w"]), np.asarray(straight["w"]))


def test_tfds_documents_and_windows(tmp_path):
    from jaxinterp.data import ByteTokenizer, TokenWindows, tokenize_corpus, write_tfds_text

    docs = [f"document {i} " * (i + 1) for i in range(8)]
    write_tfds_text(docs, "tiny_docs", tmp_path)
    documents = grain_source.tfds_documents("tiny_docs", tmp_path)
    assert list(documents[1::2]) == docs[1::2]  # random access, sharded like any MapDataset
    tok = ByteTokenizer()
    windows = grain_source.tfds_windows("tiny_docs", tmp_path, tok, 16, 4, seed=0, shuffle=False)
    stream = TokenWindows(tokenize_corpus(docs, tok), 16, 4, shuffle=False)
    np.testing.assert_array_equal(windows.batch(1), stream.batch(1))


def test_bad_input():
    with pytest.raises(DataError, match="multiple of the 3 processes"):
        GrainWindows(TOKENS, 4, 4, shard_index=0, shard_count=3)
    with pytest.raises(DataError, match="shard_index"):
        GrainWindows(TOKENS, 4, 4, shard_index=2, shard_count=2)
    with pytest.raises(DataError, match="seq_len=50"):
        WindowSource(TOKENS, 50)
    with pytest.raises(IndexError):
        WindowSource(TOKENS, 4)[10]


def test_only_grain_source_imports_grain_and_only_lazily():
    """``import jaxinterp`` never imports grain: no module but grain_source imports it, and
    grain_source is imported only inside functions (or by the lazy ``jaxinterp.data`` names)."""
    root = Path(grain_source.__file__).parents[1]
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.Try))]
        names = {a.name for n in ast.walk(ast.Module(body=top, type_ignores=[]))
                 if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(ast.Module(body=top, type_ignores=[]))
                  if isinstance(n, ast.ImportFrom) and n.module}
        if path.name != "grain_source.py":
            assert not {"grain", "jaxinterp.data.grain_source"} & names, path
