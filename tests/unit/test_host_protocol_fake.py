"""The scenario table of the host protocol (hostprotocol.scenarios) against the fake host:
JobExecution as `fleet run` makes it, each host a FakeHost. The same table runs against the
real session on the test bed (tests/integration/test_host_protocol_real.py): what the user sees
must be the same."""

from __future__ import annotations

import asyncio
from io import BytesIO, StringIO

import pytest

from fleet.contract.describe import new_record
from fleet.contract.job import parse_job
from fleet.inventory import SshHost
from fleet.plan import job_arn, record_hosts
from fleet.runtime import instance
from fleet.runtime.console import Console
from fleet.runtime.executor import JobExecution
from fleet.runtime.store import JobStore, RunOptions, RunRecord
from fleet.transport.scripted import ALWAYS

from hostprotocol.fakehost import Container, FakeHost
from hostprotocol.scenarios import SCENARIOS, Program, Scenario

NAME = "protocol-job"
SCALE = 0.1  # the fake's containers run 10 times faster than the bed's


def container(program: Program, grace: int) -> Container:
    """The Program as the fake host's container."""
    lines = [f"{line}\n".encode() for line in program.lines]
    return Container(lines, exit_code=program.exit_code,
                     message=program.message.encode() if program.message is not None else None,
                     runs_for=3600 if program.runs else program.pause * SCALE * len(lines),
                     exits_on_stop=program.on_sigint is not None,
                     stop_log=f"{program.on_sigint}\n".encode() if program.on_sigint else b"", stop_code=0,
                     grace=grace)


class FakeBed:
    """The scenario's job on two FakeHosts, run in this process."""

    def __init__(self, tmp_path, scenario: Scenario) -> None:
        self.scenario = scenario
        self.fakes = [FakeHost(container(program, scenario.stop_grace)) for program in scenario.programs]
        for fake in self.fakes:
            fake.holds_image = True  # as the bed's hosts hold fleet-test:busybox: present beats pull
        job = parse_job({"ProcessingJobName": NAME,
                         "ProcessingResources": {"ClusterConfig": {
                             "InstanceCount": 2, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
                         "AppSpecification": {"ImageUri": "fleet-test:busybox"}}, "job.json")
        self.hosts = [SshHost(address=f"h{k}.lab", name=f"h{k}", ip=f"10.0.0.{k}", workdir="/srv/fleet")
                      for k in (1, 2)]
        self.store = JobStore(tmp_path)
        self.record = self.store.create(new_record(job, job_arn(job, "us-east-1", "000000000000"),
                                                   record_hosts(self.hosts)))
        options = RunOptions(stop_grace=scenario.stop_grace, docker_timeout=scenario.docker_timeout, host_timeout=30)
        self.run = RunRecord.new(job, self.hosts, options, run_id="proto0run", controller="ctl:/fleet")
        self.record.save_run(self.run)
        self.err = StringIO()
        self.exit: int | None = None
        self.execution = self._execution()

    def _execution(self) -> JobExecution:
        self.err = StringIO()
        fakes = dict(zip((h.name for h in self.hosts), self.fakes))
        return JobExecution(self.run, self.record, Console(BytesIO(), self.err),
                            transports=lambda host, label: fakes[host.name].transport(host, label))

    def log(self, k: int) -> bytes:
        path = self.store.log_path(NAME, f"algo-{k}")
        return path.read_bytes() if path.exists() else b""

    async def _until(self, condition) -> None:
        """Until `condition()`: the stored log and the fake's state, looked at as the bed's are."""
        while not condition():  # noqa: ASYNC110 (files and a fake's fields: nothing to wait on)
            await asyncio.sleep(0.01)

    async def play(self) -> None:
        job = asyncio.create_task(self.execution.execute())
        for step in self.scenario.steps:
            if step == "running":
                await self._until(lambda: all(self.log(k).startswith(f"{p.first}\n".encode())
                                              for k, p in enumerate(self.scenario.programs, start=1)))
            elif step == "stop":
                self.execution.request_stop()
            elif step == "stop-again":
                await asyncio.gather(*(fake.got("docker stop") for fake in self.fakes))
                self.execution.request_stop()
            elif step == "cut-1":
                self.fakes[0].cut(refuse=1)
            elif step == "freeze-2":
                self.fakes[1].freeze_engine()
            elif step == "prepared-1":
                await self.fakes[0].got("created")
            elif step == "controller-dies":
                # The process is gone: its connections close (the hosts' sessions read EOF)
                # and nothing of it runs again; no host lets it back in meanwhile.
                for fake in self.fakes:
                    for transport in fake.transports:
                        transport.fail_connects(ALWAYS)
                        transport.cut()
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
                await self._until(lambda: self.fakes[0].directory == "removed")
                assert self.fakes[0].container == "removed"  # algo-1 aborted: nothing left there
            else:
                raise AssertionError(f"unknown step {step}")
        if not job.done() or not job.cancelled():
            error = await job
            self.exit = error.exit_code if error is not None else 0
        for step in self.scenario.after:
            if step == "thaw-2":
                self.fakes[1].thaw_engine()
            elif step == "attach":  # as `fleet attach`: the record's start time, fresh connections
                self.execution = self._execution()
                error = await self.execution.execute(
                    take_over=True, started=self.store.load(NAME).ProcessingStartTime)
                self.exit = error.exit_code if error is not None else 0
            elif step == "gc":
                pass  # the fake keeps no leftovers past the test
            else:
                raise AssertionError(f"unknown step {step}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
async def test_the_fake_host_plays_the_scenario_as_the_real_session_does(tmp_path, scenario, monkeypatch):
    # A stop's bound is its grace + --docker-timeout + this margin (10 s): 1 s here, for speed.
    monkeypatch.setattr(instance, "STOP_MARGIN", 1)
    bed = FakeBed(tmp_path, scenario)
    async with asyncio.timeout(60):
        await bed.play()
    assert bed.exit is not None
    scenario.seen.check(bed.store.load(NAME).stored(), bed.exit, [bed.log(1), bed.log(2)], bed.err.getvalue())
