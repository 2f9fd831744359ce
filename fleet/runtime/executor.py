"""The lifecycle of one job: connect → prepare → start and supervise → gather → clean up.

The executor owns every task it starts. Stop (Ctrl-C, SIGTERM), MaxRuntime and a failing
container all travel one path: `_stop_all`, then the `finally` that cleans every host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable, TypeVar

from fleet.contract.describe import now
from fleet.contract.job import ProcessingJob
from fleet.contract.message import exit_message
from fleet.errors import (AlgorithmError, ClientError, FleetError, HostError, HostLost, JobStopped,
                          MaxRuntimeExceeded)
from fleet.inventory import Host
from fleet.plan import ClusterPlan, algo_names, plan_cluster
from fleet.runtime import hostcommands
from fleet.runtime.console import Console
from fleet.runtime.session import RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY, HostSession
from fleet.runtime.transfers import JobData
from fleet.runtime.store import JobRecord
from fleet.transport import Transport, transport_for

T = TypeVar("T")
HANDSHAKES_IN_FLIGHT = 32  # SSH handshakes at once: each costs the controller CPU (key exchange)


@dataclass(frozen=True)
class RunOptions:
    stop_grace: int = 30
    keep: bool = False
    docker_timeout: int = 20
    host_timeout: float = 120
    region: str = "us-east-1"
    account: str = "000000000000"
    run_id: str = ""
    controller: str = ""


@dataclass(frozen=True)
class Takeover:
    """A job another fleet process ran and lost (`fleet attach`, `fleet stop`): where its
    hosts were reached, and when its containers started (None: they never did)."""

    addresses: list[str]
    started: str | None


@dataclass
class HostOutcome:
    algo: str
    exit_code: int | None = None
    message: bytes | None = None  # None: the container wrote no /opt/ml/output/message
    error: FleetError | None = None


def host_label(algo: str, host: Host) -> str:
    where = host.address if host.label == host.address else f"{host.label}, {host.address}"
    return f"{algo} ({where})"


def _combined(errors: list[FleetError]) -> FleetError:
    """One error for several hosts: the first one's kind, every host's line."""
    if len(errors) == 1:
        return errors[0]
    combined = FleetError.__new__(type(errors[0]))
    FleetError.__init__(combined, "\n".join(e.message for e in errors))
    return combined


async def _together(*work: Awaitable) -> None:
    """Await all; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _false() -> bool:
    return False


def _tee(*sinks):
    def write(chunk: bytes) -> None:
        for sink in sinks:
            sink(chunk)
    return write


