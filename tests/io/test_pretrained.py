"""ji.from_pretrained: a HF folder or a GGUF file, returning a model that carries its tokenizer."""

import json

import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.io.hf import load_hf


def test_from_pretrained_hf_folder_carries_tokenizer_and_bos_default(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint("gpt2")
    model = ji.from_pretrained(folder)
    plain, tokenizer = load_hf(folder)
    assert model.tokenizer is not None and plain.tokenizer is None
    assert model.to_str_tokens("the cat sat") == ["the", "cat", "sat"]
    assert not model.default_prepend_bos
    np.testing.assert_allclose(model("the cat sat"), plain(model.to_tokens("the cat sat")), atol=1e-6)
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    try:
        with_bos = ji.from_pretrained(folder)
        assert with_bos.default_prepend_bos and with_bos.to_str_tokens("the cat")[0] == "<|endoftext|>"
    finally:
        (folder / "tokenizer_config.json").unlink()


def test_from_pretrained_refuses_files_that_are_not_gguf(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"PK\x03\x04 pickled")
    with pytest.raises(ji.CheckpointError, match="not GGUF"):
        ji.from_pretrained(bad)
