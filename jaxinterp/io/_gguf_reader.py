"""``gguf.GGUFReader`` with its metadata arrays read in bulk.

The reader parses a GGUF header field by field, and an array field element by element: each
of a vocabulary's ~50k tokens (a ``uint64`` length, then the bytes), ~50k scores and ~50k
merges costs several slices of a ``numpy.memmap`` (each slice a new memmap object), about 3 s
for SmolLM2's header. This subclass builds the same ``ReaderField`` parts, indices and types
(so ``field.contents()`` is unchanged) from a plain-array view of the file: an array of
scalars is read as one array and split into views, an array of strings walks its lengths
over a ``memoryview``. Nested arrays and byte-swapped files keep the reader's own path.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np


@functools.cache
def _reader_class() -> type:
    import gguf
    from gguf import GGUFValueType

    class BulkReader(gguf.GGUFReader):
        def _plain(self) -> np.ndarray:
            plain = self.__dict__.get("_plain_data")
            if plain is None:  # a plain view: slicing it makes no memmap objects
                plain = self._plain_data = self.data.view(np.ndarray)
            return plain

        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
            dtype, count = np.dtype(dtype), int(count)
            arr = self._plain()[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _get_field_parts(self, orig_offs: int, raw_type: int):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY or self.byte_order == "S":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n, offs = GGUFValueType(raw_itype[0]), int(alen[0]), orig_offs + 12
            parts: list[np.ndarray] = [raw_itype, alen]
            types = [GGUFValueType.ARRAY] + [itype] * (n > 0)  # as the reader: the item type from item 0
            if itype == GGUFValueType.STRING:
                plain, view = self._plain(), memoryview(self._plain())
                for _ in range(n):
                    length = int.from_bytes(view[offs:offs + 8], "little")
                    parts += (plain[offs:offs + 8].view(np.uint64), plain[offs + 8:offs + 8 + length])
                    offs += 8 + length
                if offs > len(plain):
                    raise ValueError(f"the array at byte {orig_offs} runs past the end of the file")
                return offs - orig_offs, parts, list(range(3, len(parts), 2)), types
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is None:  # arrays of arrays
                return super()._get_field_parts(orig_offs, raw_type)
            values = self._get(offs, nptype, n)
            if len(values) != n:
                raise ValueError(f"the array at byte {orig_offs} runs past the end of the file")
            parts += (values[i:i + 1] for i in range(n))
            return 12 + int(values.nbytes), parts, list(range(2, 2 + n)), types

    return BulkReader


def bulk_reader(path: str | os.PathLike, mode: str = "r"):
    """A ``gguf.GGUFReader`` of ``path`` whose metadata arrays are read in bulk."""
    return _reader_class()(path, mode)
