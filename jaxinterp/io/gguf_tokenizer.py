"""The tokenizer stored inside a GGUF file, rebuilt as a Hugging Face ``tokenizers`` model.

llama.cpp keeps the whole vocabulary in the file's metadata:

* ``tokenizer.ggml.model``: ``"gpt2"`` (byte-level BPE, as GPT-2, Llama 3, SmolLM, Qwen) or
  ``"llama"`` (SentencePiece BPE with byte fallback, as Llama 2, Mistral, TinyLlama);
* ``tokenizer.ggml.tokens``: the token strings, in id order; ``token_type`` says what each
  is (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
* ``tokenizer.ggml.merges``: the BPE merges, ``"Ġ t"``, by rank (gpt2 only);
  ``tokenizer.ggml.scores``: the piece scores (llama only);
* ``tokenizer.ggml.pre``: which pre-tokenizer regex splits text into words before BPE;
* ``tokenizer.ggml.bos_token_id`` / ``eos_token_id``, and ``tokenizer.chat_template``.

Byte-level BPE: text is split into words by the ``pre`` regexes (the same tables llama.cpp
uses), each byte of a word is mapped to a printable character (space -> ``Ġ``), and merges
are applied by rank. SentencePiece: spaces become ``▁``, a ``▁`` is prepended, pieces are
merged by score, and characters outside the vocabulary fall back to ``<0xNN>`` byte tokens.
Control and user-defined tokens are matched whole in the text (``<|im_start|>`` is one id).
``decode(encode(text)) == text`` for byte-level vocabularies; no BOS is added implicitly.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers as hf
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

from jaxinterp.errors import DataError, TokenError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CASED = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CASED + (r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# tokenizer.ggml.pre -> (split regexes applied in turn, ignore_merges), as llama.cpp's tables.
_PRE: dict[str, tuple[tuple[str, ...], bool]] = {
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jina-es", "jina-de", "exaone4"),
                    ((_GPT2,), False)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), ((r"\p{N}", _GPT2), False)),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"), ((_LLAMA3,), True)),
    **dict.fromkeys(("dbrx", "smaug-bpe"), ((_LLAMA3,), False)),
    **dict.fromkeys(("qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"), ((_QWEN2,), False)),
}


class GGUFTokenizer:
    """A GGUF file's tokenizer, with jaxinterp's tokenizer interface.

    Attributes:
        tokenizer: the underlying ``tokenizers.Tokenizer``.
        name: ``gguf-<model>-<hash of the vocabulary>``, identifies the exact vocabulary.
        vocab_size, bos_token_id, eos_token_id: as the file's metadata says.
        add_bos_token: whether llama.cpp would prepend BOS to a prompt (``encode`` never does).
        chat_template: the Jinja chat template, or ``None``.
    """

    def __init__(self, tokenizer: hf.Tokenizer, *, kind: str, bos_token_id: int | None,
                 eos_token_id: int | None, add_bos_token: bool = False,
                 chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.name = f"gguf-{kind}-{hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:10]}"
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.add_bos_token = add_bos_token
        self.chat_template = chat_template

    def __repr__(self) -> str:
        return f"GGUFTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenError(f"Token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}).")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_str(self, i: int) -> str | None:
        """The vocabulary string of token ``i`` (byte-level form, e.g. ``'Ġcapital'``)."""
        return self.tokenizer.id_to_token(i)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *,
                            add_generation_prompt: bool = True) -> str:
        """Render ``[{"role": ..., "content": ...}, ...]`` with the file's chat template.

        Returns the prompt text; ``encode`` it to get ids (special tokens are matched whole).
        """
        if not self.chat_template:
            raise DataError("This GGUF file has no tokenizer.chat_template.")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover
            raise DataError("apply_chat_template needs jinja2: pip install jinja2") from e

        def raise_exception(msg: str):
            raise DataError(f"chat template: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        tok = self.tokenizer.id_to_token
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=tok(self.bos_token_id) if self.bos_token_id is not None else "",
            eos_token=tok(self.eos_token_id) if self.eos_token_id is not None else "",
        )


def tokenizer_from_metadata(meta: Mapping[str, Any]) -> GGUFTokenizer:
    """Build the tokenizer from GGUF ``tokenizer.*`` metadata (plain Python values).

    Raises:
        DataError: the metadata has no vocabulary, or a tokenizer model other than
            ``gpt2`` / ``llama``.
    """
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise DataError("GGUF metadata has no tokenizer.ggml.tokens: the file has no tokenizer.")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if kind == "gpt2":
        tok = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [],
                              str(meta.get("tokenizer.ggml.pre") or "default"))
    elif kind == "llama":
        tok = _sentencepiece_bpe(tokens, types, meta.get("tokenizer.ggml.scores"),
                                 bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    else:
        raise DataError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2', 'llama')."
        )
    # Control and user-defined tokens are matched whole in the input text.
    tok.add_tokens([
        hf.AddedToken(t, special=ty == CONTROL, normalized=False)
        for t, ty in zip(tokens, types, strict=False) if ty in (CONTROL, USER_DEFINED)
    ])

    def ident(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    return GGUFTokenizer(
        tok, kind=kind, bos_token_id=ident("bos_token_id"), eos_token_id=ident("eos_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated string keeps its first id
    return vocab


def _byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], pre: str) -> hf.Tokenizer:
    if pre not in _PRE:
        warnings.warn(
            f"GGUF pre-tokenizer {pre!r} is not in jaxinterp's table; splitting words with "
            "the GPT-2 regex, so some strings may tokenize differently from llama.cpp.",
            stacklevel=3,
        )
    regexes, ignore_merges = _PRE.get(pre, ((_GPT2,), False))
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = hf.Tokenizer(models.BPE(vocab=_vocab(tokens), merges=pairs, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float] | None,
                       add_space_prefix: bool) -> hf.Tokenizer:
    """SentencePiece BPE as HF's Llama converter builds it: a merge ``(a, b)`` for every
    piece ``a + b`` whose halves are both pieces, ranked by the merged piece's score."""
    vocab = _vocab(tokens)
    score = list(scores) if scores is not None else [-float(i) for i in range(len(tokens))]
    mergeable = {t for t, ty in zip(tokens, types, strict=False) if ty in (NORMAL, UNUSED)}
    merges = []
    for piece in mergeable:
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in mergeable and b in mergeable:
                merges.append((-score[vocab[piece]], vocab[a], vocab[b], a, b))
    merges.sort()
    unk = next((t for t, ty in zip(tokens, types, strict=False) if ty == UNKNOWN), None)
    tok = hf.Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges],
                                  unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        *([decoders.Strip(" ", 1, 0)] if add_space_prefix else []),
    ])
    return tok
