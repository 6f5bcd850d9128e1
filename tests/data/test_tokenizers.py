"""Tokenizers: exact round trips, BPE training and caching, loading local files."""

import json

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from jaxinterp.data import (
    EOS,
    ByteTokenizer,
    Tokenizer,
    default_tokenizer,
    load_corpus,
    load_tokenizer,
    train_bpe,
)
from jaxinterp.errors import DataError, TokenError

pytestmark = pytest.mark.usefixtures("built_corpus")  # conftest.py

TEXTS = [
    "Hello, world!",
    "def f(x):\n    return x ** 2  # squares\n",
    "naïve café — ünïcödé, 日本語, emoji 😀\r\n\ttabs  and   spaces ",
    " leading space",
    "",
    EOS + " literal special text",
]


@pytest.fixture(scope="module")
def bpe():
    """A BPE trained on a slice of the corpus (every 8th document)."""
    return train_bpe(load_corpus()[::8], vocab_size=1024)


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer(bos_token="<bos>", eos_token=EOS)
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (258, 256, 257)
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([256, 104, 105, 257]) == f"<bos>hi{EOS}"
    assert tok.decode(np.array([[104, 105]])) == "hi"
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]
    plain = ByteTokenizer()
    assert (plain.vocab_size, plain.eos_token_id, plain.name) == (256, None, "bytes")
    with pytest.raises(TokenError, match=r"\[256\]"):
        plain.decode([104, 256])


def test_bpe_round_trip_on_unseen_text(bpe):
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size == 1024 and bpe.name.startswith("bpe1024-")
    assert bpe.eos_token_id == bpe.bos_token_id == bpe.tokenizer.token_to_id(EOS)
    unseen = load_corpus()[1::8][:40]
    for text in TEXTS + unseen:
        assert bpe.decode(bpe.encode(text)) == text
    batch = bpe.encode_batch(unseen)
    assert batch == [bpe.encode(t) for t in unseen]
    n_tokens, n_bytes = sum(map(len, batch)), sum(len(t.encode()) for t in unseen)
    assert n_tokens < n_bytes / 2.5  # it learned real merges
    assert bpe.encode(EOS) == [bpe.eos_token_id]
    with pytest.raises(TokenError):
        bpe.decode([1024])


def test_bpe_training_is_deterministic(bpe):
    again = train_bpe(load_corpus()[::8], vocab_size=1024)
    assert again.name == bpe.name
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(DataError, match="non-empty"):
        train_bpe(["", ""])


def test_default_tokenizer_is_trained_once_and_reloads(shared_cache):
    tok = default_tokenizer()
    assert tok.vocab_size == 4096 and tok.eos_token_id is not None
    folders = [p for p in shared_cache.iterdir() if p.name.startswith("bpe4096-")]
    assert len(folders) == 1 and (folders[0] / "tokenizer.json").is_file()
    assert default_tokenizer().name == tok.name == load_tokenizer(folders[0]).name
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def _byte_level_vocab(merges):
    """Every byte's printable stand-in, then one token per merge, as GPT-2 files hold."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    return vocab


def test_hand_built_tokenizer_json(tmp_path):
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w"]
    vocab = _byte_level_vocab(merges)
    vocab["</s>"] = len(vocab)
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab["</s>"],
                "content": "</s>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        tok = load_tokenizer(path)
        assert tok.vocab_size == 256 + len(merges) + 1
        assert tok.eos_token_id == vocab["</s>"] and tok.bos_token_id is None
        assert tok.encode("hello world") == [vocab["hello"], vocab["Ġw"], *tok.encode("orld")]
        assert tok.decode(tok.encode("hello wörld</s>")) == "hello wörld</s>"


def test_gpt2_encoder_json_and_vocab_bpe(tmp_path):
    merges = ["h e", "l l", "he ll", "hell o", "Ġ hello"]
    vocab = _byte_level_vocab(merges)
    vocab[EOS] = len(vocab)
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    for path in (tmp_path, tmp_path / "encoder.json", tmp_path / "vocab.bpe"):
        tok = load_tokenizer(path)
        assert tok.vocab_size == len(vocab)
        assert tok.eos_token_id == tok.bos_token_id == vocab[EOS]
        ids = tok.encode(f"hello hello{EOS}!")
        assert ids == [vocab["hello"], vocab["Ġhello"], vocab[EOS], vocab["!"]]
        assert tok.decode(ids) == f"hello hello{EOS}!"
        for text in TEXTS:
            assert tok.decode(tok.encode(text)) == text


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(DataError, match=f"does not exist: {missing}"):
        load_tokenizer(missing)
    with pytest.raises(DataError, match="expected tokenizer.json, or encoder.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="Could not parse tokenizer file .*broken.json"):
        load_tokenizer(tmp_path / "broken.json")
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(DataError, match="encoder.json and vocab.bpe"):
        load_tokenizer(tmp_path / "encoder.json")
