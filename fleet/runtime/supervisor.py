"""The controller's side of `go api`: one host's container started, followed, waited for,
stopped and removed through the host's engine API (fleet.engine), while the session command
(session.sh, supervise.sh's await_end) only waits.

Its Instance (fleet/runtime/instance.py) owns the session command, the log sink and the
reconnects; an ApiSupervisor owns the engine: reaching it while the host is prepared,
checking that it is the engine the host's docker command created this run's container on
(`choose`), and the calls. An engine call that fails closes the session command and is
raised: the instance reconnects and resumes, as after a lost connection; after API_FAILURES
of them the host's scripts supervise (as where there is no API: srun, FLEET_ENGINE_API=0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from fleet import host as scripts
from fleet.engine.client import Conflict, Engine, EngineFailed, EngineRefused, NoSuchObject
from fleet.engine.connect import engine_for
from fleet.errors import FleetError
from fleet.fanout import first_of
from fleet.host import Status
from fleet.inventory import Host
from fleet.plan import HostPlan
from fleet.runtime.creator import made_step, run_config, same_engine
from fleet.runtime.store import RunOptions
from fleet.transport import Transport
from fleet.transport.base import RemoteProcess

log = logging.getLogger(__name__)

API_FAILURES = 2  # engine API failures of one host before its scripts supervise instead
RUN_BOUND = 10 * 365 * 86400.0  # seconds a container may run (the job's own limits stop it first)

Failure = Callable[..., FleetError]  # Instance's mapping of a host status to its error


class ApiSupervisor:
    """One host's engine API, for its Instance. `active`: the current session command's
    container is followed through the API (it said `go api`, or resumed so)."""

    def __init__(self, algo: str, host: Host, transport: Transport, options: RunOptions,
                 plan: Callable[[], HostPlan], failure: Failure) -> None:
        self.algo = algo
        self.host = host
        self.transport = transport
        self.options = options
        self._plan = plan
        self._failure = failure
        self.engine: Engine | None = None
        self.active = False
        self.failures = 0
        self._reaching: asyncio.Task[Engine | None] | None = None
        self.session_started = asyncio.Event()  # the current session command said `started`
        self.session_placed = asyncio.Event()  # ... `placed` (API: the controller starts the container)
        self._tty = False  # the container has a TTY (docker_args' -t): its log is raw, not framed
        self._made: Engine | None = None  # the engine the controller created the container on (`made`)

    @property
    def label(self) -> str:
        return self.transport.label

    def reach_soon(self, tasks: asyncio.TaskGroup) -> None:
        """Reach the engine in a task of `tasks` (while the host is prepared): `go` uses it."""
        self._reaching = tasks.create_task(self._reach(), name=f"{self.algo} engine")

    def progress(self, event: str) -> None:
        """The session command said `event`."""
        if event == "started":
            self.session_started.set()
        elif event == "placed":
            self.session_placed.set()

    async def _reach(self) -> Engine | None:
        """The host's engine API for following the container; None where the host's
        scripts supervise (no API, or API_FAILURES failures already). Never raises."""
        if self.failures >= API_FAILURES:
            return None
        try:
            # The session's own check (`_ours`) stands for engine_for's: no command of its own.
            return await engine_for(self.transport, self.host, self.options.docker_timeout, cli_check=False)
        except FleetError as exc:  # the engine did not answer: the session's docker calls say so
            log.debug("%s: no engine API: %s", self.algo, exc.message)
            return None

    async def made(self, step: bytes, cli_engine: str | None) -> bytes | None:
        """The image step `step`, done by the controller through the engine's API where it
        can (fleet/runtime/creator.py): `made ID UID` for the session; else None."""
        engine = await self._reaching if self._reaching is not None else None
        if engine is None or not same_engine(engine, self.host, cli_engine):
            return None
        made = await made_step(step, self._plan(), engine)
        self._made = engine if made is not None else None
        return made

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
        config = run_config(found, plan.run_id)
        if config is None:
            log.info("%s: the engine at %s has another container %s: the host's scripts supervise this run's",
                     self.algo, engine.path, plan.container)
            return None
        self._tty = bool(config.get("Tty"))  # how its log is framed
        return engine

    async def choose_at_go(self) -> bool:
        """At `go`: whether the container is followed through the API (the engine reached
        meanwhile shows it; the one that created it, without asking: no TTY, this run's)."""
        if self._made is not None:
            self.engine, self._tty = self._made, False
        else:
            self.engine = await self._ours(await self._reaching if self._reaching is not None else None)
        self.active = self.engine is not None
        return self.active

    async def choose_again(self) -> bool:
        """After a reconnect: the engine reached anew over the new connection (the old one's
        idle connections went with it), for the session command about to resume."""
        if self.engine is not None:
            self.engine.close()
        self.engine = await self._ours(await self._reach())
        self.active = self.engine is not None
        self.session_started.clear()
        self.session_placed.clear()
        return self.active

    async def _start(self, engine: Engine, process: RemoteProcess, on_start: Callable[[], None]) -> None:
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
        on_start()
        self.session_started.set()
        log.debug("%s: started (through the API)", self.algo)

    async def follow(self, process: RemoteProcess, over: asyncio.Event, received: Callable[[], int],
                     output: Callable[[bytes], None], on_start: Callable[[], None]) -> int | None:
        """Once the container has started (through the API at `placed`, then `on_start()`), its
        log from byte `received()` on (what the store has) into `output`, then its exit code (returned),
        then ENDED to the session (which answers with the message and `exited`). None at
        once when this session command is not followed so, or ends (`over`) before the
        container started (its status tells why). An engine failure closes the session
        command and is raised: the caller reconnects and resumes, as after a lost connection."""
        which = await first_of(self.session_started.wait(), self.session_placed.wait(), over.wait())
        engine = self.engine  # `go` (or the reconnect) chose, before the container started
        if which == 2 or not self.active or engine is None:
            return None
        container = self._plan().container
        if which == 1:
            await self._start(engine, process, on_start)
        try:
            # No re-read of its own (reread=False): the one below, after the wait, reads the rest.
            async for _, piece in engine.logs(container, follow=True, skip=received(), tty=self._tty,
                                              reread=False):
                output(piece)
            code = await engine.wait(container, timeout=RUN_BOUND)
            # What the follow did not bring: the last unterminated line Docker 20.10's follow
            # misses, and what a follow the engine cut short (a daemon restarted with
            # live-restore) missed, having ended before the container did.
            async for _, piece in engine.logs(container, follow=False, skip=received(), tty=self._tty):
                output(piece)
        except FleetError:
            self.failures += 1
            process.close()
            raise
        return code

    async def call(self, api: Callable[[Engine], Awaitable[None]]) -> bool:
        """Run `api` (a stop, a kill) on the engine where the container is followed through
        it (a container gone, or not running, needs nothing: done); False where it is not
        (the host's command does it)."""
        engine = self.engine if self.active else None
        if engine is None:
            return False
        with contextlib.suppress(NoSuchObject, Conflict):
            await api(engine)
        return True

    async def remove(self, line: bytes) -> bytes:
        """The container removed through the API where it is followed so: `line` (clean /
        keep) marked REMOVED for the session; unmarked where not, or when the call fails
        (the session removes it, through its docker command)."""
        if not self.active or self.engine is None:
            return line
        try:
            await self.engine.remove(self._plan().container)
        except FleetError as exc:
            log.debug("%s: removing the container through the API: %s", self.algo, exc.message)
            return line
        return line.rstrip(b"\n") + scripts.REMOVED + b"\n"

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
