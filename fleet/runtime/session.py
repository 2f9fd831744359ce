"""One host's session: the controller's side of hostcommands.session.

It starts the session command, streams stdout (the container's logs) to the log file and
the console, parses the progress lines on stderr, and answers on stdin: go / abort, then
clean / keep.

Once the container has started, losing the SSH connection does not end the session: it
reconnects with backoff and resumes (hostcommands.resume) from the last log byte received,
for up to `host_timeout` seconds; then the host counts as lost (HostLost).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from fleet.errors import ClientError, FleetError, HostError, HostLost
from fleet.plan import HostPlan
from fleet.runtime import hostcommands
from fleet.transport import Transport
from fleet.transport.base import RemoteProcess, drain


RECONNECT_FIRST_DELAY = 0.25  # seconds; doubled after each failed attempt, up to:
RECONNECT_MAX_DELAY = 1.0
RECONNECT_ATTEMPT_TIMEOUT = 5.0  # one SSH connection attempt, at most


class HostSession:
    def __init__(self, transport: Transport, plan: HostPlan, on_output: Callable[[bytes], None], *,
                 host_timeout: float = 120, docker_timeout: int = 20,
                 on_notice: Callable[[str], None] | None = None) -> None:
        self.transport = transport
        self.plan = plan
        self.report = hostcommands.SessionReport()
        self.received = 0  # bytes of the container's log received (and handed on) so far
        self.host_timeout = host_timeout
        self.docker_timeout = docker_timeout
        self.reconnects: list[float] = []  # seconds from each loss to supervision resumed
        self._notice = on_notice or (lambda text: None)
        self._on_output = on_output
        self._process: RemoteProcess | None = None
        self._events: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in ("written", "prepared", "started", "exited", "cleaned")}
        self._ended = asyncio.Event()
        self._status: int | None = None
        self._lost: FleetError | None = None
        self._reader: asyncio.Task | None = None
        self._volume_kb = 0

    @property
    def label(self) -> str:
        return self.transport.label

    def has(self, event: str) -> bool:
        return self._events[event].is_set()

    async def open(self, image: str, docker_timeout: int, volume_gb: int = 0) -> None:
        self._volume_kb = volume_gb * 1024 * 1024
        self._process = await self.transport.start(
            hostcommands.session(self.plan, image, docker_timeout, volume_gb))
        self._reader = asyncio.create_task(self._read())

    async def resume(self, offset: int) -> None:
        """Take over this run's started container: its log from byte `offset` on (what the
        store already has), its exit, its removal."""
        self.received = offset
        self._events["started"].set()  # by the fleet process that ran the job
        self._reader = asyncio.create_task(self._read())

    def _output(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._on_output(chunk)

    async def _read(self) -> None:
        def on_stderr(chunk: bytes) -> None:
            for event in self.report.feed(chunk):
                self._events[event].set()

        try:
            while True:
                if self._process is None:  # taking over: reach the host (as after a loss)
                    self._process = await self._reconnect(None)
                process = self._process
                assert process is not None
                try:
                    await asyncio.gather(drain(process.read_stdout, self._output),
                                         drain(process.read_stderr, on_stderr))
                    self._status = await process.wait()
                    if not process.lost:
                        return
                    lost: FleetError = HostError(self.label, "the SSH connection closed")
                except FleetError as exc:
                    lost = exc
                if not (self.has("started") and not self.has("exited") and self.host_timeout > 0):
                    self._lost = lost
                    return
                self._process = await self._reconnect(lost)
                self.report.resumed()
        except FleetError as exc:
            self._lost = exc
        finally:
            self._ended.set()

    async def _reconnect(self, lost: FleetError | None) -> RemoteProcess:
        """Connect (again) with backoff and resume the session where its log stopped; raise
        HostLost after `host_timeout` seconds without success."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        if lost is not None:
            self._notice(f"{lost.message}; reconnecting (for up to {self.host_timeout:g} s)")
        delay = RECONNECT_FIRST_DELAY
        while True:
            left = self.host_timeout - (loop.time() - since)
            if left <= 0:
                raise HostLost(self.plan.algo, self.plan.host.address, loop.time() - since)
            try:
                await self.transport.reconnect(min(RECONNECT_ATTEMPT_TIMEOUT, left))
                process = await self.transport.start(
                    hostcommands.resume(self.plan, self.received, self.docker_timeout))
            except FleetError:
                await asyncio.sleep(min(delay, max(0.0, self.host_timeout - (loop.time() - since))))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if lost is not None:
                self.reconnects.append(loop.time() - since)
                self._notice(f"{self.label}: reconnected after {loop.time() - since:.1f} s; supervising again")
            return process

    async def _until(self, event: str) -> bool:
        """Wait for `event` or the session's end; True if the event came."""
        waiter = asyncio.create_task(self._events[event].wait())
        ender = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({waiter, ender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            ender.cancel()
        return self._events[event].is_set()

    async def written(self) -> bool:
        """Wait until the job directory is written (inputs may stream in); False if the
        session ended first (`prepared` tells why)."""
        return await self._until("written")

    async def prepared(self, image: str, docker_timeout: int) -> None:
        """Wait until the host is checked and its job directory written; raise what went wrong."""
        if await self._until("prepared"):
            return
        await self._ended.wait()
        raise self._preparation_error(image, docker_timeout)

    def _preparation_error(self, image: str, docker_timeout: int) -> FleetError:
        if self._lost is not None:
            return self._lost
        said, status, label = self.report.errors, self._status, self.label
        if status == hostcommands.DOCKER_TIMEOUT:
            return HostError(label, f"docker did not answer within {docker_timeout} s")
        if status == hostcommands.DOCKER_MISSING:
            return HostError(label, f"docker command not found ({self.plan.host.docker!r}): {said}")
        if status == hostcommands.DOCKER_FAILED:
            return HostError(label, f"docker is not answering: {said}")
        if status == hostcommands.PULL_FAILED:
            return ClientError(f"{label}: cannot pull image {image}: {said}")
        if status == hostcommands.CREATE_FAILED:
            return ClientError(f"{label}: docker could not create the container: {said}")
        if status == hostcommands.NO_SPACE:
            free = said.splitlines()[-1] if said else "?"
            return HostError(label, f"not enough free space in {self.plan.host.job_root}: the job's "
                                    f"VolumeSizeInGB needs {_gib(self._volume_kb)}, {_gib(free)} free")
        if status == hostcommands.NO_GPU_RUNTIME:
            return HostError(label, "the inventory gives this host GPUs but Docker there has no NVIDIA "
                                    "runtime and no CDI GPU devices; install the NVIDIA Container Toolkit "
                                    "on that host, or remove `gpus` from its inventory entry")
        if status == hostcommands.IN_USE:
            owner = said.splitlines()[-1] if said else "unknown"
            return HostError(label, f"the job directory {self.plan.job_dir} belongs to another run of a "
                                    f"job named {self.plan.job_dir.split('/')[-2]} (run {owner}); choose "
                                    f"another name with --name, or remove leftovers with `fleet gc`")
        if status == hostcommands.WRITE_FAILED:
            return HostError(label, f"cannot write the job directory {self.plan.job_dir}: {said}")
        return HostError(label, f"preparing the host failed (status {status}): {said}")

    async def go(self) -> None:
        await self._send(hostcommands.GO)

    async def abort(self) -> None:
        await self._send(hostcommands.ABORT)

    async def _send(self, line: bytes) -> None:
        if self._process is not None and not self._ended.is_set():
            try:
                await self._process.write(line)
            except FleetError:
                pass  # the session's end tells the story

    async def exited(self) -> tuple[int, bytes | None]:
        """Wait for the container to exit: (exit code, first 1 KB of its message, if any)."""
        if await self._until("exited"):
            return self.report.exit_code if self.report.exit_code is not None else -1, self.report.message
        await self._ended.wait()
        if self._lost is not None:
            raise self._lost
        if self._status == hostcommands.GONE:
            raise HostError(self.label, f"the container {self.plan.container} is gone: {self.report.errors}")
        if self._status == hostcommands.NOT_STARTED:
            raise HostError(self.label, f"the container {self.plan.container} was never started")
        if not self.has("started"):
            raise _start_error(self.label, self.report.errors)
        raise HostError(self.label, f"lost track of the container (status {self._status}): {self.report.errors}")

    async def finish(self, keep: bool) -> bool:
        """Ask the session to remove the container (and the directory unless `keep`);
        True once it has."""
        if self._process is None:
            return False
        await self._send(hostcommands.KEEP if keep else hostcommands.CLEAN)
        if not self._ended.is_set():
            self._process.close_stdin()
        await self._ended.wait()
        return self.has("cleaned")

    async def close(self) -> None:
        """Abandon the session (the container, if started, keeps running: see cleanup)."""
        if self._process is not None:
            self._process.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _gib(kib: object) -> str:
    try:
        return f"{int(kib) / 1024 / 1024:.1f} GiB"
    except (TypeError, ValueError):
        return f"{kib} KiB"


def _start_error(label: str, text: str) -> FleetError:
    if "could not select device driver" in text:
        return ClientError(
            f"{label}: Docker there cannot give the container GPUs ({text.strip()}); "
            f"install the NVIDIA Container Toolkit on that host, or remove `gpus` from its "
            f"inventory entry")
    return ClientError(f"{label}: docker could not start the container: {text.strip() or 'no reason given'}")
