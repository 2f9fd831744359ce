"""algo-k: one host of the job's cluster, from its SSH connection to its cleanup.

An Instance owns everything about its host: the transport, its part of the plan, the
session that runs the job there (fleet/host/session.sh), the log sink (the stored log and
the console), reconnecting after a lost connection, stop, kill and cleanup. The job
(executor.py) holds a list of them and says when each step happens.

The session is the controller's side of session.sh: stdout (the container's logs) goes to
the log sink, the progress lines on stderr are parsed (fleet.host.SessionReport), stdin
answers go / abort, then clean / keep. Once the container has started, a lost connection
does not end the session: the instance reconnects with backoff and resumes (resume.sh) at
the last log byte it stored, for up to --host-timeout seconds; then the host counts as lost
(HostLost).

Where the host's engine API answers (fleet.engine: a socket forwarded over the same SSH
connection, or `docker system dial-stdio`) and shows this run's container (so it is the
engine the host's docker command created it on), the session says `go api`: once the
inputs are in place (`placed`), the instance itself starts the container, follows its log
(from the byte the store has), waits for its exit, stops or kills it when asked and removes
it, all through the API, and the session only waits (supervise.sh's await_end) to send the
message and remove the job directory. An engine call that fails is
handled as a lost connection (reconnect, resume); after API_FAILURES of them the host's
scripts supervise, as they do where there is no API (srun, FLEET_ENGINE_API=0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from fleet import host as scripts, retry
from fleet.engine.client import Conflict, Engine, EngineFailed, EngineRefused, NoSuchObject
from fleet.engine.connect import engine_for
from fleet.errors import FleetError, HostError, HostLost
from fleet.fanout import all_of, first_of
from fleet.host import Status
from fleet.inventory import Host
from fleet.plan import RUN_LABEL, HostPlan
from fleet.runtime.console import Console, HostLines
from fleet.runtime.store import RunOptions
from fleet.transport import Transport
from fleet.transport.base import RemoteProcess, drain

log = logging.getLogger(__name__)

CLEANUP_MARGIN = 10  # seconds a cleanup may take beyond --docker-timeout
STOP_MARGIN = 10  # seconds a stop may take beyond the grace and --docker-timeout
API_FAILURES = 2  # engine API failures of one host before its scripts supervise instead
RUN_BOUND = 10 * 365 * 86400.0  # seconds a container may run (the job's own limits stop it first)


@dataclass
class HostOutcome:
    algo: str
    exit_code: int | None = None
    message: bytes | None = None  # None: the container wrote no /opt/ml/output/message
    error: FleetError | None = None


class Instance:
    """One host of the job. Use as an async context manager: leaving it closes the session
    and the connection (the container, if started, keeps running: see `clean_up`)."""

    def __init__(self, algo: str, host: Host, transport: Transport, options: RunOptions,
                 console: Console) -> None:
        self.algo = algo
        self.host = host
        self.transport = transport
        self.options = options
        self.plan: HostPlan | None = None
        self.report = scripts.SessionReport()
        self.received = 0  # bytes of the container's log received (and stored) so far
        self.reconnects: list[float] = []  # seconds from each loss to supervision resumed
        self._console = console
        self._process: RemoteProcess | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in ("written", "image-missing", "prepared", "placed", "started", "exited",
                                               "cleaned")}
        self._ended = asyncio.Event()  # the session (and every reconnect) is over
        self._status: int | None = None
        self._lost: FleetError | None = None
        self._log: BinaryIO | None = None
        self._lines: HostLines | None = None
        self._volume_kb = 0
        self._given_up = False  # give_up(): no more reconnects
        self.pulled_as: str | None = None  # the reference the host was told to pull (NAME@DIGEST)
        self._engine_task: asyncio.Task[Engine | None] | None = None  # reaching the engine's API
        self._engine: Engine | None = None
        self._api = False  # the current session command's container is followed through the API
        self._api_failures = 0
        self._session_started = asyncio.Event()  # the current session command said `started`
        self._tty = False  # the container has a TTY (docker_args' -t): its log is raw, not framed
        self._session_placed = asyncio.Event()  # ... `placed` (API: the controller starts the container)

    @property
    def label(self) -> str:
        return self.transport.label

    def has(self, event: str) -> bool:
        return self._events[event].is_set()

    async def __aenter__(self) -> Instance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reaching the host ----------------------------------------------------------------
    async def connect(self) -> None:
        await self.transport.connect()

    def address(self, controller: str | None) -> str:
        """Where the other hosts reach this one: the inventory's `ip`; else the address its
        SSH connection reached; for the local host, `controller` (this machine's address on
        the way to the SSH hosts), else 127.0.0.1. None known (a host behind a jump host
        or a ProxyCommand that did not tell it): HostError, before anything starts."""
        if self.host.ip:
            return self.host.ip
        if self.host.transport == "local" and controller:
            return controller
        if not self.transport.peer_address:
            raise HostError(self.label, (
                "no address the other hosts can reach it at (it is reached through a jump host "
                "or a ProxyCommand, and its SSH config HostName is no IP address): set its `ip` "
                "in the inventory"))
        return self.transport.peer_address

    def planned(self, plan: HostPlan, log_file: BinaryIO) -> None:
        """This host's part of the plan, and the file its log is stored in."""
        self.plan = plan
        self._log = log_file
        self._lines = self._console.host_lines(self.algo)

    def _plan(self) -> HostPlan:
        if self.plan is None:
            raise AssertionError(f"{self.algo}: used before it was planned")
        return self.plan

    # -- the session ------------------------------------------------------------------------
    async def open(self, tasks: asyncio.TaskGroup, volume_gb: int) -> None:
        """Start the session command (check, write, create; then wait for go). Its reader
        is a task of `tasks`, the job's. The config files and the Environment go on its
        stdin (never in an argv: every local user of the host could read them there)."""
        self._volume_kb = volume_gb * 1024 * 1024
        plan = self._plan()
        self._process = await self.transport.start(
            scripts.session(plan, self.options.docker_timeout, volume_gb))
        # The engine's API is reached while the host is prepared: `go` says which way it is.
        self._engine_task = tasks.create_task(self._reach_engine(), name=f"{self.algo} engine")
        self._reader = tasks.create_task(self._read(), name=f"{self.algo} session")
        try:
            await self._process.write(scripts.session_input(plan))
        except FleetError as exc:  # the session's end tells why (never log the bytes: secrets)
            log.debug("%s: could not send the job's files: %s", self.algo, exc.message)

    def resume(self, tasks: asyncio.TaskGroup, offset: int) -> None:
        """Take over this run's started container: its log from byte `offset` on (what the
        store already has), its exit, its removal."""
        self.received = offset
        self._events["started"].set()  # by the fleet process that ran the job
        self._reader = tasks.create_task(self._read(), name=f"{self.algo} session (taken over)")

    def _output(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self._log is not None:
            self._log.write(chunk)
        if self._lines is not None:
            self._lines.feed(chunk)

    def _progress(self, chunk: bytes) -> None:
        for event in self.report.feed(chunk):
            log.debug("%s: %s", self.algo, event)
            self._events[event].set()
            if event == "started":
                self._session_started.set()
            elif event == "placed":
                self._session_placed.set()

    async def _reach_engine(self) -> Engine | None:
        """The host's engine API for following the container; None where the host's
        scripts supervise (no API, or API_FAILURES failures already). Never raises."""
        if self._api_failures >= API_FAILURES:
            return None
        try:
            # The session's own check (`_ours`) stands for engine_for's: no command of its own.
            return await engine_for(self.transport, self.host, self.options.docker_timeout, cli_check=False)
        except FleetError as exc:  # the engine did not answer: the session's docker calls say so
            log.debug("%s: no engine API: %s", self.algo, exc.message)
            return None

    async def _ours(self, engine: Engine | None) -> Engine | None:
        """`engine` if it has this run's container, which the host's docker command created:
        then it is the engine that command talks to (a login's DOCKER_HOST or docker context
        may point the command elsewhere than the socket); else None: the scripts supervise."""
        if engine is None:
            return None
        plan = self._plan()
        try:
            found = await engine.inspect(plan.container)
        except FleetError as exc:
            log.info("%s: the engine's API does not show the container %s (%s): the host's scripts supervise it",
                     self.algo, plan.container, exc.message)
            return None
        if ((found.get("Config") or {}).get("Labels") or {}).get(RUN_LABEL) != plan.run_id:
            log.info("%s: the engine at %s has another container %s: the host's scripts supervise this run's",
                     self.algo, engine.path, plan.container)
            return None
        self._tty = bool((found.get("Config") or {}).get("Tty"))  # how its log is framed
        return engine

    async def _start(self, engine: Engine, process: RemoteProcess) -> None:
        """Start the container through the API (the session said its inputs are in place).
        The engine answering no is the session's START_FAILED (the one table of failures: a
        GPU runtime missing is the machine's, anything else the job's); no answer (a lost
        engine connection, a timeout) is raised as it is (the host's, exit 75). Either way
        the session command is closed (it waits, its container created: the cleanup removes
        it)."""
        try:
            await engine.start(self._plan().container)
        except (EngineRefused, EngineFailed) as exc:
            process.close()
            if isinstance(exc, EngineFailed) and exc.status is None:
                raise  # no answer: the host's
            # The engine answered no (Docker: 400; Podman: 500 for the same exec failure), as
            # `docker start` would have.
            raise self._failure("could not start", Status.START_FAILED,
                                said=exc.message.removeprefix(self.label + ": ")) from None
        except FleetError:
            process.close()
            raise
        for event in (self._events["started"], self._session_started):
            event.set()
        log.debug("%s: started (through the API)", self.algo)

    async def _progress_of(self, process: RemoteProcess, over: asyncio.Event) -> None:
        try:
            await drain(process.read_stderr, self._progress)
        finally:
            over.set()

    async def _follow(self, process: RemoteProcess, over: asyncio.Event) -> None:
        """Through the engine's API (when this session command said `go api` or resumed so):
        once the container has started, its log from the byte the store has on, its exit
        code, then ENDED to the session (which answers with the message and `exited`). Ends
        at once when the session ends before the container started (its status tells why).
        An engine failure closes the session command and is raised: the caller reconnects
        and resumes, as after a lost connection."""
        which = await first_of(self._session_started.wait(), self._session_placed.wait(), over.wait())
        engine = self._engine  # `go` (or the reconnect) chose, before the container started
        if which == 2 or not self._api or engine is None:
            return
        container = self._plan().container
        if which == 1:
            await self._start(engine, process)
        try:
            async for _, piece in engine.logs(container, follow=True, skip=self.received, tty=self._tty):
                self._output(piece)
            code = await engine.wait(container, timeout=RUN_BOUND)
            # A follow the engine cut short (a daemon restarted with live-restore) ended before
            # the container did: what it wrote meanwhile.
            async for _, piece in engine.logs(container, follow=False, skip=self.received, tty=self._tty):
                self._output(piece)
        except FleetError:
            self._api_failures += 1
            process.close()
            raise
        self.report.exit_code = code
        await process.write(scripts.ENDED)

    async def _read(self) -> None:
        try:
            while True:
                if self._process is None:  # taking over: reach the host (as after a loss)
                    self._process = await self._reconnect(None)
                process = self._process
                over = asyncio.Event()  # this session command's stderr has ended
                try:
                    await all_of(drain(process.read_stdout, self._output), self._progress_of(process, over),
                                 self._follow(process, over))
                    self._status = await process.wait()
                    if not process.lost:
                        return
                    lost: FleetError = HostError(self.label, "the SSH connection closed")
                except FleetError as exc:
                    lost = exc
                if self._given_up or not (self.has("started") and not self.has("exited")
                                          and self.options.host_timeout > 0):
                    self._lost = self._lost if self._given_up else lost
                    return
                self._process = await self._reconnect(lost)
                self.report.resumed()
        except FleetError as exc:
            self._lost = self._lost if self._given_up else exc
        finally:
            self._ended.set()

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
                if self._engine is not None:
                    self._engine.close()  # its idle connections went with the old connection
                self._engine = await self._ours(await self._reach_engine())
                self._api = self._engine is not None
                self._session_started.clear()
                self._session_placed.clear()
                process = await self.transport.start(
                    scripts.resume(self._plan(), self.received, self.options.docker_timeout, api=self._api))
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

    async def _until(self, event: str) -> bool:
        """Wait for `event` or the session's end; True if the event came."""
        await first_of(self._events[event].wait(), self._ended.wait())
        return self._events[event].is_set()

    async def written(self) -> bool:
        """Wait until the job directory is written (inputs may stream in); False if the
        session ended first (`prepared` tells why)."""
        return await self._until("written")

    async def started(self) -> bool:
        """Wait until the container has started; False if the session ended first."""
        return await self._until("started")

    async def image_step(self, step: bytes) -> None:
        """Tell the session, once written, how it gets the image (fleet.image.supply); never
        logged (a pull's registry credentials ride along)."""
        await self._send(step, "the image step")

    async def image_missing(self) -> bool:
        """After `try`: whether the session said it lacks the image (False once it went on,
        having it, or ended)."""
        await first_of(self._events["image-missing"].wait(), self._events["prepared"].wait(), self._ended.wait())
        return self._events["image-missing"].is_set()

    async def prepared(self, image: str) -> None:
        """Wait until the host is checked, its job directory written and its container
        created; raise what went wrong."""
        if await self._until("prepared"):
            return
        await self._ended.wait()
        raise self._preparation_error(image)

    def _preparation_error(self, image: str) -> FleetError:
        if self._lost is not None:
            return self._lost
        return self._failure(f"preparing the host failed (status {self._status})", image=image,
                             how=f" (as {self.pulled_as})" if self.pulled_as and self.pulled_as != image else "",
                             need=_gib(self._volume_kb), free=_gib(self.report.errors.splitlines()[-1]
                                                                   if self.report.errors else "?"))

    def _failure(self, otherwise: str, status: int | None = None, said: str | None = None,
                 **fields: object) -> FleetError:
        """The error the session's exit status means (fleet.host.statuses: its kind and
        words; `said`: docker's words, by default what the session said), else
        HostError(`otherwise`)."""
        plan = self._plan()
        said = self.report.errors if said is None else said
        status = self._status if status is None else status
        error = scripts.host_failure(status, self.label, said, docker_timeout=self.options.docker_timeout,
                                     docker=repr(self.host.docker), workdir=plan.workdir, job_dir=plan.job_dir,
                                     job_name=plan.job_name, container=plan.container, **fields)
        return error or HostError(self.label, f"{otherwise}: {said}")

    async def go(self) -> None:
        """Start the container; say how it is followed (`go api`: the engine's API)."""
        self._engine = await self._ours(await self._engine_task if self._engine_task is not None else None)
        self._api = self._engine is not None
        await self._send(scripts.GO_API if self._api else scripts.GO)

    async def abort(self) -> None:
        await self._send(scripts.ABORT)

    async def _send(self, line: bytes, what: str | None = None) -> None:
        if self._process is not None and not self._ended.is_set():
            try:
                await self._process.write(line)
            except FleetError as exc:  # its end tells
                log.debug("%s: could not send %s: %s", self.algo, what or repr(line), exc.message)

    async def exited(self) -> tuple[int, bytes | None]:
        """Wait for the container to exit: (exit code, first 1 KB of its message, if any)."""
        try:
            if await self._until("exited"):
                code = self.report.exit_code
                return code if code is not None else -1, self.report.message
            await self._ended.wait()
        finally:
            if self._lines is not None:
                self._lines.flush()
        if self._lost is not None:
            raise self._lost
        status = self._status
        if not self.has("started") and status not in set(Status):
            status = Status.START_FAILED  # ended before `started`, saying nothing else: the start failed
        raise self._failure(f"lost track of the container (status {self._status})", status)

    # -- stop, kill, cleanup ----------------------------------------------------------------
    @property
    def stop_bound(self) -> float:
        """How long a stop may take on this host before it is given up: the grace SIGINT
        gives the container, plus docker's own time to answer, plus a margin."""
        return self.options.stop_grace + self.options.docker_timeout + STOP_MARGIN

    async def stop(self, kill: asyncio.Event) -> None:
        """Stop the container and wait for its end: `docker stop` (SIGINT, then SIGKILL
        after the grace: it was created so), or `docker kill` once `kill` is set. A host
        being reconnected to gets the command once it is back. Bounded (`stop_bound`): a
        host whose docker does not answer (or that stays out of reach) is given up, its
        container left for `fleet gc`, and the job ends all the same."""
        plan = self._plan()
        try:
            async with asyncio.timeout(self.stop_bound):
                stop = self._until_ran(scripts.stop(plan),
                                       lambda engine: engine.stop(plan.container, grace=self.options.stop_grace))
                which = await first_of(self._until("exited"), stop, kill.wait())
                if which == 2:
                    kill_it = self._until_ran(scripts.kill(plan), lambda engine: engine.kill(plan.container))
                    which = await first_of(self._until("exited"), kill_it)
                if which != 0:  # the command ran: the session reports the container's end
                    await self._until("exited")
        except TimeoutError:
            self.give_up(HostError(self.label, f"the container {plan.container} did not stop within "
                                               f"{self.stop_bound:g} s (docker there not answering, or the host "
                                               f"out of reach); it may remain: `fleet gc` removes it"))

    def give_up(self, reason: FleetError) -> None:
        """Stop supervising this host: its session ends now with `reason` (no reconnect)."""
        if self._ended.is_set():
            return
        self._console.notice(reason.message)
        self._lost = reason
        self._given_up = True
        if self._process is not None:
            self._process.close()
        if self._reader is not None:
            self._reader.cancel()  # its `finally` marks the session ended

    async def _until_ran(self, argv: list[str], api: Callable[[Engine], Awaitable[None]] | None = None) -> None:
        """Run argv on the host (or `api`, the same through the engine's API, where the
        container is followed so: no command on the host), again after each failure to
        reach it (at the reconnects' pace), until it ran; the caller cancels it when it is
        no longer needed."""
        retrying = retry.RECONNECT.start()
        while True:
            try:
                engine = self._engine if self._api else None
                if engine is not None and api is not None:
                    with contextlib.suppress(NoSuchObject, Conflict):  # gone, or not running: nothing to do
                        await api(engine)
                    return
                await self.transport.run(argv)
                return
            except FleetError as exc:
                log.debug("%s: %s: %s", self.algo, argv[-2] if len(argv) > 1 else argv, exc.message)
                await retrying.pause()

    async def finish(self, keep: bool) -> bool:
        """Ask the session to remove the container (and the directory unless `keep`);
        True once it has."""
        if self._process is None:
            return False
        line = scripts.KEEP if keep else scripts.CLEAN
        if self._api and self._engine is not None and self.has("exited") and not self._ended.is_set():
            try:
                await self._engine.remove(self._plan().container)
                line = line.rstrip(b"\n") + scripts.REMOVED + b"\n"
            except FleetError as exc:  # the session removes it, through its docker command
                log.debug("%s: removing the container through the API: %s", self.algo, exc.message)
        await self._send(line)
        if not self._ended.is_set():
            self._process.close_stdin()
        await self._ended.wait()
        return self.has("cleaned")

    async def clean_up(self, keep: bool) -> None:
        """Whatever happened: no container of this run remains on the host, and its job
        directory goes (unless `keep`). A session that ran to its end cleans up itself;
        otherwise one cleanup command. Bounded: a hung docker daemon must not hang fleet
        (HostError: the container may remain, for `fleet gc`)."""
        bound = self.options.docker_timeout + CLEANUP_MARGIN
        plan = self._plan()
        if self._status == Status.STEP_ENDED:
            return  # the session removed everything itself (its allocation is ending)
        # A container still running (an unexpected error got us here) is not waited for:
        # its session is abandoned and the cleanup command removes it.
        if self.has("exited") or not self.has("started"):
            try:
                async with asyncio.timeout(bound):
                    if await self.finish(keep):
                        return
            except TimeoutError:
                log.debug("%s: the session did not clean up within %s s", self.algo, bound)
        try:
            async with asyncio.timeout(bound):
                # A take-over that ends before any session (the controller died before go:
                # `fleet attach`) has not connected yet: connect now (a no-op when connected).
                await self.transport.reconnect(bound)
                result = await self.transport.run(
                    scripts.cleanup(plan, keep, self.options.docker_timeout, started=self.has("started")))
        except TimeoutError as exc:
            raise HostError(self.label, f"cleanup did not finish within {bound} s; "
                                        f"container {plan.container} may remain") from exc
        if result.exit_status == Status.DOCKER_SILENT:
            raise self._failure("cleanup failed", Status.DOCKER_SILENT)
        if result.exit_status != 0:
            raise HostError(self.label, f"could not remove the job directory {plan.job_dir}: "
                                        f"{result.stderr.decode(errors='replace').strip()}")

    async def close(self) -> None:
        """Abandon the session and close the connection (the container, if started, keeps
        running: see `clean_up`); the log is flushed and closed. Never raises."""
        if self._process is not None:
            self._process.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        if self._lines is not None:
            self._lines.flush()
        if self._log is not None:
            self._log.close()
        if self._engine is not None:
            self._engine.close()
        await self.transport.close()


def _gib(kib: object) -> str:
    try:
        return f"{int(kib) / 1024 / 1024:.1f} GiB"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"{kib} KiB"
