"""Inputs onto the hosts, streamed: S3 GET → tar stream → SSH channel → `tar -x` on the host.

Each host's input is written into `inputs/N.partial` next to the mount source; the session
moves it into place on `go`, so the container never sees a file before all are complete.
Objects are spread over a few lanes (one SSH channel running `tar -x` each, per host).
FullyReplicated reads each object from S3 once and writes every chunk to all the hosts'
lanes, waiting for each channel's flow control: memory stays bounded (chunks in flight),
whatever the data size. Small objects are fetched a few ahead to hide S3 latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from fleet.data import tarstream
from fleet.data.locations import FileLocation, S3Object
from fleet.data.sources import InputObject
from fleet.errors import ClientError, FleetError, HostError
from fleet.fanout import all_of, settled, task_group
from fleet.host import command as host_command
from fleet.retry import TAR_STREAMS
from fleet.transport.base import RemoteProcess, Transport, drain
from fleet.transport.lanes import Lanes

# Channels per host and input. One: two `tar -x` extracting into one directory race to
# create subdirectories (GNU tar then fails "Cannot open"), and measured here one lane is as
# fast as two or eight (each lane costs an exec; S3 latency is hidden by fetching ahead).
LANES = 1

if TYPE_CHECKING:  # aiobotocore loads slowly: only jobs that use S3 import it
    from fleet.data.s3 import S3
SMALL = 256 * 1024  # objects up to this size are fetched ahead, whole
PREFETCH = 16  # small objects fetched ahead per lane
FILE_CHUNK = 256 * 1024

log = logging.getLogger(__name__)

@dataclass
class TransferCount:
    """What moved, for the record and the progress display."""

    objects: int = 0
    bytes: int = 0  # read from the source (once per object)
    host_bytes: int = 0  # written to hosts (FullyReplicated: bytes × hosts)
    total_objects: int = 0
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"Objects": self.objects, "Bytes": self.bytes, "BytesToHosts": self.host_bytes}


@dataclass(frozen=True)
class Destination:
    """One host's side of one input."""

    label: str  # "algo-2 (h2, 10.0.0.12)"
    transport: Transport
    directory: str  # the .partial directory on the host


class Sources:
    """Reads objects from S3 or from the controller's files."""

    def __init__(self, s3: S3 | None) -> None:
        self.s3 = s3

    async def stream(self, obj: InputObject) -> AsyncIterator[bytes]:
        if isinstance(obj.source, FileLocation):
            with open(obj.source.path, "rb") as file:  # noqa: ASYNC230 (open is instant; reads go to a thread)
                while chunk := await asyncio.to_thread(file.read, FILE_CHUNK):
                    yield chunk
            return
        assert self.s3 is not None
        async for chunk in self.s3.stream(S3Object(obj.source, obj.size)):
            yield chunk

    async def read(self, obj: InputObject) -> bytes:
        return b"".join([chunk async for chunk in self.stream(obj)])


class _Lane:
    """One `tar -x` channel per destination, fed the same objects (fleet.transport.lanes): a
    destination that fails is set aside, to be sent its objects again by stage_input."""

    def __init__(self, destinations: list[Destination], tasks: asyncio.TaskGroup) -> None:
        self.destinations = destinations
        self.lanes = Lanes(tasks)

    async def open(self) -> None:
        await self.lanes.open((d.label, d.transport, host_command("extract", [d.directory])) for d in self.destinations)

    async def write(self, data: bytes, current: str) -> None:
        """To every live destination; a failing one is set aside (retried later)."""
        def failed(label: str, exc: FleetError | None) -> FleetError:
            assert exc is not None  # no stall bound: a write fails, never stalls out
            error = HostError(label, f"cannot write {current}: {exc.message}")  # the machinery's
            error.__cause__ = exc  # raised later, by stage_input, once retries are spent
            return error
        await self.lanes.write(data, failed)

    async def close(self) -> None:
        """End the archives and check every `tar -x` finished well."""
        await self.write(tarstream.END_OF_ARCHIVE, "the end of the archive")
        await self.lanes.finish(_extracted)


async def _extracted(label: str, process: RemoteProcess, stderr: asyncio.Task[bytes | FleetError]) -> FleetError | None:
    """How one `tar -x` ended: None when it extracted everything."""
    try:
        await drain(process.read_stdout)
        status = await process.wait()
        said = await stderr
        if isinstance(said, FleetError):
            raise said
    except FleetError as exc:
        return exc
    if status != 0:
        return ClientError(f"tar on {label} failed (status {status}): {said.decode(errors='replace').strip()}")
    return None


