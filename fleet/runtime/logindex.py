"""When each line of a host's stored log arrived: logs/algo-k.log.times, beside the log.

The log (logs/algo-k.log) keeps exactly the bytes received; this index says when they came,
so that `fleet serve` gives every line the time it reached the controller (CloudWatch's
event `timestamp`) and finds a time range without reading the log.

Format: a 16-byte header (MAGIC), then fixed 16-byte records `<offset, ms>` (little-endian
unsigned 64-bit): "the log's bytes from `offset` on arrived at `ms` (milliseconds since the
epoch) or later". A byte's time is the ms of the last record whose offset is at or before
it; a line's time is its last byte's (its newline: when the line was whole). Offsets and ms
never decrease (a wall clock stepped back repeats the last ms), so both can be bisected.

Bounded: a record is written only for a chunk that completes a line (or that comes
COARSE_BYTES after the last record: the pieces of a very long line), only when the ms changed
since the last record, and, within DENSE_MS of it, only DENSE_BYTES or more after it. So the
index grows by at most 10% of the log plus 1.6 KB a second (100 records), whatever the
container prints; a chunk of many lines (how a busy container's output arrives) costs one
record. The price: a line within 10 ms and 160 bytes of the last record takes its time, at
most 10 ms early (scripts/bench-logindex: a flood of 2 million lines, 22 records; 2-byte lines
flushed every 0.2 ms, the worst case, an index of a quarter of the log). The writer holds two integers; each
record is one write(2) of 16 bytes, made before the chunk's own write to the log, so a
reader never sees a log byte that no record covers, and no record is held in memory to be
lost (a buffered writer would leave the newest lines without their time until its flush).

Crash safety: a record torn by a crash (the file's length past the header not a multiple of
16) is ignored by readers and cut off by the next writer (`fleet attach` taking the job
over), as are records past the log's end (the process died between the two writes). A log
without an index (a run of an older fleet), or bytes before the index's first record (an
older fleet's run taken over by this one), have no arrival time: readers use a fallback the
caller gives (fleet serve: the job's start).
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"fleet-log-times1"  # the header: what the file is, and its format's version
RECORD = struct.Struct("<QQ")  # byte offset in the log, arrival time in ms since the epoch
COARSE_BYTES = 64 * 1024  # bytes without a newline after which a chunk gets a record anyway
DENSE_MS, DENSE_BYTES = 10, 160  # a record this soon after the last needs this many bytes since it
SUFFIX = ".times"
_BLOCK = 4096  # records read at once (64 KiB)

assert len(MAGIC) == RECORD.size


def index_path(log_path: Path) -> Path:
    """Where the index of `log_path` lives: beside it, `algo-k.log.times`."""
    return log_path.with_name(log_path.name + SUFFIX)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class IndexWriter:
    """Appends the records of one log's index. `arrived(offset, chunk)` before the chunk is
    written to the log at `offset`."""

    def __init__(self, fd: int, log_size: int, clock: Callable[[], int] = _now_ms) -> None:
        self._fd = fd
        self._clock = clock
        self._last_offset, self._last_ms, self._records = 0, 0, 0
        self._repair(log_size)

    def _repair(self, log_size: int) -> None:
        """Make the file a header and whole records, none past the log's end (see the module)."""
        size = os.fstat(self._fd).st_size
        if size < len(MAGIC) or os.pread(self._fd, len(MAGIC), 0) != MAGIC:
            if size:
                log.warning("log index fd %d: not an index (%d bytes); starting it again", self._fd, size)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, MAGIC)
            return
        count = (size - len(MAGIC)) // RECORD.size
        while count:
            offset, ms = RECORD.unpack(os.pread(self._fd, RECORD.size, len(MAGIC) + (count - 1) * RECORD.size))
            if offset <= log_size:
                self._last_offset, self._last_ms = offset, ms
                break
            count -= 1
        end = len(MAGIC) + count * RECORD.size
        if end != size:
            os.ftruncate(self._fd, end)
        self._records = count

    def arrived(self, offset: int, chunk: bytes) -> None:
        """Note that `chunk`, to be written at `offset` of the log, arrived now."""
        ms = max(self._clock(), self._last_ms)
        if self._records:
            if ms == self._last_ms:
                return  # the last record already gives these bytes this time
            if b"\n" not in chunk and offset - self._last_offset < COARSE_BYTES:
                return  # no line ends in it: no line's time depends on it
            if ms - self._last_ms < DENSE_MS and offset + len(chunk) - self._last_offset < DENSE_BYTES:
                return  # a flood of short lines: they take the last record's time, < DENSE_MS early
        os.write(self._fd, RECORD.pack(offset, ms))
        self._last_offset, self._last_ms = offset, ms
        self._records += 1

    def close(self) -> None:
        os.close(self._fd)


