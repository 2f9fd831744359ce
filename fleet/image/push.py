"""Images onto hosts without a registry: from the controller's Docker engine (or a `docker
save` archive) over each host's SSH connection into its `docker load`.

Only what a host lacks moves. `host_has` asks a host (fleet/host/image-have.sh) whether it
has the image, else how many of its layers (a prefix: `docker load` skips a layer whose
chain exists). The image is read once and written to every host at once, as the inputs are
(fleet.data.staging): each chunk goes to all the hosts that need it, waiting for each
channel's flow control (the slowest host sets the pace, memory stays a chunk per host).

    every host lacks the whole image   `docker save REF` streamed live to all of them
    some host has some layers          `docker save REF` into a private spool file, indexed
                                       (fleet.image.archive), then read once: each entry to
                                       the hosts that lack it
    an archive file (--image-archive)  as the spool file

Each host runs `fleet-load ID DIFFID...` (fleet/host/load.sh): `docker load` from stdin,
then a check that the image of that config digest is there (on the containerd store,
through the tag the stream's manifest gives it). What a host is sent (fleet.image.archive)
is the image's config and layers, then the manifest: a push cut anywhere fails to load and
leaves no image behind, on every engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from fleet.data.tarstream import END_OF_ARCHIVE
from fleet.engine.client import EngineFailed
from fleet.engine.connect import engine_for
from fleet.errors import ClientError, FleetError, HostError
from fleet.fanout import task_group
from fleet.host import Status, host_failure, image_have, image_load
from fleet.image.archive import ImageArchive, LoadStream, open_archive
from fleet.image.local import DIGEST, LocalImage
from fleet.transport.base import RemoteProcess, Transport
from fleet.transport.lanes import Lanes

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1024 * 1024  # bytes read from `docker save` at once
HOST_BUFFER = 8 * CHUNK  # bytes one host's channel may hold unsent (hosts do not wait in lockstep)
WORDS_LIMIT = 8192  # bytes of a command's stderr kept (its last ones: errors come at the end)
# A write that makes no progress for this long: the host stopped reading (its `docker load`
# hangs while SSH keepalives still answer). A lost connection ends sooner, by the keepalives.
WRITE_STALL = 300.0
# dockerd 20.10 writes the whole image to a temporary folder before `docker save` sends its
# first byte, and `docker load` applies the layers after its last: both are allowed
# docker_timeout plus the image's size at this slow rate.
SLOW_RATE = 10 * 1000 * 1000  # bytes per second


@dataclass(frozen=True)
class DockerSource:
    """An image of the controller's Docker engine (fleet.image.local.inspect_local)."""

    reference: str  # as the user gave it: `docker save` writes it as the loaded image's tag
    image: LocalImage

    @property
    def config_known(self) -> bool:
        """The engine named the image by its config's digest (a classic store; the containerd
        store names it by a manifest's: the image is saved to a file and read first)."""
        return self.image.config_known


Source = DockerSource | ImageArchive  # an ImageArchive: an indexed `docker save` file


def source_for(reference: str, image: LocalImage, archive: str | Path | None) -> Source:
    """What push_image reads: the archive file if one is given (indexed here: its headers,
    not its layers), else the controller's docker image `reference` (described by `image`)."""
    if archive is None:
        return DockerSource(reference, image)
    indexed = open_archive(Path(archive))
    if indexed.image.id != image.id:
        raise ClientError(f"the image archive {archive} changed: it now holds {indexed.image.id}, not {image.id}")
    return indexed


@dataclass
class PushTarget:
    label: str  # "algo-2 (h2, 10.0.0.12)"
    transport: Transport
    docker: list[str]  # the host's docker command words
    have: int  # layers of the image the host has (host_has)


@dataclass
class PushCount:
    """What moved, for the progress line and the record."""

    read: int = 0  # bytes read from the source (once)
    sent: dict[str, int] = field(default_factory=dict)  # bytes written per host label
    total: int = 0  # bytes to send to all hosts (estimated for a live `docker save`)


async def host_has(transport: Transport, docker: list[str], image: LocalImage, docker_timeout: int) -> int | None:
    """What the host has of `image`: None when it has the image (its config digest), else
    how many of its first layers (0 where its engine reads every layer: fleet-image-have).
    HostError when the host or its docker does not answer."""
    word, value = await _image_have(transport, docker, image.id, image.layers, docker_timeout)
    if word == "present":
        return None
    if value.isdigit() and int(value) <= len(image.layers):
        return int(value)
    raise HostError(transport.label, f"looking for the image {image.id} gave 'layers {value[:100]}'")


