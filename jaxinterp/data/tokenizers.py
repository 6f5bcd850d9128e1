"""Tokenizers behind one small interface.

Everything in jaxinterp that turns text into token ids asks only for a :class:`Tokenizer`:
``encode(text) -> list[int]``, ``encode_batch(texts)``, ``decode(ids) -> str``,
``vocab_size``, ``bos_token_id`` / ``eos_token_id`` (``None`` when the tokenizer has
none) and ``name``, a string that identifies the exact vocabulary (it keys caches).

Three kinds are provided:

* :class:`ByteTokenizer`: the 256 byte values, optionally followed by special tokens.
* :class:`HFTokenizer`: any Hugging Face ``tokenizers`` model. :func:`train_bpe` trains a
  byte-level BPE on a list of texts; :func:`default_tokenizer` is one trained once on the
  embedded corpus and cached as ``tokenizer.json``; :func:`load_tokenizer` opens a local
  ``tokenizer.json`` or a GPT-2 style ``encoder.json`` + ``vocab.bpe`` pair.

Byte-level tokenizers are exact: ``decode(encode(text)) == text`` for every string.
Special tokens are never added implicitly; callers insert ``bos``/``eos`` themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxinterp.data.corpus import atomic_write_bytes, cache_dir, corpus_version, load_corpus
from jaxinterp.errors import DataError, TokenError

EOS = "<|endoftext|>"
_EOS_NAMES = (EOS, "</s>", "<eos>", "<|eos|>", "<|end_of_text|>")
_BOS_NAMES = ("<s>", "<bos>", "<|bos|>", "<|begin_of_text|>", "<|startoftext|>")


@runtime_checkable
class Tokenizer(Protocol):
    """What jaxinterp needs from a tokenizer."""

    name: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


def _as_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> list[int]:
    out = np.asarray(ids).reshape(-1).tolist()
    bad = [i for i in out if not 0 <= i < vocab_size]
    if bad:
        raise TokenError(f"Token ids {bad[:5]} are outside the vocabulary [0, {vocab_size}).")
    return out


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; special tokens (if any) take ids 256, 257, ...

    Special-token strings inside the text are encoded as ordinary bytes, so encoding is
    exact for every string; ``decode`` writes a special id as its string.

    Attributes:
        special_tokens: strings given the ids after the bytes, in order.
        bos_token: which special token marks the beginning of a sequence, if any.
        eos_token: which special token separates documents, if any.
    """

    special_tokens: tuple[str, ...] = ()
    bos_token: str | None = None
    eos_token: str | None = None

    def __post_init__(self) -> None:
        extra = [t for t in (self.bos_token, self.eos_token) if t is not None]
        specials = tuple(dict.fromkeys((*self.special_tokens, *extra)))
        object.__setattr__(self, "special_tokens", specials)

    @property
    def name(self) -> str:
        return "bytes" + "".join(f"+{t}" for t in self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else 256 + self.special_tokens.index(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else 256 + self.special_tokens.index(self.eos_token)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        out, run = [], bytearray()
        for i in _as_ids(ids, self.vocab_size):
            if i < 256:
                run.append(i)
            else:
                out += [run.decode("utf-8", errors="replace"), self.special_tokens[i - 256]]
                run = bytearray()
        return "".join(out) + run.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` behind jaxinterp's interface.

    Args:
        tokenizer: the wrapped tokenizer.
        label: a readable prefix for ``name``; a hash of the tokenizer's JSON is appended.
        bos_token, eos_token: special-token strings; by default they are guessed from the
            tokenizer's added tokens (``<|endoftext|>`` serves as both, as in GPT-2).
    """

    def __init__(
        self,
        tokenizer: hf.Tokenizer,
        label: str = "hf",
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:10]
        self.name = f"{label}-{digest}"
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        eos_token = eos_token or next((t for t in _EOS_NAMES if t in added), None)
        bos_token = bos_token or next((t for t in _BOS_NAMES if t in added), None)
        if bos_token is None and eos_token == EOS:
            bos_token = EOS
        self.bos_token_id = None if bos_token is None else tokenizer.token_to_id(bos_token)
        self.eos_token_id = None if eos_token is None else tokenizer.token_to_id(eos_token)

    def __repr__(self) -> str:
        return f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode(_as_ids(ids, self.vocab_size), skip_special_tokens=False)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` to ``path`` (a directory or a ``.json`` file path)."""
        path = Path(path)
        path = path if path.suffix == ".json" else path / "tokenizer.json"
        atomic_write_bytes(path, self.tokenizer.to_str(pretty=True).encode("utf-8"))
        return path


def _byte_level(model: models.Model) -> hf.Tokenizer:
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 4096,
    eos_token: str | None = EOS,
    min_frequency: int = 2,
) -> HFTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on ``texts``; deterministic.

    Args:
        texts: training documents.
        vocab_size: the size of the result, bytes and ``eos_token`` included.
        eos_token: a special token to separate documents (also used as BOS), or ``None``.
        min_frequency: pairs seen fewer times than this are never merged.
    """
    texts = [t for t in texts if t]
    n_special = int(eos_token is not None)
    if not texts:
        raise DataError("train_bpe needs at least one non-empty text.")
    if vocab_size < 256 + n_special:
        raise DataError(
            f"vocab_size must be at least {256 + n_special} (all bytes), got {vocab_size}."
        )
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token] if eos_token else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, label=f"bpe{vocab_size}", eos_token=eos_token)


