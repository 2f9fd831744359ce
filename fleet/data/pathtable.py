"""Per-file state of an output, in flat arrays: no Python object per file.

An output may hold hundreds of thousands of files with long names (issue 19: 300,000).
Remembering each by its path (a set or dict of str) costs its length and ~100 bytes more, per
structure: measured with 1,000-byte paths, 1.3 KB a file in an EndOfJob upload and 3.9 KB in
Continuous passes (tests/unit/test_outputs_memory.py). A PathTable keeps, per file, a
128-bit keyed digest of its relative path and a few unsigned integer columns, in `array`s of
an open-addressing hash table (linear probing, at most 3/4 full): 16 bytes of key plus the
columns' bytes, divided by the load (0.375..0.75), a file. The path itself is never kept.

The digest is BLAKE2b keyed with a random key of this process: a container cannot choose names
that collide; two of 300,000 names collide by chance with a probability near 2^-91.
"""

from __future__ import annotations

import hashlib
import os
from array import array

_KEY = os.urandom(16)
_MASK64 = (1 << 64) - 1
_MIN_CAPACITY = 64


def path_key(relative: str) -> tuple[int, int]:
    """The 128-bit digest of a relative path, as two 64-bit halves; never (0, 0) (the low
    half is odd), which marks an empty slot."""
    value = int.from_bytes(hashlib.blake2b(relative.encode("utf-8", "surrogateescape"), digest_size=16,
                                           key=_KEY).digest())
    return value >> 64, (value & _MASK64) | 1


def stamp_key(text: str) -> int:
    """A 64-bit digest of a short text (a file's `SIZE MTIME`), never 0 (0: none)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8,
                                          key=_KEY).digest()) | 1


class PathTable:
    """Relative paths → named unsigned integer columns (array typecodes, e.g. "Q", "L", "H"),
    0 in every column for a path just added."""

    def __init__(self, **columns: str) -> None:
        self._types = columns
        self._allocate(_MIN_CAPACITY)
        self.count = 0

    def _allocate(self, capacity: int) -> None:
        self._mask = capacity - 1
        self._hi = array("Q", bytes(8 * capacity))
        self._lo = array("Q", bytes(8 * capacity))
        self.columns: dict[str, array] = {name: array(code, bytes(array(code).itemsize * capacity))
                                          for name, code in self._types.items()}

    def __len__(self) -> int:
        return self.count

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def _slot(self, hi: int, lo: int) -> int:
        """The slot holding this key, or the empty slot where it would go."""
        index = lo & self._mask
        his, los = self._hi, self._lo
        while True:
            slot_lo = los[index]
            if slot_lo == 0 or (slot_lo == lo and his[index] == hi):
                return index
            index = (index + 1) & self._mask

    def find(self, relative: str) -> int:
        """The slot of `relative`, -1 when it was never added."""
        hi, lo = path_key(relative)
        slot = self._slot(hi, lo)
        return slot if self._lo[slot] else -1

    def add(self, relative: str) -> int:
        """The slot of `relative`, added (its columns 0) when it was not there. A slot number
        is good until the next add."""
        hi, lo = path_key(relative)
        slot = self._slot(hi, lo)
        if self._lo[slot]:
            return slot
        if 4 * (self.count + 1) > 3 * self.capacity:
            self._grow()
            slot = self._slot(hi, lo)
        self._hi[slot], self._lo[slot] = hi, lo
        self.count += 1
        return slot

    def _grow(self) -> None:
        his, los, columns = self._hi, self._lo, self.columns
        self._allocate(2 * self.capacity)
        for old, lo in enumerate(los):
            if lo:
                slot = self._slot(his[old], lo)
                self._hi[slot], self._lo[slot] = his[old], lo
                for name, values in columns.items():
                    self.columns[name][slot] = values[old]

    def nbytes(self) -> int:
        """The bytes its arrays hold (what it costs, whatever the paths' lengths)."""
        return sum(a.itemsize * len(a) for a in (self._hi, self._lo, *self.columns.values()))