def _probe_bound(docker_timeout: int) -> float:
    """How long the image-have probe may take: five bounded docker calls at most, and the
    way to the engine."""
    return 5 * docker_timeout + 30


async def _within_probe_bound(call: Awaitable[T], label: str, image: str, docker_timeout: int) -> T:
    """`call` (the API's probe or the script's), cut at _probe_bound with the one message a
    silent docker gets (fleet.host.statuses: DOCKER_TIMEOUT)."""
    try:
        async with asyncio.timeout(_probe_bound(docker_timeout)):
            return await call
    except TimeoutError:
        raise _docker_error(label, Status.DOCKER_TIMEOUT, "", docker_timeout,
                            f"looking for the image {image}") from None


async def _image_have(transport: Transport, docker: list[str], image: str, layers: tuple[str, ...],
                      docker_timeout: int) -> tuple[str, str]:
    """fleet-image-have's answer: ("present", the engine's ID) or ("layers", K). Asked of
    the engine's API where the host's engine answers it (fleet.engine: no command on the
    host), else of the host script."""
    label = transport.label
    engine = await engine_for(transport, transport.host, docker_timeout)
    if engine is not None:
        try:
            return await _within_probe_bound(engine.image_have(image, layers), label, image, docker_timeout)
        except EngineFailed as exc:
            if exc.timed_out:
                raise
            # An answer past the API client's bounds (a host of thousands of images lists more
            # than its 4 MiB), an engine error: the script, which reads no such list whole,
            # asks again.
            log.info("%s: the engine's API could not say whether it has %s (%s): asking the host script",
                     label, image, exc.message)
        finally:
            engine.close()  # its idle connections: the channel (or dial-stdio) is not kept
    argv = image_have(docker, image, layers, docker_timeout)
    result = await _within_probe_bound(transport.run(argv), label, image, docker_timeout)
    said = result.stderr[-WORDS_LIMIT:].decode(errors="replace").strip()
    if result.exit_status != 0:
        raise _docker_error(label, result.exit_status, said, docker_timeout, f"looking for the image {image}")
    word, _, value = result.stdout[:200].decode(errors="replace").strip().partition(" ")
    if word == "present" and DIGEST.match(value):
        return word, value
    if word == "layers" and value.isdigit():
        return word, value
    raise HostError(label, f"looking for the image {image} gave {(word + ' ' + value)[:200]!r}")


async def push_image(source: Source, targets: list[PushTarget], count: PushCount, *, docker_timeout: int,
                     spool_dir: Path) -> dict[str, FleetError]:
    """Load the image of `source` into every target's docker. Returns the targets that
    failed (label → error naming the host and the image: ClientError with docker's words
    for a failed load, HostError for a lost or stalled host); the others have the image,
    checked by its ID. A source that fails (`docker save` on the controller, an archive
    that changed) raises ClientError or InvalidInput; every load is then cut and fails."""
    if not targets:
        return {}
    image = source.image
    name = source.reference if isinstance(source, DockerSource) else f"{image.id} (from {source.path})"
    count.sent = {t.label: 0 for t in targets}
    if isinstance(source, ImageArchive):
        return await _push_archive(source, targets, count, name, docker_timeout)
    if all(t.have == 0 for t in targets) and source.config_known:
        count.total = (image.size + len(END_OF_ARCHIVE)) * len(targets)  # about: tar headers
        async with task_group() as tasks:
            loads = _Loads(targets, image, name, count, tasks, docker_timeout)
            save = _DockerSave(source, docker_timeout)
            try:
                await loads.open()
                if not loads.lanes.live:
                    return dict(loads.lanes.failed)
                await save.start(tasks)
                stream = LoadStream(image.id, f"docker save {source.reference}")
                while loads.lanes.live and (chunk := await save.read()):
                    count.read += len(chunk)
                    for piece in stream.feed(chunk):
                        await loads.write(piece, tuple(loads.lanes.live))
                if loads.lanes.live:
                    await loads.write(stream.end(), tuple(loads.lanes.live))
                return await loads.finish(_allowance(docker_timeout, image.size))
            finally:
                loads.lanes.abandon()
                await save.close()
    async with saved_archive(source, spool_dir, docker_timeout) as archive:
        return await _push_archive(archive, targets, count, name, docker_timeout)


