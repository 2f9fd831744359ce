"""The controller's side of one host's session command (fleet/host/session.sh), across lost
connections.

stdout (the container's logs) goes to the host's log (HostLog: the stored log and the
console), the progress lines on stderr are parsed (fleet.host.SessionReport) into events,
stdin carries the controller's answers (go / abort, then clean / keep). Once the container
has started, a lost connection does not end the session: it reconnects with backoff and
resumes (resume.sh) at the last log byte stored, for up to --host-timeout seconds; then the
host counts as lost (HostLost). Where the container is followed through the engine's API,
the host's ApiSupervisor (fleet/runtime/supervisor.py) does it beside the command.
The Instance (fleet/runtime/instance.py) says what to send and when.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import BinaryIO

from fleet import host as scripts, retry
from fleet.errors import FleetError, HostError, HostLost
from fleet.fanout import all_of, first_of
from fleet.inventory import Host
from fleet.plan import HostPlan
from fleet.runtime.console import Console, HostLines
from fleet.runtime.store import RunOptions
from fleet.runtime.supervisor import ApiSupervisor
from fleet.transport import Transport
from fleet.transport.base import RemoteProcess, drain

log = logging.getLogger(__name__)

EVENTS = ("written", "image-missing", "prepared", "placed", "started", "exited", "cleaned")


class HostLog:
    """Where a host's container log goes: the stored log and the console, and how many of
    its bytes arrived (a resume starts there)."""

    def __init__(self) -> None:
        self.received = 0
        self.file: BinaryIO | None = None
        self.lines: HostLines | None = None

    def output(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.file is not None:
            self.file.write(chunk)
        if self.lines is not None:
            self.lines.feed(chunk)

    def flush(self) -> None:
        if self.lines is not None:
            self.lines.flush()

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()


class HostSession:
    """The session command of one host and its reader (a task of the job's TaskGroup), which
    reconnects and resumes. `ended`: the session (and every reconnect) is over; `status`:
    the last command's exit status; `lost`: why the host was lost or given up."""

    def __init__(self, algo: str, host: Host, transport: Transport, options: RunOptions, console: Console,
                 plan: Callable[[], HostPlan]) -> None:
        self.algo = algo
        self.host = host
        self.transport = transport
        self.options = options
        self._console = console
        self._plan = plan
        self.report = scripts.SessionReport()
        self.sink = HostLog()
        self.reconnects: list[float] = []  # seconds from each loss to supervision resumed
        self.events = {name: asyncio.Event() for name in EVENTS}
        self.ended = asyncio.Event()
        self.status: int | None = None
        self.lost: FleetError | None = None
        self.process: RemoteProcess | None = None
        self._reader: asyncio.Task[None] | None = None
        self._given_up = False  # give_up(): no more reconnects
        self.api = ApiSupervisor(algo, host, transport, options, plan, self.failure)

    @property
    def label(self) -> str:
        return self.transport.label

    def has(self, event: str) -> bool:
        return self.events[event].is_set()

    async def until(self, event: str) -> bool:
        """Wait for `event` or the session's end; True if the event came."""
        await first_of(self.events[event].wait(), self.ended.wait())
        return self.events[event].is_set()

    async def start(self, argv: list[str]) -> None:
        """Start the session command (`read` then reads it)."""
        self.process = await self.transport.start(argv)

    async def read(self, tasks: asyncio.TaskGroup, stdin: bytes) -> None:
        """Read the command in a task of `tasks`, and send it `stdin` (the job's files: never
        logged, they may hold secrets)."""
        assert self.process is not None
        self._reader = tasks.create_task(self._read(), name=f"{self.algo} session")
        try:
            await self.process.write(stdin)
        except FleetError as exc:  # the session's end tells why
            log.debug("%s: could not send the job's files: %s", self.algo, exc.message)

    def resume(self, tasks: asyncio.TaskGroup, offset: int) -> None:
        """Take over this run's started container (reconnecting first): its log from byte
        `offset` on (what the store already has), its exit, its removal."""
        self.sink.received = offset
        self.events["started"].set()  # by the fleet process that ran the job
        self._reader = tasks.create_task(self._read(), name=f"{self.algo} session (taken over)")

    async def send(self, line: bytes, what: str | None = None) -> None:
        if self.process is not None and not self.ended.is_set():
            try:
                await self.process.write(line)
            except FleetError as exc:  # its end tells
                log.debug("%s: could not send %s: %s", self.algo, what or repr(line), exc.message)

    async def finish(self, line: bytes) -> bool:
        """Send `line` (clean / keep), close stdin and wait for the end; True once the session
        cleaned up."""
        await self.send(line)
        if not self.ended.is_set() and self.process is not None:
            self.process.close_stdin()
        await self.ended.wait()
        return self.has("cleaned")

    def preparation_error(self, image: str, pulled_as: str | None, volume_kb: int) -> FleetError:
        """Why the host was not prepared (`pulled_as`: the reference it was told to pull, if
        any; `volume_kb`: the space it needed)."""
        if self.lost is not None:
            return self.lost
        return self.failure(f"preparing the host failed (status {self.status})", image=image,
                            how=f" (as {pulled_as})" if pulled_as and pulled_as != image else "",
                            need=_gib(volume_kb), free=_gib(self.report.errors.splitlines()[-1]
                                                            if self.report.errors else "?"))

    def failure(self, otherwise: str, status: int | None = None, said: str | None = None,
                **fields: object) -> FleetError:
        """The error the session's exit status means (fleet.host.statuses: its kind and
        words; `said`: docker's words, by default what the session said), else
        HostError(`otherwise`)."""
        plan = self._plan()
        said = self.report.errors if said is None else said
        status = self.status if status is None else status
        error = scripts.host_failure(status, self.label, said, docker_timeout=self.options.docker_timeout,
                                     docker=repr(self.host.docker), workdir=plan.workdir, job_dir=plan.job_dir,
                                     job_name=plan.job_name, container=plan.container, **fields)
        return error or HostError(self.label, f"{otherwise}: {said}")

    def _progress(self, chunk: bytes) -> None:
        for event in self.report.feed(chunk):
            log.debug("%s: %s", self.algo, event)
            self.events[event].set()
            self.api.progress(event)

    async def _progress_of(self, process: RemoteProcess, over: asyncio.Event) -> None:
        try:
            await drain(process.read_stderr, self._progress)
        finally:
            over.set()

    async def _follow(self, process: RemoteProcess, over: asyncio.Event) -> None:
        """Through the engine's API, where this session command is followed so (see
        ApiSupervisor.follow): the exit code, then ENDED to the session."""
        code = await self.api.follow(process, over, lambda: self.sink.received, self.sink.output,
                                      self.events["started"].set)
        if code is not None:
            self.report.exit_code = code
            await process.write(scripts.ENDED)

    async def _read(self) -> None:
        try:
            while True:
                if self.process is None:  # taking over: reach the host (as after a loss)
                    self.process = await self._reconnect(None)
                process = self.process
                over = asyncio.Event()  # this session command's stderr has ended
                try:
                    await all_of(drain(process.read_stdout, self.sink.output), self._progress_of(process, over),
                                 self._follow(process, over))
                    self.status = await process.wait()
                    if not process.lost:
                        return
                    lost: FleetError = HostError(self.label, "the SSH connection closed")
                except FleetError as exc:
                    lost = exc
                if self._given_up or not (self.has("started") and not self.has("exited")
                                          and self.options.host_timeout > 0):
                    self.lost = self.lost if self._given_up else lost
                    return
                self.process = await self._reconnect(lost)
                self.report.resumed()
        except FleetError as exc:
            self.lost = self.lost if self._given_up else exc
        finally:
            self.ended.set()

    async def _reconnect(self, lost: FleetError | None) -> RemoteProcess:
        """Connect (again) with backoff and resume the session where its log stopped; raise
        HostLost after --host-timeout seconds without success."""
        timeout = self.options.host_timeout
        if lost is not None:
            self._console.notice(f"{lost.message}; reconnecting (for up to {timeout:g} s)")
        retrying = retry.reconnect(timeout).start()
        while True:
            try:
                left = retrying.left or 0.0
                if left <= 0:
                    raise HostError(self.label, "no time left to reconnect")
                await self.transport.reconnect(min(retry.RECONNECT_ATTEMPT_TIMEOUT, left))
                api = await self.api.choose_again()
                process = await self.transport.start(
                    scripts.resume(self._plan(), self.sink.received, self.options.docker_timeout, api=api))
            except FleetError as exc:
                log.debug("%s: reconnecting: %s", self.algo, exc.message)
                if await retrying.pause():
                    continue
                raise HostLost(self.algo, self.host.address, retrying.elapsed) from exc
            if lost is not None:
                self.reconnects.append(retrying.elapsed)
                self._console.notice(f"{self.label}: reconnected after {retrying.elapsed:.1f} s; "
                                     f"supervising again")
            return process

    def give_up(self, reason: FleetError) -> None:
        """Stop supervising: the session ends now with `reason` (no reconnect)."""
        if self.ended.is_set():
            return
        self._console.notice(reason.message)
        self.lost = reason
        self._given_up = True
        if self.process is not None:
            self.process.close()
        if self._reader is not None:
            self._reader.cancel()  # its `finally` marks the session ended

    async def close(self) -> None:
        """Abandon the command (the container, if started, keeps running); the log flushed
        and closed. Never raises."""
        if self.process is not None:
            self.process.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        self.sink.close()


def _gib(kib: object) -> str:
    try:
        return f"{int(kib) / 1024 / 1024:.1f} GiB"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"{kib} KiB"