async def _send(objects: list[InputObject], destinations: list[Destination], sources: Sources,
                count: TransferCount) -> dict[str, FleetError]:
    """One lane: every object, in order, to every destination. Returns the destinations
    that failed (their error); a source (S3) failure raises."""
    try:
        async with task_group() as tasks:
            lane = _Lane(destinations, tasks)
            try:
                return await _feed(lane, objects, sources, count, tasks)
            finally:
                lane.lanes.abandon()
    except ClientError as exc:  # the source failed: say where the bytes were going
        hosts = ", ".join(d.label for d in destinations)
        raise ClientError(f"{exc.message} (while staging it to {hosts})") from exc


async def _feed(lane: _Lane, objects: list[InputObject], sources: Sources, count: TransferCount,
                tasks: asyncio.TaskGroup) -> dict[str, FleetError]:
    await lane.open()
    # Small objects are read PREFETCH ahead, by tasks of the lane's group; a read's error is
    # raised where its bytes are needed.
    window: deque[tuple[InputObject, asyncio.Task[bytes | FleetError] | None]] = deque()
    pending = iter(objects)

    def top_up() -> None:
        while sum(1 for _, t in window if t is not None) < PREFETCH:
            obj = next(pending, None)
            if obj is None:
                return
            window.append((obj, tasks.create_task(settled(partial(sources.read, obj))) if obj.size <= SMALL else None))

    batch = bytearray()  # small objects, whole, go out together: fewer SSH packets

    async def flush() -> None:
        if batch:
            await lane.write(bytes(batch), "objects")
            batch.clear()

    try:
        top_up()
        while window and lane.lanes.live:
            obj, fetched = window.popleft()
            top_up()
            if fetched is not None:
                if not fetched.done():
                    await flush()  # while waiting for the next one, send what is ready
                data = await fetched
                if isinstance(data, FleetError):
                    raise data
                if len(data) != obj.size:
                    raise ClientError(f"{obj.name}: read {len(data)} bytes, but the object has {obj.size}")
                batch += tarstream.file_header(obj.relative, obj.size) + data + tarstream.padding(obj.size)
                count.bytes += obj.size
                count.host_bytes += obj.size * len(lane.lanes.live)
                count.objects += 1
                if len(batch) >= SMALL:
                    await flush()
                continue
            await flush()
            await lane.write(tarstream.file_header(obj.relative, obj.size), obj.name)
            written = 0
            async for chunk in sources.stream(obj):
                written += len(chunk)
                await lane.write(chunk, obj.name)
                count.bytes += len(chunk)
                count.host_bytes += len(chunk) * len(lane.lanes.live)
            if written != obj.size:
                raise ClientError(f"{obj.name}: read {written} bytes, but the object has {obj.size}")
            await lane.write(tarstream.padding(obj.size), obj.name)
            count.objects += 1
        await flush()
        if lane.lanes.live:
            await lane.close()
        return dict(lane.lanes.failed)
    finally:
        for _, task in window:
            if task is not None:
                task.cancel()


async def stage_input(objects_per_host: list[list[InputObject]], destinations: list[Destination],
                      sources: Sources, count: TransferCount, replicated: bool) -> None:
    """Stream one input to its hosts. ClientError (naming the object or the host) if it
    cannot be done after retries."""
    count.total_objects = len({o.name for objs in objects_per_host for o in objs})
    count.total_bytes = sum(o.size for o in {o.name: o for objs in objects_per_host for o in objs}.values())
    jobs: list[tuple[list[InputObject], list[Destination]]] = []
    if replicated:
        objects = objects_per_host[0]
        lanes = max(1, min(LANES, len(objects)))
        jobs = [(objects[j::lanes], destinations) for j in range(lanes)]
    else:
        for objects, dest in zip(objects_per_host, destinations):
            lanes = max(1, min(LANES, len(objects)))
            jobs += [(objects[j::lanes], [dest]) for j in range(lanes)]

    async def run(objects: list[InputObject], targets: list[Destination]) -> None:
        retrying = TAR_STREAMS.start()  # TAR_STREAMS looked up here: tests set their own
        while True:
            failed = await _send(objects, targets, sources, count)
            if not failed:
                return
            for label, error in failed.items():
                log.debug("lane of %d objects to %s failed: %s", len(objects), label, error.message)
            if not await retrying.pause():
                raise next(iter(failed.values()))
            targets = [d for d in targets if d.label in failed]
            log.debug("re-sending a lane of %d objects to %s (attempt %d of %s)", len(objects),
                      ", ".join(d.label for d in targets), retrying.failures + 1, retrying.policy.attempts)

    await all_of(*(run(o, t) for o, t in jobs))