@contextlib.asynccontextmanager
async def saved_archive(source: DockerSource, spool_dir: Path, docker_timeout: int) -> AsyncIterator[ImageArchive]:
    """The controller's image saved (`docker save -o`) into a private spool folder and
    indexed, removed on exit. ClientError if the saved image is not the one inspected."""
    image = source.image
    with _spool(spool_dir) as folder:
        saved = folder / "image.tar"
        await _save_to(source, saved, docker_timeout)
        archive = await asyncio.to_thread(open_archive, saved)
        # On the containerd store the engine's ID is a manifest's digest: the layers say
        # whether the saved image is the one inspected (the config's digest is read here).
        same = archive.image.id == image.id if source.config_known else archive.image.layers == image.layers
        if not same:
            raise ClientError(f"the controller's docker saved {source.reference} as the image {archive.image.id}, "
                              f"not {image.id}: it changed meanwhile; run again")
        yield archive


async def _push_archive(archive: ImageArchive, targets: list[PushTarget], count: PushCount, name: str,
                        docker_timeout: int) -> dict[str, FleetError]:
    """Each target its filtered stream, in one pass over the file."""
    count.total = sum(archive.bytes_for(t.have) for t in targets)
    haves = {t.label: t.have for t in targets}
    async with task_group() as tasks:
        loads = _Loads(targets, archive.image, name, count, tasks, docker_timeout)
        try:
            await loads.open()
            if loads.lanes.live:
                pieces = archive.pieces(haves)
                try:
                    async for chunk, labels in pieces:
                        count.read += len(chunk)
                        await loads.write(chunk, labels)
                        if not loads.lanes.live:
                            break
                finally:
                    await pieces.aclose()
                return await loads.finish(_allowance(docker_timeout, max(archive.bytes_for(h) for h in haves.values())))
            return dict(loads.lanes.failed)
        finally:
            loads.lanes.abandon()


def _allowance(docker_timeout: int, size: int) -> float:
    return docker_timeout + size / SLOW_RATE


class _Loads:
    """One `fleet-load` command per target, fed the same stream (each its part), through
    fleet.transport.lanes: a target that fails or stalls is set aside, its command closed
    (its load fails). Its tasks (each command's stderr) belong to the caller's task group."""

    def __init__(self, targets: list[PushTarget], image: LocalImage, name: str, count: PushCount,
                 tasks: asyncio.TaskGroup, docker_timeout: int) -> None:
        self.targets = {t.label: t for t in targets}
        self.image = image
        self.name = name
        self.count = count
        self.docker_timeout = docker_timeout
        # each host may lag the others by HOST_BUFFER
        self.lanes = Lanes(tasks, keep=WORDS_LIMIT, buffer=HOST_BUFFER, close_failed=True)

    async def open(self) -> None:
        await self.lanes.open(
            (t.label, t.transport, image_load(t.docker, self.image.id, self.image.layers, self.docker_timeout))
            for t in self.targets.values())

    async def write(self, data: bytes, labels: tuple[str, ...]) -> None:
        """To each of `labels` still live; one that fails or stalls is set aside (its
        command closed: its load fails)."""
        def failed(label: str, exc: FleetError | None) -> FleetError:
            if exc is None:
                return HostError(label, f"stopped reading the image {self.name} for {WRITE_STALL:.0f} s")
            return HostError(label, f"lost while pushing the image {self.name}: {_words(label, exc)}")
        for label in await self.lanes.write(data, failed, labels, stall=WRITE_STALL):
            self.count.sent[label] = self.count.sent.get(label, 0) + len(data)

    async def finish(self, allowance: float) -> dict[str, FleetError]:
        """End every stream and check each load, `allowance` seconds at most."""
        async def loaded(label: str, process: RemoteProcess,
                         stderr: asyncio.Task[bytes | FleetError]) -> FleetError | None:
            try:
                async with asyncio.timeout(allowance):
                    await _last_words(process.read_stdout)
                    status = await process.wait()
                    said = await stderr
            except TimeoutError:
                return HostError(label, f"docker load of the image {self.name} did not end within {allowance:.0f} s")
            except FleetError as exc:
                return HostError(label, f"lost while loading the image {self.name}: {_words(label, exc)}")
            if isinstance(said, FleetError) or process.lost:
                why = _words(label, said) if isinstance(said, FleetError) else "the connection was lost"
                return HostError(label, f"lost while loading the image {self.name}: {why}")
            words = said.decode(errors="replace").strip()
            if status == 0 and any(line.startswith("fleet:loaded ") for line in words.splitlines()):
                log.debug("%s: loaded the image %s", label, self.name)
                return None
            words = "\n".join(line for line in words.splitlines() if not line.startswith("fleet:loaded"))
            return _docker_error(label, status, words, self.docker_timeout, f"loading the image {self.name}",
                                 image=self.name)
        return await self.lanes.finish(loaded)


