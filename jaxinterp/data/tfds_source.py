"""Text datasets in TFDS's array_record format, written and read without TensorFlow.

On TPU VMs data usually arrives as a prepared TFDS dataset: a directory
``<data_dir>/<name>/<version>/`` holding ``dataset_info.json``, ``features.json`` and
``<name>-<split>.array_record-XXXXX-of-YYYYY`` shards. ``tfds.data_source`` opens such a
directory as a random-access sequence of examples with no TensorFlow at all, which suits
JAX input pipelines (grain samplers, deterministic resume by index).

* :func:`open_tfds` opens any prepared dataset by ``name`` and ``data_dir`` and presents
  one text feature as a sequence of ``str``.
* :func:`write_tfds_text` writes a local list of documents in that same format, so a
  laptop corpus and a pod-scale dataset go through one reading path.

Writing uses a small ``GeneratorBasedBuilder``: TFDS's own ``store_as_tfds_dataset``
(``AdhocBuilder``) touches ``tf.data`` while planning splits and so needs TensorFlow, and
TFDS locates a builder's source through the ``importlib_resources`` backport, which is
not installed; the builder below overrides ``code_path`` to skip that lookup. The files
it writes are ordinary TFDS output (``file_format="array_record"``), in document order.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import tqdm_utils

from jaxinterp.errors import DataError


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds a dataset of ``{text_key: str}`` examples from in-memory documents."""

    def __init__(
        self,
        *,
        name: str,
        splits: Mapping[str, Sequence[str]],
        data_dir: str,
        version: str,
        text_key: str,
        description: str,
    ) -> None:
        self.name = name
        self.VERSION = tfds_utils.Version(version)
        self._splits = splits
        self._text_key = text_key
        self._description = description
        super().__init__(data_dir=data_dir, version=version, file_format="array_record")

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> None:  # no source lookup: see the module docstring
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description,
            features=tfds.features.FeaturesDict({self._text_key: tfds.features.Text()}),
            disable_shuffling=True,  # keep document order
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager
        return {split: self._generate_examples(docs) for split, docs in self._splits.items()}

    def _generate_examples(self, docs: Sequence[str]) -> Iterator[tuple[int, dict]]:
        for i, doc in enumerate(docs):
            yield i, {self._text_key: doc}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence TFDS's progress bars and banner for the duration, then restore them."""
    was_active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(was_active)


def write_tfds_text(
    docs: Sequence[str] | Mapping[str, Sequence[str]],
    name: str,
    data_dir: str | os.PathLike,
    *,
    version: str = "1.0.0",
    text_key: str = "text",
    overwrite: bool = False,
    description: str = "Text documents written by jaxinterp.",
) -> Path:
    """Write documents as the TFDS dataset ``name`` (array_record) under ``data_dir``.

    Args:
        docs: a list of documents (stored as split ``"train"``) or a mapping split -> list.
        name: the dataset name, lower snake case (``my_corpus``).
        data_dir: the TFDS data directory; the dataset goes to ``data_dir/name/version``.
        version: the dataset version, ``"X.Y.Z"``.
        text_key: the name of the text feature.
        overwrite: replace an existing dataset of the same name and version.

    Returns:
        The directory holding the dataset files.
    """
    splits = dict(docs) if isinstance(docs, Mapping) else {"train": docs}
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataError(f"Dataset name {name!r} must be lower snake case, like 'my_corpus'.")
    for split, split_docs in splits.items():
        if isinstance(split_docs, str) or not all(isinstance(d, str) for d in split_docs):
            raise DataError(f"Split {split!r} must be a sequence of str documents.")
        if len(split_docs) == 0:
            raise DataError(f"Split {split!r} of dataset {name!r} has no documents.")
    target = Path(data_dir) / name / version
    if target.exists():
        if not overwrite:
            raise DataError(f"TFDS dataset {target} already exists; pass overwrite=True.")
        shutil.rmtree(target)
    builder = _TextBuilder(
        name=name,
        splits=splits,
        data_dir=str(data_dir),
        version=version,
        text_key=text_key,
        description=description,
    )
    with _quiet(), tempfile.TemporaryDirectory() as scratch:  # keep data_dir free of downloads/
        builder.download_and_prepare(download_dir=scratch)
    return target


class TfdsText(Sequence[str]):
    """One text feature of a TFDS ``data_source``, as a random-access sequence of ``str``.

    Attributes:
        source: the underlying ``tfds.data_source`` (indexable, ``len``-able).
        text_key: the feature read from each example.
    """

    def __init__(self, source: Any, text_key: str) -> None:
        self.source = source
        self.text_key = text_key

    def __len__(self) -> int:
        return len(self.source)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Document {index} is out of range for {n} documents.")
        value = self.source[index % n][self.text_key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def __repr__(self) -> str:
        return f"TfdsText({len(self)} documents, text_key={self.text_key!r})"


def open_tfds(
    name: str,
    data_dir: str | os.PathLike,
    split: str = "train",
    text_key: str = "text",
) -> TfdsText:
    """Open a prepared TFDS dataset's text feature through ``tfds.data_source``.

    Args:
        name: the dataset name, optionally with config and version (``"c4/en:3.0.1"``).
        data_dir: the TFDS data directory that holds it.
        split: a split name or TFDS slicing spec (``"train[:1%]"``).
        text_key: the feature holding the text.

    Raises:
        DataError: the dataset, split or feature is not there, or it is not array_record.
    """
    where = f"TFDS dataset {name!r} in {data_dir}"
    if not Path(data_dir).is_dir():
        raise DataError(f"{where}: data_dir does not exist.")
    base = name.split(":")[0].split("/")[0]
    if not (Path(data_dir) / base).is_dir():
        found = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
        raise DataError(f"{where}: no such dataset; data_dir has {', '.join(found) or 'none'}.")
    try:
        with _quiet():
            source = tfds.data_source(name, data_dir=os.fspath(data_dir), split=split)
    except Exception as e:  # tfds raises several unrelated types for a missing dataset
        raise DataError(f"Could not open {where} (split {split!r}): {_brief(e)}") from e
    keys = list(source.dataset_info.features.keys())
    if text_key not in keys:
        raise DataError(f"{where} has no feature {text_key!r}; it has {', '.join(keys)}.")
    return TfdsText(source, text_key)


def _brief(error: Exception) -> str:
    """TFDS's not-found message without its list of every catalogue dataset."""
    skip = ("Available datasets:", "Check that:")
    lines = [ln for ln in str(error).splitlines() if ln and not ln[0].isspace()]
    return " ".join(ln for ln in lines if ln not in skip)