class JobExecution:
    def __init__(self, job: ProcessingJob, hosts: list[Host], record: JobRecord,
                 console: Console, options: RunOptions) -> None:
        self.job = job
        self.hosts = hosts
        self.record = record
        self.console = console
        self.options = options
        self.labels = [host_label(a, h) for a, h in zip(algo_names(len(hosts)), hosts)]
        self.transports: list[Transport] = [transport_for(h, l) for h, l in zip(hosts, self.labels)]
        self.sessions: list[HostSession] = []
        self._logs: list = []
        self._lines: list = []
        self.plan: ClusterPlan | None = None
        self.stop_requested = asyncio.Event()
        self.kill_requested = asyncio.Event()
        self._helpers: set[asyncio.Task] = set()
        self.data = JobData(job, console)

    # -- signals ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: stop gracefully (SIGINT, then SIGKILL after the grace). Second: kill."""
        if self.stop_requested.is_set():
            if not self.kill_requested.is_set():
                self.console.notice("second interrupt: killing the containers now")
            self.kill_requested.set()
        else:
            self.console.notice("stopping the job (interrupt again to kill at once)")
            self.stop_requested.set()

    # -- the lifecycle --------------------------------------------------------------------
    async def execute(self, takeover: Takeover | None = None,
                      on_planned: Callable[[list[str]], None] | None = None) -> FleetError | None:
        """Run the job to a terminal status, write the final record, return why it did not
        complete (None when Completed). With `takeover`, the job's containers were started
        by another fleet process: supervise them from where it stopped."""
        outcomes: list[HostOutcome] = []
        error: FleetError | None = None
        # S3 (connecting, listing the inputs) runs while the hosts are reached and prepared;
        # whichever fails first ends the other.
        self._data_ready = asyncio.ensure_future(self._open_data(list_inputs=takeover is None))
        try:
            if takeover is None:
                await self._unless_stopped(_together(self._connect_all(), asyncio.shield(self._data_ready)))
                addresses = self._addresses()
            else:  # each host's session connects itself, for up to --host-timeout;
                # a stop asked for already is carried out once the hosts are reached
                await asyncio.shield(self._data_ready)
                addresses = takeover.addresses
            self.plan = plan_cluster(self.job, self.hosts, addresses, stop_grace=self.options.stop_grace,
                                     region=self.options.region, account=self.options.account,
                                     run_id=self.options.run_id, controller=self.options.controller)
            if on_planned is not None:
                on_planned(addresses)
            if takeover is None:
                await self._unless_stopped(self._prepare_all())
            elif takeover.started is None:
                self._make_sessions()
                raise FleetError("the fleet process running the job ended before its containers started")
            else:
                await self._resume_all()
            outcomes, error = await self._supervise(takeover.started if takeover else None)
            # Outputs come from the hosts whose container ran to its end: EndOfJob ones only
            # when the job Completed, Continuous ones (a last pass) whatever the end.
            exited = [(p, t) for s, p, t in zip(self.sessions, self.plan.hosts, self.transports) if s.has("exited")]
            if self.job.outputs and exited:
                # A stop that already came does not prevent Continuous's last pass; another does.
                guard = self.kill_requested if self.stop_requested.is_set() else self.stop_requested
                await self._unless_stopped(self.data.upload(exited, completed=error is None), guard)
        except FleetError as exc:
            error = error or exc
        except Exception as exc:  # a bug of fleet's: the job still ends Failed, hosts cleaned
            error = FleetError(f"fleet failed unexpectedly: {exc!r}")
        finally:
            self._data_ready.cancel()
            await asyncio.gather(self._data_ready, return_exceptions=True)
            await asyncio.shield(self._cleanup_all())
            await self.data.close()
        return self._finish(outcomes, error)

    async def _open_data(self, list_inputs: bool = True) -> None:
        if self.data.needed:
            await self.data.open()
            if list_inputs:
                await self.data.list_inputs()

    def _addresses(self) -> list[str]:
        """Where the other hosts reach each host: the inventory's `ip`; else the address its
        SSH connection reached; for the local host, this machine's address on the way to
        the SSH hosts (127.0.0.1 when it is alone)."""
        controller = next((t.local_address for t in self.transports if t.local_address), None)
        return [host.ip or (controller if host.transport == "local" and controller else transport.peer_address)
                for host, transport in zip(self.hosts, self.transports)]

    async def _unless_stopped(self, work: Awaitable[T], stop_event: asyncio.Event | None = None) -> T:
        """Await `work`, abandoning it (and raising JobStopped) if a stop comes first."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future((stop_event or self.stop_requested).wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise JobStopped("stopped by the user")
        return task.result()

    async def _on_all_hosts(self, hosts: list[tuple[int, object]], action) -> None:
        """Run `action(index, host)` for each (index, transport or session) in parallel;
        raise one error naming every host that failed."""
        results = await asyncio.gather(*(action(i, h) for i, h in hosts), return_exceptions=True)
        errors = []
        for result in results:
            if isinstance(result, FleetError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            raise _combined(errors)

    async def _connect_all(self) -> None:
        handshakes = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

        async def connect(index: int, transport: Transport) -> None:
            async with handshakes:
                await transport.connect()
        await self._on_all_hosts(list(enumerate(self.transports)), connect)

    def _make_sessions(self) -> None:
        assert self.plan is not None
        for plan, transport in zip(self.plan.hosts, self.transports):
            log = self.record.open_log(plan.algo)
            self._logs.append(log)
            lines = self.console.host_lines(plan.algo)
            self._lines.append(lines)
            self.sessions.append(HostSession(
                transport, plan, _tee(log.write, lines.feed), host_timeout=self.options.host_timeout,
                docker_timeout=self.options.docker_timeout, on_notice=self.console.notice))

    async def _resume_all(self) -> None:
        """Take over every host's session where the stored log ends."""
        self._make_sessions()
        for session in self.sessions:
            await session.resume(self.record.log_size(session.plan.algo))

    async def _prepare_all(self) -> None:
        """Open every host's session and wait until each is checked and written.
        Any failure: every session is told to abort, and nothing starts anywhere."""
        assert self.plan is not None
        image = self.job.AppSpecification.ImageUri
        timeout = self.options.docker_timeout
        volume = self.job.ProcessingResources.ClusterConfig.VolumeSizeInGB
        self._make_sessions()

        async def prepare(index: int, session: HostSession) -> None:
            await session.open(image, timeout, volume)
            await session.prepared(image, timeout)

        async def stage() -> None:
            # The inputs stream into each host's inputs/N.partial (nothing reads them before
            # `go`) while docker is checked, the image pulled and the container created.
            await asyncio.shield(self._data_ready)
            if not self.job.inputs:
                return
            if not all(await asyncio.gather(*(s.written() for s in self.sessions))):
                await asyncio.Event().wait()  # a host failed: its preparation error ends this
            await self.data.stage(self.plan.hosts, self.transports)

        try:
            await _together(self._on_all_hosts(list(enumerate(self.sessions)), prepare), stage())
        except BaseException:
            await asyncio.gather(*(s.abort() for s in self.sessions), return_exceptions=True)
            raise

    async def _run_host(self, index: int) -> HostOutcome:
        session = self.sessions[index]
        algo = session.plan.algo
        try:
            code, message = await session.exited()
        except FleetError as exc:
            # Taken over after the container was removed: its exit code was recorded.
            recorded = self.record.data.get("Hosts", {}).get(algo, {}).get("ExitCode")
            if recorded is not None and not isinstance(exc, HostLost):
                return HostOutcome(algo, recorded)
            return HostOutcome(algo, error=exc)
        finally:
            self._lines[index].flush()
        # Recorded at once: a fleet taking the job over later needs it if the container is gone.
        self.record.update(Hosts=self._hosts_with({algo: code}))
        return HostOutcome(algo, code, message)

    def _hosts_with(self, codes: dict[str, int | None]) -> dict:
        """The record's Hosts with these hosts' ExitCodes."""
        hosts = dict(self.record.data.get("Hosts", {}))
        for algo, code in codes.items():
            hosts[algo] = {**hosts.get(algo, {}), "ExitCode": code}
        return hosts

    async def _supervise(self, started: str | None = None) -> tuple[list[HostOutcome], FleetError | None]:
        """Start every host's container (unless they were `started` already, at that ISO
        time) and wait for all of them.

        The first of these ends the job early, and every other container is stopped:
        a container failing, a stop request, MaxRuntimeInSeconds.
        """
        assert self.plan is not None
        loop = asyncio.get_running_loop()
        if started is None:
            self.record.update(ProcessingStartTime=now())
            deadline = loop.time() + self.job.max_runtime
            await asyncio.gather(*(s.go() for s in self.sessions))
        else:
            elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds()
            deadline = loop.time() + self.job.max_runtime - elapsed
        tasks = [asyncio.create_task(self._run_host(i)) for i in range(len(self.plan.hosts))]
        continuous = asyncio.create_task(self.data.continuous(self.plan.hosts, self.transports))
        stop_wait = asyncio.create_task(self.stop_requested.wait())
        ending: FleetError | None = None
        try:
            pending: set[asyncio.Future] = set(tasks)
            while pending:
                waiting = pending if ending else pending | {stop_wait}
                timeout = None if ending else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                if ending is not None:
                    continue
                if stop_wait in done:
                    ending = JobStopped("stopped by the user")
                    self.record.update(ProcessingJobStatus="Stopping")
                elif not done:
                    ending = MaxRuntimeExceeded(
                        f"Job exceeded MaxRuntimeInSeconds ({self.job.max_runtime} s); "
                        f"the containers were stopped")
                    self.console.notice(ending.failure_reason)
                else:
                    ending = self._first_failure([t.result() for t in tasks if t in done])
                    if ending is not None:
                        self.console.notice(f"{ending.failure_reason}; stopping the other hosts")
                if ending is not None:
                    self._spawn(self._stop_all(tasks))
        finally:
            stop_wait.cancel()
            continuous.cancel()
            await asyncio.gather(continuous, return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._join_helpers()
        return [t.result() for t in tasks], ending

    def _first_failure(self, outcomes: list[HostOutcome]) -> FleetError | None:
        for outcome in outcomes:
            if outcome.error is not None:
                return outcome.error
            if outcome.exit_code != 0:
                return AlgorithmError(f"{outcome.algo} exited with code {outcome.exit_code}. "
                                      f"See job logs for more information")
        return None

    async def _stop_all(self, tasks: list[asyncio.Task]) -> None:
        """`docker stop` every container still running (SIGINT, SIGKILL after the grace);
        `docker kill` them instead once a second interrupt comes."""
        assert self.plan is not None
        running = [i for i, t in enumerate(tasks) if not t.done()]

        async def stop(i: int) -> None:
            # A host being reconnected to gets the stop once it is back (or is given up).
            graceful = asyncio.create_task(self._until_done(
                tasks[i], self.transports[i], hostcommands.stop(self.plan.hosts[i])))
            killing = asyncio.create_task(self.kill_requested.wait())
            await asyncio.wait({graceful, killing, tasks[i]}, return_when=asyncio.FIRST_COMPLETED)
            if killing.done() and not tasks[i].done():
                await self._until_done(tasks[i], self.transports[i], hostcommands.kill(self.plan.hosts[i]))
            killing.cancel()
            await asyncio.gather(graceful, return_exceptions=True)

        await asyncio.gather(*(stop(i) for i in running), return_exceptions=True)

    @staticmethod
    async def _until_done(task: asyncio.Task, transport: Transport, argv: list[str]) -> None:
        """Run argv on the host, again after each failure to reach it, until it ran or
        `task` (the host's supervision) ended."""
        delay = RECONNECT_FIRST_DELAY  # the same pace as the session's reconnects
        while not task.done():
            try:
                await transport.run(argv)
                return
            except FleetError:
                await asyncio.wait({task}, timeout=delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._helpers.add(task)

    async def _join_helpers(self) -> None:
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._helpers.clear()

    async def _cleanup_all(self) -> None:
        """Whatever happened: no container of the job remains, and the job directories go
        (unless --keep). A session that ran to its end cleans its own host; any other host
        with a session gets one cleanup command. All of it is time-bounded (a hung docker
        daemon must not hang fleet); then the connections close."""
        keep, bound = self.options.keep, self.options.docker_timeout + 10
        try:
            # A container still running (an unexpected error got us here) is not waited for:
            # its session is abandoned and the cleanup command removes it.
            finished = await asyncio.gather(*(
                asyncio.wait_for(s.finish(keep), bound) if s.has("exited") or not s.has("started")
                else _false() for s in self.sessions), return_exceptions=True)
            leftovers = [(i, s.transport) for i, (s, done) in enumerate(zip(self.sessions, finished))
                         if done is not True]

            async def clean(index: int, transport: Transport) -> None:
                plan = self.sessions[index].plan
                try:
                    result = await asyncio.wait_for(
                        transport.run(hostcommands.cleanup(plan, keep, self.options.docker_timeout)), bound)
                except asyncio.TimeoutError:
                    raise HostError(transport.label, f"cleanup did not finish within {bound} s; "
                                                     f"container {plan.container} may remain") from None
                if result.exit_status != 0:
                    raise HostError(transport.label, f"could not remove the job directory {plan.job_dir}: "
                                                     f"{result.stderr.decode(errors='replace').strip()}")
            try:
                await self._on_all_hosts(leftovers, clean)
            except FleetError as exc:
                self.console.notice(f"cleanup incomplete: {exc.message}")
        finally:
            await asyncio.gather(*(s.close() for s in self.sessions), return_exceptions=True)
            for lines in self._lines:
                lines.flush()
            for log in self._logs:
                log.close()
            await asyncio.gather(*(t.close() for t in self.transports), return_exceptions=True)

    # -- the record -----------------------------------------------------------------------
    def _finish(self, outcomes: list[HostOutcome], error: FleetError | None) -> FleetError | None:
        status = "Completed"
        if isinstance(error, JobStopped):
            status = "Stopped"
        elif error is not None:
            status = "Failed"
        message = None
        try:
            message = exit_message([(o.algo, o.message) for o in outcomes if o.message is not None])
        except ClientError as exc:
            if error is None:
                error, status = exc, "Failed"
        self.record.update(
            ProcessingJobStatus=status,
            FailureReason=error.failure_reason if error is not None and status == "Failed" else None,
            ExitMessage=message,
            ProcessingEndTime=now(),
            Hosts=self._hosts_with({o.algo: o.exit_code for o in outcomes}),
            Transfers=self.data.record(),
        )
        return error
