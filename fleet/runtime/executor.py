"""The lifecycle of one job, as the README's "How it works" tells it:

    connect every host (and, meanwhile, list the inputs) → plan → prepare every host (check
    docker, pull, write the job directory, create the container) while the inputs stream in
    → start every container at once → supervise (logs, exits; a failure, a stop or
    MaxRuntime stops the others) → upload the outputs → clean every host → the record.

The job holds one Instance per host (runtime/instance.py), which does the host's part of
each step. Every task belongs to the job's `asyncio.TaskGroup`, so none outlives the job;
stop (Ctrl-C, SIGTERM, `fleet stop`), MaxRuntime and a failing container all travel one
path: the supervisor stops the other containers, then the `finally` cleans every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from fleet.contract.describe import now
from fleet.contract.message import exit_message
from fleet.errors import (
    AlgorithmError,
    ClientError,
    FleetError,
    HostLost,
    InternalError,
    JobStopped,
    MaxRuntimeExceeded,
)
from fleet.fanout import all_of, first_of, on_each, task_group
from fleet.home import fleet_home
from fleet.image.supply import ImageSupply, Target
from fleet.inventory import Host
from fleet.plan import algo_names, host_labels, plan_cluster
from fleet.runtime.console import Console
from fleet.runtime.instance import HostOutcome, Instance
from fleet.runtime.store import JobRecord, RunRecord
from fleet.runtime.transfers import JobData
from fleet.transport import Transport, transport_for

log = logging.getLogger(__name__)

T = TypeVar("T")
HANDSHAKES_IN_FLIGHT = 32  # SSH handshakes at once: each costs the controller CPU (key exchange)

TransportFactory = Callable[[Host, str], Transport]


class JobExecution:
    """One run of a job, from its run record (run.json) to its final record."""

    def __init__(self, run: RunRecord, record: JobRecord, console: Console, *,
                 transports: TransportFactory = transport_for) -> None:
        self.run = run
        self.job = run.job()
        self.record = record
        self.console = console
        self.options = run.Options
        self.instances = [
            Instance(algo, host, transports(host, label), self.options, console)
            for algo, host, label in zip(algo_names(len(run.Hosts)), run.Hosts, host_labels(run.Hosts))]
        self.stop_requested = asyncio.Event()
        self.kill_requested = asyncio.Event()
        self.data = JobData(self.job, console)
        self._ending: FleetError | None = None  # why the containers are being stopped early
        self._end_early = asyncio.Event()  # set with _ending
        self.containers_started = asyncio.Event()  # every host's container has started

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
    async def execute(self, *, started: str | None = None, take_over: bool = False) -> FleetError | None:
        """Run the job to a terminal status, write the final record, return why it did not
        complete (None when Completed). With `take_over`, the job was started by another
        fleet process (its containers at ISO time `started`, or never when None): supervise
        them from where it stopped."""
        outcomes: list[HostOutcome] = []
        error: FleetError | None = None
        try:
            async with task_group() as tasks, contextlib.AsyncExitStack() as instances:
                # Leaving the stack closes every instance (its session's reader ends) before
                # the group waits for its tasks.
                for instance in self.instances:
                    await instances.enter_async_context(instance)
                try:
                    outcomes = await self._run(tasks, started, take_over)
                finally:
                    self.data.stop_opening()  # the group would wait for a listing still running
                    await self._clean_up()
        except FleetError as exc:
            error = exc
        except Exception as exc:  # a bug of fleet's: the job still ends Failed, hosts cleaned
            log.debug("the job failed unexpectedly", exc_info=exc)
            error = InternalError(exc)
        finally:
            await self.data.close()
        return self._finish(outcomes, self._ending or error)

    async def _run(self, tasks: asyncio.TaskGroup, started: str | None, take_over: bool) -> list[HostOutcome]:
        # S3 (connecting, listing the inputs) runs while the hosts are reached and prepared;
        # whichever fails first ends the other.
        self.data.start(tasks, list_inputs=not take_over)
        if take_over:  # each host's session connects itself, for up to --host-timeout;
            # a stop asked for already is carried out once the hosts are reached
            await self.data.ready()
            addresses = self.run.Addresses or [h.ip or h.address for h in self.run.Hosts]
        else:
            await self._unless_stopped(all_of(self._connect_all(), self.data.ready()))
            controller = next((i.transport.local_address for i in self.instances if i.transport.local_address), None)
            addresses = [instance.address(controller) for instance in self.instances]
            self.record.save_run(self.run.model_copy(update={"Addresses": addresses}))
        self._plan(addresses)
        if not take_over:
            await self._unless_stopped(self._prepare_all(tasks))
        elif started is None:
            raise FleetError("the fleet process running the job ended before its containers started")
        else:
            for instance in self.instances:
                instance.resume(tasks, self.record.log_size(instance.algo))
        outcomes = await self._supervise(started)
        # Outputs come from the hosts whose container ran to its end: EndOfJob ones only
        # when the job Completed, Continuous ones (a last pass) whatever the end.
        if self.job.outputs and any(instance.has("exited") for instance in self.instances):
            # A stop that already came does not prevent Continuous's last pass; another does.
            guard = self.kill_requested if self.stop_requested.is_set() else self.stop_requested
            hosts = [(i.plan, i.transport) for i in self.instances if i.has("exited") and i.plan is not None]
            await self._unless_stopped(self.data.upload(hosts, completed=self._ending is None), guard)
        return outcomes

    def _plan(self, addresses: list[str]) -> None:
        options = self.options
        plan = plan_cluster(self.job, self.run.Hosts, addresses, stop_grace=options.stop_grace,
                            region=options.region, account=options.account, run_id=self.run.RunId,
                            controller=self.run.Controller)
        for instance, host_plan in zip(self.instances, plan.hosts):
            instance.planned(host_plan, self.record.open_log(instance.algo))
        self.data.planned(plan, [instance.transport for instance in self.instances])

    async def _unless_stopped(self, work: Awaitable[T], stop: asyncio.Event | None = None) -> None:
        """Await `work`, abandoning it (and raising JobStopped) if a stop comes first."""
        if await first_of(work, (stop or self.stop_requested).wait()) == 1:
            raise JobStopped("stopped by the user")

    async def _connect_all(self) -> None:
        handshakes = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

        async def connect(instance: Instance) -> None:
            async with handshakes:
                await instance.connect()
        await on_each(self.instances, connect)

    async def _prepare_all(self, tasks: asyncio.TaskGroup) -> None:
        """Open every host's session and wait until each is checked and written.
        Any failure: every session is told to abort, and nothing starts anywhere."""
        image = self.job.AppSpecification.ImageUri
        volume = self.job.ProcessingResources.ClusterConfig.VolumeSizeInGB
        options = self.options
        supply = ImageSupply(image, self.console, docker_timeout=options.docker_timeout,
                             push_image=options.push_image, archive=options.image_archive,
                             insecure=frozenset(options.insecure_registries), spool_dir=fleet_home())
        targets = [Target(i.algo, i.label, i.host, i.transport) for i in self.instances]

        async def prepare(instance: Instance) -> None:
            await instance.open(tasks, volume)
            if await instance.written():  # the image step: present, pushed, or pull (credentials)
                step = await supply.instruction(instance.algo)
                await instance.image_step(step)
                if step.startswith(b"try "):  # present beats pull: a pull (or abort) if it lacks it
                    follow = await supply.missing(instance.algo, await instance.image_missing())
                    if follow is not None:
                        instance.pulled_as = supply.pinned
                        await instance.image_step(follow)
            else:
                await supply.missing(instance.algo, False)
            await instance.prepared(image)

        stage = self.data.stage_when_written([instance.written for instance in self.instances])
        try:
            await all_of(on_each(self.instances, prepare), stage, supply.deliver(targets))
            supply.settle({instance.algo: (instance.report.image, instance.report.image_how)
                           for instance in self.instances})
        except BaseException:
            await all_of(*(instance.abort() for instance in self.instances))
            raise
        digest, delivered = supply.record()
        self.record.update(AppSpecification={**self.record.data.get("AppSpecification", {}), "ImageDigest": digest},
                           Image=delivered)

    async def _supervise(self, started: str | None) -> list[HostOutcome]:
        """Start every host's container (unless they were `started` already, at that ISO
        time) and wait for all of them.

        The first of these ends the job early, and every other container is stopped:
        a container failing, a stop request, MaxRuntimeInSeconds.
        """
        loop = asyncio.get_running_loop()
        if started is None:
            self.record.update(ProcessingStartTime=now())
            deadline = loop.time() + self.job.max_runtime
            await all_of(*(instance.go() for instance in self.instances))
        else:
            elapsed = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
            deadline = loop.time() + self.job.max_runtime - elapsed
        outcomes: dict[str, HostOutcome] = {}
        async with task_group() as group:
            watchers = [group.create_task(self._watch(instance, outcomes), name=f"{instance.algo} exit")
                        for instance in self.instances]
            helpers = [group.create_task(self._stop_early(deadline), name="stopper"),
                       group.create_task(self.data.continuous(), name="continuous"),
                       group.create_task(self._all_started(), name="started")]
            await asyncio.wait(watchers)
            for helper in helpers:
                helper.cancel()
        return [outcomes[instance.algo] for instance in self.instances]

    async def _watch(self, instance: Instance, outcomes: dict[str, HostOutcome]) -> None:
        """One host's container to its end; a failure ends the job early."""
        try:
            code, message = await instance.exited()
        except FleetError as exc:
            # Taken over after the container was removed: its exit code was recorded.
            recorded = self.record.data.get("Hosts", {}).get(instance.algo, {}).get("ExitCode")
            if recorded is not None and not isinstance(exc, HostLost):
                outcomes[instance.algo] = HostOutcome(instance.algo, recorded)
            else:
                outcomes[instance.algo] = HostOutcome(instance.algo, error=exc)
                self._end(exc)
            return
        # Recorded at once: a fleet taking the job over later needs it if the container is gone.
        self.record.update(Hosts=hosts_with(self.record.data.get("Hosts", {}), {instance.algo: code}))
        outcomes[instance.algo] = HostOutcome(instance.algo, code, message)
        if code != 0:
            self._end(AlgorithmError(f"{instance.algo} exited with code {code}. See job logs for more information"))

    async def _all_started(self) -> None:
        """Set `containers_started` once every host's container has started (`fleet run --detach`)."""
        if all(await all_of(*(instance.started() for instance in self.instances))):
            self.containers_started.set()

    def _end(self, reason: FleetError) -> None:
        """The first reason to end the job early wins; the supervisor stops the containers."""
        if self._ending is None:
            self._ending = reason
            self._end_early.set()

    async def _stop_early(self, deadline: float) -> None:
        """Wait for a reason to end early (a failure, a stop, MaxRuntime); then stop every
        container still running. Cancelled once every container has ended."""
        try:
            async with asyncio.timeout_at(deadline):
                if await first_of(self._end_early.wait(), self.stop_requested.wait()) == 1:
                    self._end(JobStopped("stopped by the user"))
                    self.record.update(ProcessingJobStatus="Stopping")
                else:
                    assert self._ending is not None
                    self.console.notice(f"{self._ending.failure_reason}; stopping the other hosts")
        except TimeoutError:
            exceeded = MaxRuntimeExceeded(f"Job exceeded MaxRuntimeInSeconds ({self.job.max_runtime} s); "
                                          f"the containers were stopped")
            self._end(exceeded)
            self.console.notice(exceeded.failure_reason)
        running = [instance for instance in self.instances if not instance.has("exited")]
        await all_of(*(instance.stop(self.kill_requested) for instance in running))

    async def _clean_up(self) -> None:
        """Whatever happened: no container of the job remains and the job directories go
        (unless --keep), on every host that was planned; bounded (see Instance.clean_up)."""
        planned = [instance for instance in self.instances if instance.plan is not None]
        try:
            await on_each(planned, lambda instance: instance.clean_up(self.options.keep))
        except FleetError as exc:
            self.console.notice(f"cleanup incomplete: {exc.message}")

    # -- the record -----------------------------------------------------------------------
    def _finish(self, outcomes: list[HostOutcome], error: FleetError | None) -> FleetError | None:
        status, error, message = job_ending(outcomes, error)
        self.record.update(
            ProcessingJobStatus=status,
            FailureReason=error.failure_reason if error is not None and status == "Failed" else None,
            ExitMessage=message,
            ProcessingEndTime=now(),
            Hosts=hosts_with(self.record.data.get("Hosts", {}), {o.algo: o.exit_code for o in outcomes}),
            Transfers=self.data.record(),
            ExitCode=0 if error is None else error.exit_code,  # fleet's own: what `fleet wait` exits with
        )
        return error


def hosts_with(hosts: dict, codes: dict[str, int | None]) -> dict:
    """The record's Hosts with these hosts' ExitCodes."""
    hosts = dict(hosts)
    for algo, code in codes.items():
        hosts[algo] = {**hosts.get(algo, {}), "ExitCode": code}
    return hosts


def job_ending(outcomes: list[HostOutcome], error: FleetError | None) -> tuple[str, FleetError | None, str | None]:
    """The job's final status, its error (an unreadable exit message fails a job that had
    none) and its ExitMessage, from every host's outcome and why the job ended early."""
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
    return status, error, message
