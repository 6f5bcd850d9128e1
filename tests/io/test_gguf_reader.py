"""The bulk GGUF header reader gives exactly gguf.GGUFReader's fields, and refuses a header
whose arrays run past the end of the file."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxinterp.errors import CheckpointError  # noqa: E402
from jaxinterp.io._gguf_reader import bulk_reader  # noqa: E402
from jaxinterp.io.gguf import gguf_metadata  # noqa: E402


def _write(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(2)
    w.add_token_list(["<s>", "a", "é", "", " bc", "\u2581d"] * 50)  # 300 tokens, one empty
    w.add_token_scores([float(i) / 7 for i in range(300)])
    w.add_token_types([3, 1, 1, 1, 6, 1] * 50)
    w.add_token_merges(["a bc", "▁ d"])
    w.add_array("test.floats64", [1.5, -2.25])
    w.add_array("test.bools", [True, False, True])
    w.add_tensor("token_embd.weight", np.arange(24, dtype=np.float32).reshape(6, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_fields_equal_gguf_readers(tmp_path):
    path = _write(tmp_path / "tiny.gguf")
    ours, theirs = bulk_reader(path), gguf.GGUFReader(path)
    assert list(ours.fields) == list(theirs.fields)
    for name, a in ours.fields.items():
        b = theirs.fields[name]
        assert (a.offset, a.name, a.data, a.types) == (b.offset, b.name, b.data, b.types), name
        assert len(a.parts) == len(b.parts), name
        for x, y in zip(a.parts, b.parts, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        assert a.contents() == b.contents(), name
    assert ours.fields["tokenizer.ggml.tokens"].contents()[:6] == ["<s>", "a", "é", "", " bc", "\u2581d"]
    assert ours.fields["tokenizer.ggml.merges"].contents() == ["a bc", "▁ d"]
    assert ours.data_offset == theirs.data_offset
    np.testing.assert_array_equal(ours.tensors[0].data, theirs.tensors[0].data)


def test_a_header_cut_inside_an_array_is_refused(tmp_path):
    data = _write(tmp_path / "tiny.gguf").read_bytes()
    cut = data.index(b" bc") + 2  # inside the token list
    (tmp_path / "cut.gguf").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        gguf_metadata(tmp_path / "cut.gguf")
