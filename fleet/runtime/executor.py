"""The lifecycle of one job: connect → prepare → start and supervise → gather → clean up.

The executor owns every task it starts. Stop (Ctrl-C, SIGTERM), MaxRuntime and a failing
container all travel one path: `_stop_all`, then the `finally` that cleans every host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, TypeVar

from fleet.contract.describe import now
from fleet.contract.job import ProcessingJob
from fleet.contract.message import exit_message
from fleet.errors import (AlgorithmError, ClientError, FleetError, HostError, JobStopped,
                          MaxRuntimeExceeded)
from fleet.inventory import Host
from fleet.plan import ClusterPlan, HostPlan, algo_names, plan_cluster
from fleet.runtime import hostcommands
from fleet.runtime.console import Console
from fleet.runtime.store import JobRecord
from fleet.transport import Transport, transport_for

T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    stop_grace: int = 30
    keep: bool = False
    docker_timeout: int = 20
    region: str = "us-east-1"
    account: str = "000000000000"


@dataclass
class HostOutcome:
    algo: str
    exit_code: int | None = None
    message: bytes = b""
    error: FleetError | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.exit_code != 0


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


def _start_error(plan: HostPlan, label: str, text: str) -> FleetError:
    if "could not select device driver" in text:
        return ClientError(
            f"{label}: Docker there cannot give the container GPUs ({text.strip()}); "
            f"install the NVIDIA Container Toolkit on that host, or remove `gpus` from its "
            f"inventory entry")
    return ClientError(f"{label}: docker could not start the container: {text.strip() or 'no reason given'}")


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
        self.connected: list[Transport] = []
        self.plan: ClusterPlan | None = None
        self.stop_requested = asyncio.Event()
        self.kill_requested = asyncio.Event()
        self._helpers: set[asyncio.Task] = set()

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
    async def execute(self) -> FleetError | None:
        """Run the job to a terminal status, write the final record, return why it did not
        complete (None when Completed)."""
        outcomes: list[HostOutcome] = []
        error: FleetError | None = None
        try:
            await self._unless_stopped(self._connect_all())
            addresses = [h.ip or t.peer_address for h, t in zip(self.hosts, self.transports)]
            self.plan = plan_cluster(self.job, self.hosts, addresses, stop_grace=self.options.stop_grace,
                                     region=self.options.region, account=self.options.account)
            await self._unless_stopped(self._prepare_all())
            outcomes, error = await self._supervise()
        except FleetError as exc:
            error = exc
        finally:
            await asyncio.shield(self._cleanup_all())
        return self._finish(outcomes, error)

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """Await `work`, abandoning it (and raising JobStopped) if a stop comes first."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise JobStopped("stopped before the containers started")
        return task.result()

    async def _on_all_hosts(self, transports: list[Transport], action) -> None:
        """Run `action(index, transport)` on the hosts in parallel; raise one error naming
        every host that failed."""
        results = await asyncio.gather(*(action(i, t) for i, t in transports), return_exceptions=True)
        errors = []
        for result in results:
            if isinstance(result, FleetError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            raise _combined(errors)

    async def _connect_all(self) -> None:
        async def connect(index: int, transport: Transport) -> None:
            await transport.connect()
            self.connected.append(transport)
        await self._on_all_hosts(list(enumerate(self.transports)), connect)

    async def _prepare_all(self) -> None:
        assert self.plan is not None
        image = self.job.AppSpecification.ImageUri

        async def prepare(index: int, transport: Transport) -> None:
            plan = self.plan.hosts[index]
            result = await transport.run(hostcommands.prepare(plan, image, self.options.docker_timeout),
                                         stdin=hostcommands.job_dir_tar(plan))
            said = result.stderr.decode(errors="replace").strip()
            status = result.exit_status
            if status == 0:
                return
            if status == hostcommands.DOCKER_TIMEOUT:
                raise HostError(transport.label, f"docker did not answer within {self.options.docker_timeout} s")
            if status == hostcommands.DOCKER_MISSING:
                raise HostError(transport.label, f"docker command not found ({plan.host.docker!r}): {said}")
            if status == hostcommands.DOCKER_FAILED:
                raise HostError(transport.label, f"docker is not answering: {said}")
            if status == hostcommands.PULL_FAILED:
                raise ClientError(f"{transport.label}: cannot pull image {image}: {said}")
            if status == hostcommands.WRITE_FAILED:
                raise HostError(transport.label, f"cannot write the job directory {plan.job_dir}: {said}")
            raise HostError(transport.label, f"preparing the host failed (status {status}): {said}")
        await self._on_all_hosts(list(enumerate(self.transports)), prepare)

    async def _run_host(self, index: int) -> HostOutcome:
        assert self.plan is not None
        plan, transport = self.plan.hosts[index], self.transports[index]
        lines = self.console.host_lines(plan.algo)
        log = self.record.open_log(plan.algo)

        def on_stdout(chunk: bytes) -> None:
            log.write(chunk)  # raw, as it arrives
            lines.feed(chunk)

        try:
            result = await transport.run(hostcommands.run(plan), on_stdout=on_stdout)
        except FleetError as exc:
            return HostOutcome(plan.algo, error=exc)
        finally:
            lines.flush()
            log.close()
        report = hostcommands.parse_run_stderr(result.stderr)
        if result.exit_status == hostcommands.START_FAILED or not report.started:
            return HostOutcome(plan.algo, error=_start_error(plan, transport.label, report.errors))
        if report.exit_code is None:
            return HostOutcome(plan.algo, error=HostError(
                transport.label, f"could not read the container's exit code: {report.errors}"))
        return HostOutcome(plan.algo, report.exit_code, report.message)

    async def _supervise(self) -> tuple[list[HostOutcome], FleetError | None]:
        """Start every host's container and wait for all of them.

        The first of these ends the job early, and every other container is stopped:
        a container failing, a stop request, MaxRuntimeInSeconds.
        """
        assert self.plan is not None
        loop = asyncio.get_running_loop()
        self.record.update(ProcessingStartTime=now())
        deadline = loop.time() + self.job.max_runtime
        tasks = [asyncio.create_task(self._run_host(i)) for i in range(len(self.plan.hosts))]
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
            graceful = asyncio.create_task(self.transports[i].run(hostcommands.stop(self.plan.hosts[i])))
            killing = asyncio.create_task(self.kill_requested.wait())
            await asyncio.wait({graceful, killing, tasks[i]}, return_when=asyncio.FIRST_COMPLETED)
            if killing.done() and not tasks[i].done():
                await self.transports[i].run(hostcommands.kill(self.plan.hosts[i]))
            killing.cancel()
            await asyncio.gather(graceful, return_exceptions=True)

        await asyncio.gather(*(stop(i) for i in running), return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._helpers.add(task)

    async def _join_helpers(self) -> None:
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._helpers.clear()

    async def _cleanup_all(self) -> None:
        """Whatever happened: no container of the job remains, and the job directories go
        (unless --keep). Then the connections close."""
        try:
            if self.plan is not None and self.connected:
                async def clean(index: int, transport: Transport) -> None:
                    if transport not in self.connected:
                        return
                    result = await transport.run(hostcommands.cleanup(self.plan.hosts[index], self.options.keep))
                    if result.exit_status != 0:
                        self.console.notice(f"{transport.label}: could not remove the job directory "
                                            f"{self.plan.hosts[index].job_dir}: "
                                            f"{result.stderr.decode(errors='replace').strip()}")
                try:
                    await self._on_all_hosts(list(enumerate(self.transports)), clean)
                except FleetError as exc:
                    self.console.notice(f"cleanup incomplete: {exc.message}")
        finally:
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
            message = exit_message([(o.algo, o.message) for o in outcomes if o.exit_code is not None])
        except ClientError as exc:
            if error is None:
                error, status = exc, "Failed"
        hosts = dict(self.record.data.get("Hosts", {}))
        for outcome in outcomes:
            hosts[outcome.algo] = {**hosts.get(outcome.algo, {}), "ExitCode": outcome.exit_code}
        self.record.update(
            ProcessingJobStatus=status,
            FailureReason=error.failure_reason if error is not None and status == "Failed" else None,
            ExitMessage=message,
            ProcessingEndTime=now(),
            Hosts=hosts,
        )
        return error
