"""Data for jaxinterp: an offline corpus, tokenizers, token batches, TFDS, synthetic tasks.

* ``corpus``: the embedded English + Python corpus (``load_corpus``), local text files.
* ``tokenizers``: one ``Tokenizer`` interface; bytes, byte-level BPE, local HF/GPT-2 files.
* ``batching``: token files and ``TokenWindows``, shuffled batches resumable by step.
* ``tfds_source``: TFDS array_record datasets, written and read without TensorFlow.
* ``grain_source``: the same windows and TFDS documents as a grain pipeline (sharded per
  process, resumable by step); needs ``pip install 'jaxinterp[grain]'``.
* ``synthetic``: repeated random tokens (induction) and sparse features (superposition).
"""

from jaxinterp.data.batching import TokenWindows, load_tokens, tokenize_corpus
from jaxinterp.data.corpus import (
    CORPORA,
    cache_dir,
    corpus_text,
    corpus_version,
    load_corpus,
    load_text_files,
)
from jaxinterp.data.synthetic import feature_importance, repeated_tokens, sparse_features
from jaxinterp.data.tokenizers import (
    EOS,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    default_tokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "CORPORA",
    "EOS",
    "ByteTokenizer",
    "GrainWindows",
    "HFTokenizer",
    "TfdsText",
    "TokenWindows",
    "Tokenizer",
    "cache_dir",
    "corpus_text",
    "corpus_version",
    "default_tokenizer",
    "feature_importance",
    "load_corpus",
    "load_text_files",
    "load_tokenizer",
    "load_tokens",
    "open_tfds",
    "repeated_tokens",
    "sparse_features",
    "tokenize_corpus",
    "train_bpe",
    "write_tfds_text",
]

# Loaded on first use: tensorflow_datasets and grain are heavy, and grain is optional.
_LAZY = {"TfdsText": "tfds_source", "open_tfds": "tfds_source", "write_tfds_text": "tfds_source",
         "GrainWindows": "grain_source"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jaxinterp.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxinterp.data' has no attribute {name!r}")
