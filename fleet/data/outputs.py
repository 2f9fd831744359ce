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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.data.locations import FileLocation, Location, parse_location, safe_relative_path
from fleet.data.tarstream import TarReader, TarStreamError
from fleet.errors import ClientError, FleetError
from fleet.fanout import settled, task_group
from fleet.host import command as host_command
from fleet.transport.base import RemoteProcess, Transport, drain

if TYPE_CHECKING:  # aiobotocore loads slowly: only jobs that use S3 import it
    from fleet.data.s3 import S3, MultipartUpload

log = logging.getLogger(__name__)

PART = 8 * 1024 * 1024  # multipart part size; files up to this size are one PUT
PARTS_IN_FLIGHT = 8  # across the whole job: bounds the controller's memory

@dataclass
class OutputCount:
    objects: int = 0
    bytes: int = 0
    written_by: dict[str, str] = field(default_factory=dict)  # relative path → algo

    def record(self) -> dict:
        return {"Objects": self.objects, "Bytes": self.bytes}


class Uploader:
    def __init__(self, s3: S3 | None, warn: Callable[[str], None]) -> None:
        self.s3 = s3
        self.warn = warn
        self._parts = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def upload_host(self, transport: Transport, algo: str, directory: str, destination: Location,
                          output_name: str, count: OutputCount, only: set[str] | None = None,
                          leave_out: Iterable[str] = ()) -> set[str]:
        """Every regular file of `directory` on the host (or only the relative paths in
        `only`) to `destination`; the host's tar may leave out the relative paths in
        `leave_out` (files known not to be wanted: fewer bytes). Returns what was uploaded."""
        mode = "all" if only is None else "except"
        process = await transport.start(host_command("archive", [directory, mode]))
        if only is not None:
            await process.write(_exclusions(leave_out))
        process.close_stdin()
        uploaded: set[str] = set()
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
        return uploaded

    async def _read_archive(self, process: RemoteProcess, algo: str, destination: Location, output_name: str,
                            count: OutputCount, only: set[str] | None, uploaded: set[str]) -> None:
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
            previous = count.written_by.get(relative)
            if previous is not None and previous != algo:
                self.warn(f"output {output_name}: {previous} and {algo} both wrote {relative}; "
                          f"the last upload wins")
            count.written_by[relative] = algo
            await self._store(reader, entry.size, destination, relative, where)
            uploaded.add(relative)
            count.objects += 1
            count.bytes += entry.size

    async def _store(self, reader: TarReader, size: int, destination: Location, relative: str, where: str) -> None:
        if isinstance(destination, FileLocation):
            await self._to_file(reader, Path(destination.path), relative)
            return
        assert self.s3 is not None
        target = destination.child(relative)
        if size <= PART:
            data = b"".join([c async for c in reader.chunks()])
            await self.s3.put(target, data)
            return
        upload = await self.s3.multipart(target)
        try:
            async with task_group() as parts:  # the first part to fail cancels the others
                number, part = 1, bytearray()
                async for chunk in reader.chunks():
                    part += chunk
                    while len(part) >= PART:
                        await self._start_part(parts, upload, number, bytes(part[:PART]))
                        del part[:PART]
                        number += 1
                if part or number == 1:
                    await self._start_part(parts, upload, number, bytes(part))
            await upload.complete()
        except BaseException as exc:
            log.debug("uploading %s failed (%s); aborting its multipart upload", target, type(exc).__name__)
            await upload.abort()
            raise

    async def _start_part(self, parts: asyncio.TaskGroup, upload: MultipartUpload, number: int, data: bytes) -> None:
        """Upload a part in the background once a place is free (PARTS_IN_FLIGHT bounds the
        memory); the place is given back however the task ends, even cancelled unstarted."""
        await self._parts.acquire()
        task = parts.create_task(upload.part(number, data))
        task.add_done_callback(lambda _: self._parts.release())

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


def _exclusions(names: Iterable[str]) -> bytes:
    """`./RELATIVE-PATH` lines for the host's `tar -X -`. tar reads that file by lines and cuts
    trailing whitespace: a name with a newline, or ending in whitespace (or a byte a locale
    might count as such), could leave out another file than this one, so it is not listed
    (it is sent, then skipped here)."""
    lines = []
    for name in sorted(names):
        raw = name.encode("utf-8", "surrogateescape")
        if raw and b"\n" not in raw and raw[-1] < 0x80 and not chr(raw[-1]).isspace():
            lines.append(b"./" + raw + b"\n")
    return b"".join(lines)


def output_location(uri: str) -> Location:
    location = parse_location(uri)
    if isinstance(location, FileLocation):
        Path(location.path).mkdir(parents=True, exist_ok=True)
    return location