def default_tokenizer(vocab_size: int = 4096) -> HFTokenizer:
    """A byte-level BPE trained on the embedded ``"default"`` corpus, cached on disk.

    The first call trains it (about a second) and writes
    ``$JAXINTERP_CACHE/bpe<vocab_size>-<corpus version>/tokenizer.json``; later calls load
    it, and ``load_tokenizer`` on that directory gives the same tokenizer (same ``name``).
    """
    folder = cache_dir() / f"bpe{vocab_size}-{corpus_version()}"
    if not (folder / "tokenizer.json").exists():
        train_bpe(load_corpus("default"), vocab_size=vocab_size).save(folder)
    return load_tokenizer(folder)


def load_tokenizer(path: str | Path) -> HFTokenizer:
    """Load a local tokenizer: a ``tokenizer.json`` file, or a directory containing one,
    or a GPT-2 style ``encoder.json`` + ``vocab.bpe`` pair (either file, or their directory).

    A ``tokenizer_config.json`` beside it, if present, names the BOS and EOS tokens.

    Raises:
        DataError: the path does not exist, holds no tokenizer, or cannot be parsed.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Tokenizer path does not exist: {path}")
    folder = path if path.is_dir() else path.parent
    bos, eos = _config_specials(folder / "tokenizer_config.json")
    label = folder.name or "tokenizer"
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.name in ("encoder.json", "vocab.bpe") or path.is_dir():
        encoder, merges = folder / "encoder.json", folder / "vocab.bpe"
        if not (encoder.is_file() and merges.is_file()):
            raise DataError(
                f"No tokenizer found at {path}: expected tokenizer.json, or encoder.json "
                "and vocab.bpe side by side."
            )
        try:
            tok = _byte_level(models.BPE.from_file(str(encoder), str(merges)))
        except Exception as e:
            raise DataError(f"Could not read the GPT-2 tokenizer in {folder}: {e}") from e
        if tok.token_to_id(EOS) is not None:
            tok.add_special_tokens([hf.AddedToken(EOS, special=True, normalized=False)])
        return HFTokenizer(tok, label=label, bos_token=bos, eos_token=eos)
    try:
        tok = hf.Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"Could not parse tokenizer file {path}: {e}") from e
    return HFTokenizer(tok, label=label, bos_token=bos, eos_token=eos)


def _config_specials(config: Path) -> tuple[str | None, str | None]:
    """BOS and EOS strings named in a transformers ``tokenizer_config.json``, if any."""
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None

    def content(v: object) -> str | None:
        return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None

    return content(cfg.get("bos_token")), content(cfg.get("eos_token"))
