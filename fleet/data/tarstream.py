"""tar as the wire format between the controller and a host's `tar`.

Inputs: the controller writes a tar stream (header, the object's bytes as they arrive from
S3, padding) into one SSH channel running `tar -x`: many files, one channel, no staging.
Outputs: the host's `tar -c` streams a directory back; `TarReader` parses it as it comes.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


# What the reader accepts: a stream comes from a host (and through it, from a container) and is
# never trusted. A size beyond off_t is no file a tar can hold; a pax header's records or a GNU
# long name beyond 1 MiB is no name a filesystem can hold, and would be buffered whole.
MAX_SIZE = 2 ** 63 - 1
MAX_HEADER_DATA = 1024 * 1024
_KEPT_PAX_KEYS = ("path", "size")  # all fleet reads: the other records of a header are dropped


class TarStreamError(Exception):
    """The stream is not a tar archive fleet reads (the caller names the host and the output)."""


class TarEndedEarly(TarStreamError, EOFError):
    """The stream ended before its archive did."""


_USTAR_TAIL = b"0\0" + b"\0" * 99 + b"ustar\x0000" + b"\0" * 247  # typeflag .. the block's end
_MAX_OCTAL_SIZE = 8 ** 11 - 1


def file_header(name: str, size: int, mtime: float = 0) -> bytes:
    """A regular file's header (pax for long or non-ASCII names)."""
    if name.isascii() and len(name) < 100 and 0 <= size <= _MAX_OCTAL_SIZE and 0 <= mtime < 8 ** 11:
        return _ustar_header(name.encode("ascii"), size, int(mtime))
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(mtime)
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    """The bytes tarfile writes for a short ASCII name, made directly (2,000 small objects
    spent ~80 ms in tarfile building them)."""
    head = (name.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" + b"0000000\0"
            + b"%011o\0" % size + b"%011o\0" % mtime)
    checksum = sum(head) + 8 * 0x20 + sum(_USTAR_TAIL)  # the checksum field counts as spaces
    return head + b"%06o\0 " % checksum + _USTAR_TAIL


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


@dataclass(frozen=True)
class TarEntry:
    name: str  # as archived, "./" removed
    kind: str  # "file", "dir", "symlink", "other"
    size: int


class TarReader:
    """Parses a tar stream from `read()` (chunks; b"" at the end) without holding more than
    a chunk (or one header's records, at most MAX_HEADER_DATA): `next()` gives the next entry,
    `chunks()` its content. Whatever the stream holds, it raises TarStreamError (TarEndedEarly
    when it stops short) rather than loop, grow or fail otherwise."""

    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self._read = read
        self._buffer = bytearray()
        self._eof = False
        self._left = 0  # content of the current entry not yet read
        self._pad = 0

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._eof:
            chunk = await self._read()
            if not chunk:
                self._eof = True
            self._buffer += chunk

    async def _exactly(self, n: int, where: str) -> bytes:
        await self._fill(n)
        if len(self._buffer) < n:
            raise TarEndedEarly(f"the tar stream ended early, {where}")
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def _skip_rest(self) -> None:
        async for _ in self.chunks():
            pass

    async def next(self) -> TarEntry | None:
        await self._skip_rest()
        pax: dict[str, str] = {}
        long_name: str | None = None
        while True:
            await self._fill(BLOCK)
            if not self._buffer:
                return None  # the end of the stream, at an entry boundary
            header = await self._exactly(BLOCK, "inside a header")
            if header == b"\0" * BLOCK:
                return None
            try:  # checks the header's checksum and its number fields
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except (tarfile.TarError, ValueError) as exc:
                raise TarStreamError(f"a tar header is corrupt ({exc})") from exc
            _check_size(info.size, "a tar header")
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if info.size > MAX_HEADER_DATA:
                    raise TarStreamError(f"a tar extended header of {info.size} bytes (more than "
                                         f"{MAX_HEADER_DATA} is no name a filesystem holds)")
                data = await self._exactly(info.size + (-info.size % BLOCK), "inside an extended header")
                data = data[:info.size]
                if info.type == tarfile.XHDTYPE:
                    records = _pax_records(data)
                    pax.update({key: records[key] for key in _KEPT_PAX_KEYS if key in records})
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            size = _pax_size(pax["size"]) if "size" in pax else info.size
            name = pax.get("path") or long_name or info.name
            while name.startswith("./"):
                name = name[2:]
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                kind = "file"
            elif info.type == tarfile.DIRTYPE:
                kind, size = "dir", 0
            elif info.type == tarfile.SYMTYPE:
                kind, size = "symlink", 0
            elif info.type == tarfile.LNKTYPE:
                kind, size = "hardlink", 0
            else:
                no_body = info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
                kind, size = "other", (0 if no_body else size)
            self._left, self._pad = size, -size % BLOCK
            return TarEntry(name.rstrip("/") if kind == "dir" else name, kind, size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current entry's content, then its padding is skipped."""
        while self._left:
            await self._fill(1)
            if not self._buffer:
                raise TarEndedEarly("the tar stream ended early, inside a file")
            take = bytes(self._buffer[:self._left])
            del self._buffer[:len(take)]
            self._left -= len(take)
            yield take
        if self._pad:
            await self._exactly(self._pad, "inside a file's padding")
            self._pad = 0


def _check_size(size: int, where: str) -> int:
    """Every size read drives a loop: a negative one would never end it."""
    if not 0 <= size <= MAX_SIZE:
        raise TarStreamError(f"{where} gives the size {size}; refused")
    return size


def _pax_size(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_SIZE))):
        raise TarStreamError(f"a tar extended header gives the size {value[:40]!r}; refused")
    return _check_size(int(value), "a tar extended header")


def _pax_records(data: bytes) -> dict[str, str]:
    """`LENGTH KEY=VALUE\n` records, LENGTH counting the whole record in bytes; anything else
    is refused (a length of 0 would never move on). Walked by offset: no copy per record."""
    records = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + len(str(MAX_HEADER_DATA)) + 1)
        digits = data[position:space] if space > position else b""
        if not digits.isdigit():  # ASCII digits only, for bytes
            raise TarStreamError("a tar extended header record has no length")
        end = position + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != ord("\n"):
            raise TarStreamError(f"a tar extended header record has a wrong length ({int(digits)})")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not key or not equals:
            raise TarStreamError("a tar extended header record is not KEY=VALUE")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError as exc:
            raise TarStreamError("a tar extended header record's key is not UTF-8") from exc
        position = end
    return records
