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

An Instance says what happens and when; the session command across reconnects is its
HostSession's (fleet/runtime/session.py), the engine's side its ApiSupervisor's
(fleet/runtime/supervisor.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from fleet import host as scripts, retry
from fleet.engine.client import Engine
from fleet.errors import FleetError, HostError
from fleet.fanout import first_of
from fleet.host import Status
from fleet.inventory import Host
from fleet.plan import HostPlan
from fleet.runtime.console import Console
from fleet.runtime.session import HostSession
from fleet.runtime.store import RunOptions
from fleet.transport import Transport

log = logging.getLogger(__name__)

CLEANUP_MARGIN = 10  # seconds a cleanup may take beyond --docker-timeout
STOP_MARGIN = 10  # seconds a stop may take beyond the grace and --docker-timeout


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
        self.pulled_as: str | None = None  # the reference the host was told to pull (NAME@DIGEST)
        self._console = console
        self._volume_kb = 0
        self.session = HostSession(algo, host, transport, options, console, self._plan)
        self.api = self.session.api

    @property
    def report(self) -> scripts.SessionReport:
        return self.session.report

    @property
    def received(self) -> int:
        """Bytes of the container's log received (and stored) so far."""
        return self.session.sink.received

    @property
    def reconnects(self) -> list[float]:
        """Seconds from each loss to supervision resumed."""
        return self.session.reconnects

    @property
    def label(self) -> str:
        return self.transport.label

    def has(self, event: str) -> bool:
        return self.session.has(event)

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
        self.session.sink.file = log_file
        self.session.sink.lines = self._console.host_lines(self.algo)

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
        await self.session.start(scripts.session(plan, self.options.docker_timeout, volume_gb))
        # The engine's API is reached while the host is prepared: `go` says which way it is.
        self.api.reach_soon(tasks)
        await self.session.read(tasks, scripts.session_input(plan))

    def resume(self, tasks: asyncio.TaskGroup, offset: int) -> None:
        """Take over this run's started container: its log from byte `offset` on (what the
        store already has), its exit, its removal."""
        self.session.resume(tasks, offset)

    async def written(self) -> bool:
        """Wait until the job directory is written (inputs may stream in); False if the
        session ended first (`prepared` tells why)."""
        return await self.session.until("written")

    async def started(self) -> bool:
        """Wait until the container has started; False if the session ended first."""
        return await self.session.until("started")

    async def image_step(self, step: bytes) -> None:
        """Tell the session, once written, how it gets the image (fleet.image.supply); never
        logged (a pull's registry credentials ride along). Where the controller can create
        the container itself through the engine's API, it does, and says `made` instead."""
        made = await self.api.made(step, self.report.cli_engine)
        await self.session.send(made or step, "the image step")

    async def image_missing(self) -> bool:
        """After `try`: whether the session said it lacks the image (False once it went on,
        having it, or ended)."""
        events = self.session.events
        await first_of(events["image-missing"].wait(), events["prepared"].wait(), self.session.ended.wait())
        return events["image-missing"].is_set()

    async def prepared(self, image: str) -> None:
        """Wait until the host is checked, its job directory written and its container
        created; raise what went wrong."""
        if await self.session.until("prepared"):
            return
        await self.session.ended.wait()
        raise self.session.preparation_error(image, self.pulled_as, self._volume_kb)

    async def go(self) -> None:
        """Start the container; say how it is followed (`go api`: the engine's API)."""
        await self.session.send(scripts.GO_API if await self.api.choose_at_go() else scripts.GO)

    async def abort(self) -> None:
        await self.session.send(scripts.ABORT)

    async def exited(self) -> tuple[int, bytes | None]:
        """Wait for the container to exit: (exit code, first 1 KB of its message, if any)."""
        try:
            if await self.session.until("exited"):
                code = self.report.exit_code
                return code if code is not None else -1, self.report.message
            await self.session.ended.wait()
        finally:
            self.session.sink.flush()
        if self.session.lost is not None:
            raise self.session.lost
        status = self.session.status
        if not self.has("started") and status not in set(Status):
            status = Status.START_FAILED  # ended before `started`, saying nothing else: the start failed
        raise self.session.failure(f"lost track of the container (status {self.session.status})", status)

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
                which = await first_of(self.session.until("exited"), stop, kill.wait())
                if which == 2:
                    kill_it = self._until_ran(scripts.kill(plan), lambda engine: engine.kill(plan.container))
                    which = await first_of(self.session.until("exited"), kill_it)
                if which != 0:  # the command ran: the session reports the container's end
                    await self.session.until("exited")
        except TimeoutError:
            self.give_up(HostError(self.label, f"the container {plan.container} did not stop within "
                                               f"{self.stop_bound:g} s (docker there not answering, or the host "
                                               f"out of reach); it may remain: `fleet gc` removes it"))

    def give_up(self, reason: FleetError) -> None:
        """Stop supervising this host: its session ends now with `reason` (no reconnect)."""
        self.session.give_up(reason)

    async def _until_ran(self, argv: list[str], api: Callable[[Engine], Awaitable[None]] | None = None) -> None:
        """Run argv on the host (or `api`, the same through the engine's API, where the
        container is followed so: no command on the host), again after each failure to
        reach it (at the reconnects' pace), until it ran; the caller cancels it when it is
        no longer needed."""
        retrying = retry.RECONNECT.start()
        while True:
            try:
                if api is not None and await self.api.call(api):
                    return
                await self.transport.run(argv)
                return
            except FleetError as exc:
                log.debug("%s: %s: %s", self.algo, argv[-2] if len(argv) > 1 else argv, exc.message)
                await retrying.pause()

    async def finish(self, keep: bool) -> bool:
        """Ask the session to remove the container (and the directory unless `keep`);
        True once it has."""
        if self.session.process is None:
            return False
        line = scripts.KEEP if keep else scripts.CLEAN
        if self.has("exited") and not self.session.ended.is_set():
            line = await self.api.remove(line)
        return await self.session.finish(line)

    async def clean_up(self, keep: bool) -> None:
        """Whatever happened: no container of this run remains on the host, and its job
        directory goes (unless `keep`). A session that ran to its end cleans up itself;
        otherwise one cleanup command. Bounded: a hung docker daemon must not hang fleet
        (HostError: the container may remain, for `fleet gc`)."""
        bound = self.options.docker_timeout + CLEANUP_MARGIN
        plan = self._plan()
        if self.session.status == Status.STEP_ENDED:
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
            raise self.session.failure("cleanup failed", Status.DOCKER_SILENT)
        if result.exit_status != 0:
            raise HostError(self.label, f"could not remove the job directory {plan.job_dir}: "
                                        f"{result.stderr.decode(errors='replace').strip()}")

    async def close(self) -> None:
        """Abandon the session and close the connection (the container, if started, keeps
        running: see `clean_up`); the log is flushed and closed. Never raises."""
        await self.session.close()
        self.api.close()
        await self.transport.close()
