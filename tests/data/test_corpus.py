"""The embedded corpus: contents, determinism, caching; local text files."""

import os

import pytest

from jaxinterp.data import cache_dir, corpus_text, corpus_version, load_corpus, load_text_files
from jaxinterp.data.corpus import _bible_docs, _module_skeleton
from jaxinterp.errors import DataError

pytestmark = pytest.mark.usefixtures("built_corpus")  # conftest.py


def test_default_corpus_mixes_bible_and_python():
    docs = load_corpus()
    size_mb = sum(len(d.encode()) for d in docs) / 1e6
    assert 5 < size_mb < 12
    titles = [d.split("\n", 1)[0] for d in docs]
    genesis = docs[titles.index("Genesis 1")]
    assert "In the beginning God created the heavens and the earth." in genesis
    assert "1." not in genesis[:40]  # verse numbers are stripped
    assert "# Python module json" in titles
    assert any(t.startswith("Python help topic: ") for t in titles)
    assert all(d.strip() and "\x1e" not in d for d in docs)
    # the default corpus is exactly the union of the two sources, interleaved
    assert sorted(docs) == sorted(load_corpus("python") + load_corpus("bible"))
    first_100 = titles[:100]
    assert any(t.startswith("#") for t in first_100) and any(
        " " in t and t[-1].isdigit() for t in first_100
    )


def test_corpus_is_cached_atomically_and_deterministic():
    bible = load_corpus("bible")
    assert len(bible) == 1189  # chapters of the 66 books
    assert _bible_docs() == bible  # a rebuild gives the same documents
    files = sorted(p.name for p in cache_dir().iterdir() if p.name.startswith("corpus-"))
    assert f"corpus-bible-{corpus_version()}.txt" in files
    assert not [p for p in cache_dir().iterdir() if p.name.endswith(".tmp")]
    assert corpus_text("bible", separator="\n\n") == "\n\n".join(bible)


def test_unknown_corpus_name():
    with pytest.raises(DataError, match="Unknown corpus 'wiki'"):
        load_corpus("wiki")


def test_module_skeleton_keeps_headers_docstrings_and_comments_in_order():
    src = '''"""Module doc."""
import os  # a trailing comment keeps its code line

# A comment about f.
@decorator
def f(x, y=1):
    """F's doc."""
    return x + y  # trailing comment keeps its line
class C:
    def m(self): pass
'''
    assert _module_skeleton(src).split("\n") == [
        '"""Module doc."""',
        "import os  # a trailing comment keeps its code line",
        "# A comment about f.",
        "@decorator",
        "def f(x, y=1):",
        '    """F\'s doc."""',
        "    return x + y  # trailing comment keeps its line",
        "class C:",
        "    def m(self): pass",
    ]


def test_load_text_files(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")
    assert load_text_files(tmp_path) == ["first é", "second"]
    assert load_text_files([tmp_path / "b.txt", str(tmp_path / "a.txt")]) == ["second", "first é"]
    (tmp_path / "crlf.txt").write_bytes(b"line\r\nend")
    assert load_text_files(tmp_path / "crlf.txt") == ["line\r\nend"]  # bytes kept as they are


@pytest.mark.parametrize("content", ["", "  \n\t "])
def test_empty_text_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=f"{path}.* is empty"):
        load_text_files(path)


def test_missing_or_undecodable_text_file(tmp_path):
    with pytest.raises(DataError, match=f"not found: {tmp_path / 'nope.txt'}"):
        load_text_files(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_text_files(tmp_path / "bad.txt")
    empty_dir = tmp_path / "empty_dir"
    os.mkdir(empty_dir)
    with pytest.raises(DataError, match="No text files"):
        load_text_files(empty_dir)