class IndexedLog(io.FileIO):
    """A host's stored log opened to append (what the instance's log sink writes to), keeping
    its index: each write notes its arrival time first (IndexWriter). A file object like the
    plain one it replaces, so that the instance's code does not change."""

    def __init__(self, log_fd: int, index_fd: int, clock: Callable[[], int] = _now_ms) -> None:
        super().__init__(log_fd, "ab")
        try:
            self._size = os.fstat(log_fd).st_size
            self._index = IndexWriter(index_fd, self._size, clock)
        except BaseException:
            os.close(index_fd)
            super().close()
            raise

    def write(self, data) -> int:
        chunk = bytes(data)
        if chunk:
            self._index.arrived(self._size, chunk)
        written = super().write(chunk) or 0
        self._size += written
        return written

    def close(self) -> None:
        if not self.closed:
            try:
                self._index.close()
            finally:
                super().close()


class LogIndex:
    """The read side of one log's index: its records, read with pread as needed (a huge
    index is bisected, never read whole). `open` answers None when the log has no index."""

    def __init__(self, fd: int, count: int) -> None:
        self._fd = fd
        self.count = count

    @classmethod
    def open(cls, log_path: Path) -> LogIndex | None:
        try:
            fd = os.open(index_path(log_path), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < len(MAGIC) or os.pread(fd, len(MAGIC), 0) != MAGIC:
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, (size - len(MAGIC)) // RECORD.size)  # a torn last record is left out

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LogIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, i: int) -> tuple[int, int]:
        """Record `i`: (offset, ms)."""
        data = os.pread(self._fd, RECORD.size, len(MAGIC) + i * RECORD.size)
        if len(data) < RECORD.size:
            raise IndexError(i)
        offset, ms = RECORD.unpack(data)
        return offset, ms

    def records(self, start: int = 0) -> Iterator[tuple[int, int]]:
        """The records from `start` on, read a block at a time."""
        i = start
        while i < self.count:
            n = min(_BLOCK, self.count - i)
            data = os.pread(self._fd, n * RECORD.size, len(MAGIC) + i * RECORD.size)
            yield from RECORD.iter_unpack(data[:len(data) - len(data) % RECORD.size])
            got = len(data) // RECORD.size
            if got == 0:
                return
            i += got

    def covering(self, offset: int) -> int:
        """The index of the last record at or before byte `offset` (-1: none)."""
        return bisect.bisect_right(_Column(self, 0), offset) - 1

    def first_at(self, ms: int) -> int:
        """The index of the first record of time `ms` or later (`count`: none)."""
        return bisect.bisect_left(_Column(self, 1), ms)


class _Column:
    """One field of the records as a sequence, for bisect (a pread per look)."""

    def __init__(self, index: LogIndex, field: int) -> None:
        self.index, self.field = index, field

    def __len__(self) -> int:
        return self.index.count

    def __getitem__(self, i: int) -> int:
        return self.index.record(i)[self.field]


class Timeline:
    """The arrival times of one log's bytes: the index's, and `fallback` (ms) for bytes no
    record covers (no index, or before its first record; a fallback later than the first
    record's time gives way to it, so that times never decrease along the log)."""

    def __init__(self, index: LogIndex | None, fallback: int) -> None:
        self.index = index
        self.fallback = fallback
        if index is not None and index.count:
            offset, ms = index.record(0)
            self.fallback = ms if offset == 0 else min(fallback, ms)
        self._records: Iterator[tuple[int, int]] | None = None
        self._current: tuple[int, int] = (-1, self.fallback)
        self._next: tuple[int, int] | None = None

    @property
    def first(self) -> int:
        """The time of the log's first byte."""
        return self.fallback

    def last(self) -> int:
        """The time of the log's last byte (so far)."""
        if self.index is None or not self.index.count:
            return self.fallback
        return self.index.record(self.index.count - 1)[1]

    def position(self, ms: int) -> int | None:
        """The first byte of time `ms` or later (a line ending there or after has a time of at
        least `ms`); None: no byte so far."""
        if self.fallback >= ms:
            return 0
        if self.index is None:
            return None
        i = self.index.first_at(ms)
        return self.index.record(i)[0] if i < self.index.count else None

    def stamp(self, offset: int) -> int:
        """The time of byte `offset`. Calls with offsets that do not decrease read the index
        forward once; a smaller offset starts over with a bisection."""
        if self.index is None:
            return self.fallback
        if offset < self._current[0] or self._records is None:
            i = self.index.covering(offset)
            self._current = self.index.record(i) if i >= 0 else (-1, self.fallback)
            self._records = self.index.records(i + 1)
            self._next = next(self._records, None)
        while self._next is not None and self._next[0] <= offset:
            self._current = self._next
            self._next = next(self._records, None)
        return self._current[1]
