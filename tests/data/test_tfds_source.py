"""TFDS array_record datasets written and read back without TensorFlow."""

import importlib.util
import json
import sys

import pytest
import tensorflow_datasets as tfds

from jaxinterp.data import (
    EOS,
    ByteTokenizer,
    TokenWindows,
    open_tfds,
    tokenize_corpus,
    write_tfds_text,
)
from jaxinterp.errors import DataError

DOCS = ["first document", "zweites Dokument: ü, 日本, 😀", "", "line one\nline two\x00nul"] * 5


def test_round_trip_without_tensorflow(tmp_path):
    target = write_tfds_text({"train": DOCS, "test": DOCS[:3]}, "my_corpus", tmp_path)
    assert target == tmp_path / "my_corpus" / "1.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_corpus"]  # no downloads/ left
    info = json.loads((target / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    assert [p.name for p in sorted(target.glob("*.array_record-*"))] == [
        "my_corpus-test.array_record-00000-of-00001",
        "my_corpus-train.array_record-00000-of-00001",
    ]

    train = open_tfds("my_corpus", tmp_path)
    assert len(train) == len(DOCS) and list(train) == DOCS  # document order is kept
    assert train[-1] == DOCS[-1] and train[1:3] == DOCS[1:3]
    with pytest.raises(IndexError):
        train[len(DOCS)]
    assert open_tfds("my_corpus:1.0.0", tmp_path, split="test")[:] == DOCS[:3]
    assert open_tfds("my_corpus", tmp_path, split="train[:2]")[:] == DOCS[:2]

    raw = tfds.data_source("my_corpus", data_dir=str(tmp_path), split="train")
    assert raw[1]["text"].decode() == DOCS[1]  # the plain TFDS API reads it too

    assert "tensorflow" not in sys.modules
    if importlib.util.find_spec("tensorflow") is None:  # true in the test environment
        with pytest.raises(ImportError):
            import tensorflow  # noqa: F401


def test_custom_text_key_and_overwrite(tmp_path):
    write_tfds_text(["a", "b"], "docs", tmp_path, text_key="body", version="0.1.0")
    assert open_tfds("docs", tmp_path, text_key="body")[:] == ["a", "b"]
    with pytest.raises(DataError, match="already exists; pass overwrite=True"):
        write_tfds_text(["c"], "docs", tmp_path, text_key="body", version="0.1.0")
    write_tfds_text(["c"], "docs", tmp_path, text_key="body", version="0.1.0", overwrite=True)
    assert open_tfds("docs", tmp_path, text_key="body")[:] == ["c"]
    with pytest.raises(DataError, match="has no feature 'text'; it has body"):
        open_tfds("docs", tmp_path)


def test_open_errors(tmp_path):
    write_tfds_text(["a"], "docs", tmp_path)
    with pytest.raises(DataError, match="'nope' .*no such dataset; data_dir has docs"):
        open_tfds("nope", tmp_path)
    with pytest.raises(DataError, match="Unknown split 'validation'"):
        open_tfds("docs", tmp_path, split="validation")
    with pytest.raises(DataError, match="data_dir does not exist"):
        open_tfds("docs", tmp_path / "elsewhere")
    with pytest.raises(DataError, match="Could not open"):
        open_tfds("docs:9.9.9", tmp_path)


@pytest.mark.parametrize(
    ("docs", "name", "match"),
    [
        ([], "ok_name", "has no documents"),
        (["a"], "Bad-Name", "lower snake case"),
        ("abc", "ok_name", "sequence of str"),
    ],
)
def test_write_errors(tmp_path, docs, name, match):
    with pytest.raises(DataError, match=match):
        write_tfds_text(docs, name, tmp_path)


def test_tfds_documents_feed_token_windows(tmp_path):
    write_tfds_text(DOCS, "my_corpus", tmp_path)
    tokens = tokenize_corpus(
        open_tfds("my_corpus", tmp_path)[:], ByteTokenizer(eos_token=EOS), cache=False
    )
    assert tokens.size == sum(len(d.encode()) + 1 for d in DOCS)
    assert TokenWindows(tokens, seq_len=16, batch_size=4).batch(3).shape == (4, 16)
