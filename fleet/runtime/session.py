"""One host's session: the controller's side of hostcommands.session.

It starts the session command, streams stdout (the container's logs) to the log file and
the console, parses the progress lines on stderr, and answers on stdin: go / abort, then
clean / keep.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from fleet.errors import ClientError, FleetError, HostError
from fleet.plan import HostPlan
from fleet.runtime import hostcommands
from fleet.transport import Transport
from fleet.transport.base import RemoteProcess, drain


class HostSession:
    def __init__(self, transport: Transport, plan: HostPlan, on_output: Callable[[bytes], None]) -> None:
        self.transport = transport
        self.plan = plan
        self.report = hostcommands.SessionReport()
        self._on_output = on_output
        self._process: RemoteProcess | None = None
        self._events: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in ("prepared", "started", "exited", "cleaned")}
        self._ended = asyncio.Event()
        self._status: int | None = None
        self._lost: FleetError | None = None
        self._reader: asyncio.Task | None = None

    @property
    def label(self) -> str:
        return self.transport.label

    def has(self, event: str) -> bool:
        return self._events[event].is_set()

    async def open(self, image: str, docker_timeout: int) -> None:
        self._process = await self.transport.start(hostcommands.session(self.plan, image, docker_timeout))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process is not None

        def on_stderr(chunk: bytes) -> None:
            for event in self.report.feed(chunk):
                self._events[event].set()

        try:
            await asyncio.gather(drain(self._process.read_stdout, self._on_output),
                                 drain(self._process.read_stderr, on_stderr))
            self._status = await self._process.wait()
        except FleetError as exc:
            self._lost = exc
        finally:
            self._ended.set()

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
        if not self.has("started"):
            raise _start_error(self.label, self.report.errors)
        raise HostError(self.label, f"lost track of the container (status {self._status}): {self.report.errors}")

    async def finish(self, keep: bool) -> bool:
        """Ask the session to remove the container (and the directory unless `keep`);
        True once it has."""
        await self._send(hostcommands.KEEP if keep else hostcommands.CLEAN)
        if self._process is not None and not self._ended.is_set():
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


def _start_error(label: str, text: str) -> FleetError:
    if "could not select device driver" in text:
        return ClientError(
            f"{label}: Docker there cannot give the container GPUs ({text.strip()}); "
            f"install the NVIDIA Container Toolkit on that host, or remove `gpus` from its "
            f"inventory entry")
    return ClientError(f"{label}: docker could not start the container: {text.strip() or 'no reason given'}")
