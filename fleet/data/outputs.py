"""Outputs from the hosts to S3 (or a controller directory), streamed.

The host's `tar -c` streams an output directory back through one SSH channel; each regular
file goes to S3Uri + its path relative to LocalPath as it is read: one PUT for a small file, a
multipart upload with parts in parallel for a large one (aborted on failure). Symlinks and
special files are skipped with a warning.

The container may still run (Continuous outputs) and is not trusted: tar archives only from
its own walk of the tree, which opens each entry relative to its parent directory and never
through a symlink; no path named earlier is ever opened by name, since any component of it
could have been swapped for a symlink to a host directory since. To send only some files, the
others are left out of the walk (that only saves bytes); what is uploaded is decided here,
from what the stream holds: an entry not asked for (it appeared after the listing, or a
listed path now goes through a symlink) is skipped. The stream itself is parsed as hostile
(fleet.data.tarstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.data.locations import FileLocation, Location, parse_location, safe_relative_path
from fleet.data.pathtable import PathTable, stamp_key
from fleet.data.tarstream import TarEndedEarly, TarReader, TarStreamError
from fleet.errors import ClientError, FleetError
from fleet.fanout import settled, task_group
from fleet.host import command as host_command
from fleet.transport.base import RemoteProcess, Transport, drain

if TYPE_CHECKING:  # aiobotocore loads slowly: only jobs that use S3 import it
    from fleet.data.s3 import S3, MultipartUpload

log = logging.getLogger(__name__)

PART = 5 * 1024 * 1024  # multipart part size (S3's smallest); files up to this size are one PUT
MAX_PARTS = 10_000  # S3's limit: a file above PART * MAX_PARTS (48.8 GiB) gets larger parts
# Part buffers across the whole job (being filled from a tar stream, or being sent): they
# bound the controller's memory at PART_BUFFERS * PART, whatever the number of hosts and
# files. Measured on the test bed, one 700 MiB file: 8 parts of 8 MiB in flight (fresh
# objects, sent by botocore) peaked at 297 MB RSS and took 10.9 s; 4 buffers of 5 MiB sent
# by aiohttp peak at 133 MB and take 9.1 s (an S3 job that moves nothing: 96 MB).
PART_BUFFERS = 4
EXCLUSIONS_CHUNK = 64 * 1024  # bytes of tar's exclusion lines written to the host at a time


@dataclass
class OutputCount:
    objects: int = 0
    bytes: int = 0
    # Each relative path uploaded → the number of the algo that wrote it (1-based, in `algos`):
    # 18 bytes of arrays a slot, 48 a file at most, no Python object per file (fleet.data.pathtable).
    written_by: PathTable = field(default_factory=lambda: PathTable(algo="H"))
    algos: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"Objects": self.objects, "Bytes": self.bytes}

    def wrote(self, relative: str, algo: str) -> str | None:
        """Note that `algo` uploads `relative`; the other algo that uploaded it before, if any."""
        if algo not in self.algos:
            self.algos.append(algo)
        number = self.algos.index(algo) + 1
        slot = self.written_by.add(relative)
        column = self.written_by.columns["algo"]
        previous = column[slot]
        column[slot] = number
        return self.algos[previous - 1] if previous and previous != number else None


class ChangedFiles:
    """What the Continuous passes over one host's output remember of its files, to upload
    each file once per change: per file, the stamp (size and mtime) it had when last
    uploaded and when last looked at, in a PathTable (40 bytes of arrays a slot, 107 a file at
    most; the dicts of paths this replaces held 3.9 KB a file of 1,000-byte paths).

    A pass: `begin()`, then `listed()` for each file of the host's listing (whether to
    upload it), then `uploaded()` for each file that went up; `in` tells whether a name
    was asked for in this pass (the tar stream's entries are checked against it)."""

    def __init__(self) -> None:
        self._files = PathTable(uploaded="Q", looked="Q", looked_in="L", wanted_in="L")
        self._pass = 0
        self.wanted = 0  # files asked for in this pass

    def begin(self) -> None:
        self._pass += 1
        self.wanted = 0

    def listed(self, relative: str, stamp: str, stable_only: bool) -> bool:
        """Note a file of this pass's listing with its `SIZE MTIME` stamp; whether to upload it:
        its stamp differs from its last upload's and, with `stable_only`, equals the previous
        look's (a file being written waits for the next pass)."""
        key = stamp_key(stamp)
        slot = self._files.add(relative)
        columns = self._files.columns
        stable = columns["looked_in"][slot] == self._pass - 1 and columns["looked"][slot] == key
        columns["looked"][slot], columns["looked_in"][slot] = key, self._pass
        if columns["uploaded"][slot] == key or (stable_only and not stable):
            return False
        columns["wanted_in"][slot] = self._pass
        self.wanted += 1
        return True

    def __contains__(self, relative: object) -> bool:
        if not isinstance(relative, str):
            return False
        slot = self._files.find(relative)
        return slot >= 0 and self._files.columns["wanted_in"][slot] == self._pass

    def uploaded(self, relative: str) -> None:
        """`relative`, asked for in this pass, went up with the stamp it was listed with."""
        slot = self._files.find(relative)
        if slot >= 0:
            self._files.columns["uploaded"][slot] = self._files.columns["looked"][slot]


class Uploader:
    def __init__(self, s3: S3 | None, warn: Callable[[str], None]) -> None:
        self.s3 = s3
        self.warn = warn
        self._buffers = _PartBuffers(PART_BUFFERS)

    async def upload_host(self, transport: Transport, algo: str, directory: str, destination: Location,
                          output_name: str, count: OutputCount, only: Container[str] | None = None,
                          leave_out: Iterable[str] = (), uploaded: Callable[[str], None] | None = None) -> None:
        """Every regular file of `directory` on the host (or only the relative paths in
        `only`) to `destination`; the host's tar may leave out the relative paths in
        `leave_out` (files known not to be wanted: fewer bytes), streamed to it. `uploaded`
        is told each relative path that went up (nothing is kept here per file)."""
        mode = "all" if only is None else "except"
        process = await transport.start(host_command("archive", [directory, mode]))
        try:
            if only is not None:
                lines = bytearray()
                for name in leave_out:
                    lines += _exclusion(name)
                    if len(lines) >= EXCLUSIONS_CHUNK:
                        await process.write(bytes(lines))
                        lines.clear()
                await process.write(bytes(lines))
            process.close_stdin()
        except BaseException:
            process.close()
            raise
        try:
            async with task_group() as tasks:
                errors = tasks.create_task(settled(lambda: drain(process.read_stderr)))
                try:
                    await self._read_archive(process, algo, destination, output_name, count, only, uploaded)
                    status = await process.wait()
                    said = await errors
                finally:
                    process.close()
                    errors.cancel()
        except (TarStreamError, EOFError) as exc:  # what the stream held (TarEndedEarly is both)
            detail = exc if isinstance(exc, TarStreamError) else "the stream ended early"
            raise ClientError(f"reading output {output_name} on {transport.label}: {detail}") from exc
        log.debug("output %s on %s: tar ended with status %d", output_name, transport.label, status)
        # GNU tar's 1 is "a file changed as it was read": only a Continuous pass (`only`) reads
        # a running container's files, and a file uploaded while it changed is uploaded again
        # once its size or mtime has settled.
        if status != 0 and not (status == 1 and only is not None):
            text = said.message if isinstance(said, FleetError) else said.decode(errors="replace").strip()
            raise ClientError(f"reading output {output_name} on {transport.label} failed: {text}")

    async def _read_archive(self, process: RemoteProcess, algo: str, destination: Location, output_name: str,
                            count: OutputCount, only: Container[str] | None,
                            uploaded: Callable[[str], None] | None) -> None:
        reader = TarReader(process.read_stdout)
        while (entry := await reader.next()) is not None:
            if entry.kind == "dir":
                continue
            if only is not None and entry.name not in only:  # new since the listing, or a swapped path
                log.debug("output %s on %s: %r not asked for; skipped", output_name, algo, entry.name)
                continue
            where = f"{algo}:{shown(entry.name)}"
            if entry.kind == "symlink":
                self.warn(f"output {output_name}: skipped the symlink {where} (symlinks are never followed)")
                continue
            if entry.kind != "file":
                self.warn(f"output {output_name}: skipped {where}, not a regular file")
                continue
            relative = safe_relative_path(entry.name, f"output file {where}")
            if not _is_utf8(relative):
                raise ClientError(f"output {output_name}: the file {where} has a name that is not UTF-8 "
                                  f"(an object key must be); not uploaded")
            previous = count.wrote(relative, algo)
            if previous is not None:
                self.warn(f"output {output_name}: {previous} and {algo} both wrote {relative}; "
                          f"the last upload wins")
            await self._store(reader, entry.size, destination, relative, where)
            if uploaded is not None:
                uploaded(entry.name)
            count.objects += 1
            count.bytes += entry.size

    async def _store(self, reader: TarReader, size: int, destination: Location, relative: str, where: str) -> None:
        if isinstance(destination, FileLocation):
            await self._to_file(reader, Path(destination.path), relative)
            return
        assert self.s3 is not None
        target = destination.child(relative)
        if size <= PART:
            buffer = await self._buffers.take(PART)
            try:
                content = _Content(reader)
                filled = await content.fill(buffer, size)
                await content.finish()
                await self.s3.put(target, memoryview(buffer)[:filled])
            finally:
                self._buffers.give_back(buffer)
            return
        part_size = max(PART, -(-size // MAX_PARTS))
        upload = await self.s3.multipart(target)
        try:
            async with task_group() as parts:  # the first part to fail cancels the others
                number, left = 1, size
                content = _Content(reader)
                while left:
                    buffer = await self._buffers.take(part_size)
                    try:
                        filled = await content.fill(buffer, min(part_size, left))
                    except BaseException:
                        self._buffers.give_back(buffer)
                        raise
                    if not filled:
                        self._buffers.give_back(buffer)
                        raise TarEndedEarly("the tar stream ended early, inside a file")
                    left -= filled
                    self._start_part(parts, upload, number, buffer, filled)
                    number += 1
                await content.finish()
            await upload.complete()
        except BaseException as exc:
            log.debug("uploading %s failed (%s); aborting its multipart upload", target, type(exc).__name__)
            await upload.abort()
            raise

    def _start_part(self, parts: asyncio.TaskGroup, upload: MultipartUpload, number: int, buffer: bytearray,
                    filled: int) -> None:
        """Upload a part in the background; its buffer goes back to the pool however the task
        ends, even cancelled unstarted."""
        task = parts.create_task(upload.part(number, memoryview(buffer)[:filled]))
        task.add_done_callback(lambda _: self._buffers.give_back(buffer))

    async def _to_file(self, reader: TarReader, root: Path, relative: str) -> None:
        """file:///dir outputs: written under the directory, atomically, never through a symlink.
        What this filesystem refuses (a path too long for it, no space) is a ClientError."""
        target = root / relative
        parent = root
        with _writing(target):
            for part in Path(relative).parts[:-1]:  # never through a symlink, never outside root
                parent = parent / part
                if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                    raise ClientError(f"output file {relative} would land outside {root} "
                                      f"({parent} is a symlink or not a directory); refused")
                parent.mkdir(exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=parent, prefix=".fleet-")
        try:
            with os.fdopen(fd, "wb") as file:
                async for chunk in reader.chunks():  # the reader's own errors are not the file's
                    with _writing(target):
                        await asyncio.to_thread(file.write, chunk)
            with _writing(target):
                os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class _PartBuffers:
    """A pool of at most `count` buffers, made on first use and reused: a part's bytes are
    copied once, from the tar stream into a buffer, and sent from there. A fresh object per
    part (joined, sliced, then copied again by botocore) cost about three times the parts in
    flight in RSS; these cost little more than their size."""

    def __init__(self, count: int) -> None:
        self._free: list[bytearray] = []
        self._places = asyncio.Semaphore(count)

    async def take(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes, once one is free."""
        await self._places.acquire()
        while self._free:
            buffer = self._free.pop()
            if len(buffer) >= size:
                return buffer
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        self._free.append(buffer)
        self._places.release()


class _Content:
    """A file's content from a TarReader, copied into part buffers: a chunk that straddles
    the end of a part is split, its rest kept for the next."""

    def __init__(self, reader: TarReader) -> None:
        self._chunks = aiter(reader.chunks())
        self._rest = memoryview(b"")

    async def fill(self, buffer: bytearray, limit: int) -> int:
        """Copy the next `limit` bytes (fewer at the content's end) into `buffer`; how many."""
        view = memoryview(buffer)
        filled = 0
        while filled < limit:
            if not self._rest:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    break
                self._rest = memoryview(chunk)
            take = min(limit - filled, len(self._rest))
            view[filled:filled + take] = self._rest[:take]
            self._rest = self._rest[take:]
            filled += take
        return filled

    async def finish(self) -> None:
        """Read to the end of the entry (its padding): the reader then moves on."""
        async for _ in self._chunks:
            pass


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ClientError(f"cannot write output file {shown(str(target))}: "
                          f"{exc.strerror or type(exc).__name__}") from exc


def shown(name: str) -> str:
    """A name as the host's bytes, with backslash escapes for those that are not UTF-8."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate escape: a byte that is not UTF-8
        return False
    return True


def _exclusion(name: str) -> bytes:
    """The `./RELATIVE-PATH` line for the host's `tar -X -`, b"" for a name it cannot say. tar
    reads that file by lines and cuts trailing whitespace: a name with a newline, or ending in
    whitespace (or a byte a locale might count as such), could leave out another file than
    this one, so it is not listed (it is sent, then skipped here)."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw and b"\n" not in raw and raw[-1] < 0x80 and not chr(raw[-1]).isspace():
        return b"./" + raw + b"\n"
    return b""


def _exclusions(names: Iterable[str]) -> bytes:
    """`./RELATIVE-PATH` lines for the host's `tar -X -`, for the names it can say."""
    return b"".join(map(_exclusion, names))


def output_location(uri: str) -> Location:
    location = parse_location(uri)
    if isinstance(location, FileLocation):
        Path(location.path).mkdir(parents=True, exist_ok=True)
    return location