def _words(label: str, error: FleetError) -> str:
    """The error's message without its leading `label: ` (the transport's errors name the
    host, and the message they go into names it already)."""
    return error.message.removeprefix(f"{label}: ")


def _docker_error(label: str, status: int, said: str, docker_timeout: int, doing: str,
                  **fields: object) -> FleetError:
    known = host_failure(status, label, said, docker_timeout=docker_timeout, doing=doing, **fields)
    if known is not None:
        return known
    if status < 0:
        return HostError(label, f"the connection was lost ({doing})")
    return ClientError(f"{label}: {doing} failed (status {status}): {said}")


async def _last_words(read: object) -> bytes:
    """A stream to its end, keeping its last WORDS_LIMIT bytes."""
    kept = bytearray()
    while chunk := await read():  # type: ignore[operator]
        kept += chunk
        if len(kept) > WORDS_LIMIT:
            del kept[:len(kept) - WORDS_LIMIT]
    return bytes(kept)


# -- the controller's docker save ---------------------------------------------------------------

class _DockerSave:
    """`docker save REF` on the controller, read chunk by chunk. ClientError if it fails or
    stalls: the first byte is allowed _allowance(the image's size), as dockerd 20.10 exports
    the whole image to a folder first; each next one docker_timeout. Its stderr is read by
    a task of the caller's group."""

    def __init__(self, source: DockerSource, docker_timeout: int) -> None:
        self.source = source
        self.docker_timeout = docker_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._words: asyncio.Task[bytes] | None = None
        self._wait = _allowance(docker_timeout, source.image.size)

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        docker = shutil.which("docker")
        if docker is None:
            raise ClientError(f"cannot save the image {self.source.reference}: no docker command on this machine")
        try:
            self._process = await asyncio.create_subprocess_exec(
                docker, "save", "--", self.source.reference, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ClientError(f"cannot run {docker} save: {exc.strerror or exc}") from exc
        stderr = self._process.stderr
        assert stderr is not None
        self._words = tasks.create_task(_last_words(lambda: stderr.read(65536)))

    async def read(self) -> bytes:
        """The next chunk; b"" at the end (the exit status checked)."""
        assert self._process is not None and self._process.stdout is not None and self._words is not None
        try:
            async with asyncio.timeout(self._wait):
                chunk = await self._process.stdout.read(CHUNK)
        except TimeoutError:
            raise ClientError(f"docker save {self.source.reference} on the controller sent nothing for "
                              f"{self._wait:.0f} s") from None
        self._wait = self.docker_timeout
        if chunk:
            return chunk
        try:
            async with asyncio.timeout(self.docker_timeout):
                status = await self._process.wait()
                said = (await self._words).decode(errors="replace").strip()
        except TimeoutError:
            raise ClientError(f"docker save {self.source.reference} on the controller did not end") from None
        if status != 0:
            raise ClientError(f"docker save {self.source.reference} on the controller failed: {said}")
        return b""

    async def close(self) -> None:
        """Kill it if it still runs, and reap it."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(self._process.wait())


async def _save_to(source: DockerSource, path: Path, docker_timeout: int) -> None:
    """`docker save -o PATH REF` (a new file of a private folder): the docker CLI writes the
    file itself, the bytes never pass through this process (measured: ~1 s less for 300 MB
    on the 2-core bed than reading the pipe here)."""
    docker = shutil.which("docker")
    if docker is None:
        raise ClientError(f"cannot save the image {source.reference}: no docker command on this machine")
    try:
        process = await asyncio.create_subprocess_exec(
            docker, "save", "-o", str(path), "--", source.reference, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ClientError(f"cannot run {docker} save: {exc.strerror or exc}") from exc
    allowance = _allowance(docker_timeout, source.image.size) * 2
    try:
        async with asyncio.timeout(allowance):
            assert process.stderr is not None
            said = await _last_words(lambda: process.stderr.read(65536))
            status = await process.wait()
    except TimeoutError:
        raise ClientError(f"docker save {source.reference} on the controller did not end within "
                          f"{allowance:.0f} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(process.wait())
    if status != 0:
        raise ClientError(f"docker save {source.reference} on the controller failed: "
                          f"{said.decode(errors='replace').strip()}")


@contextlib.contextmanager
def _spool(spool_dir: Path) -> Iterator[Path]:
    """A private folder (0700) under `spool_dir`, removed afterwards."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="image-", dir=spool_dir))  # mkdtemp: 0700
    try:
        os.chmod(folder, 0o700)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
