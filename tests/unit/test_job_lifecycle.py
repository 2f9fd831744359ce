"""The whole lifecycle of a job (JobExecution) against fake hosts that play fleet's host
scripts (tests/hostprotocol: FakeHost): for each kind of end, the final record, the
error `fleet run` would exit with, the stored logs byte for byte, and what each host was
asked to do."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from io import BytesIO, StringIO

import pytest

from fleet.contract.describe import new_record
from fleet.contract.job import parse_job
from fleet.errors import FleetError
from fleet.host import Status
from fleet.inventory import SshHost
from fleet.plan import container_name, job_arn, record_hosts
from fleet.runtime.console import Console
from fleet.runtime.executor import JobExecution
from fleet.runtime.store import JobStore, RunOptions, RunRecord
from fleet.transport.scripted import ALWAYS

from hostprotocol.fakehost import Container, FakeHost

NAME = "lc-job"
RUN_ID = "lc0run"


class Run:
    """One run of a job named lc-job on hosts h1..hN (algo-1..algo-N), as `fleet run` makes it
    (cli._run), each host a FakeHost."""

    def __init__(self, tmp_path, fakes: list[FakeHost], *, max_runtime: int | None = None,
                 host_timeout: float = 5, stop_grace: int = 30, keep: bool = False) -> None:
        document = {"ProcessingJobName": NAME,
                    "ProcessingResources": {"ClusterConfig": {
                        "InstanceCount": len(fakes), "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
                    "AppSpecification": {"ImageUri": "zq:1"}}
        if max_runtime is not None:
            document["StoppingCondition"] = {"MaxRuntimeInSeconds": max_runtime}
        job = parse_job(document, "job.json")
        self.hosts = [SshHost(address=f"h{k}.lab", name=f"h{k}", ip=f"10.0.0.{k}", workdir="/srv/fleet")
                      for k in range(1, len(fakes) + 1)]
        self.fakes = dict(zip((h.name for h in self.hosts), fakes))
        self.store = JobStore(tmp_path)
        self.record = self.store.create(new_record(job, job_arn(job, "us-east-1", "000000000000"),
                                                   record_hosts(self.hosts)))
        options = RunOptions(stop_grace=stop_grace, keep=keep, docker_timeout=7, host_timeout=host_timeout)
        self.run = RunRecord.new(job, self.hosts, options, run_id=RUN_ID, controller="ctl:/fleet")
        self.record.save_run(self.run)
        self.out, self.err = BytesIO(), StringIO()
        self.execution = self.new_execution()

    def new_execution(self) -> JobExecution:
        return JobExecution(self.run, self.record, Console(self.out, self.err),
                            transports=lambda host, label: self.fakes[host.name].transport(host, label))

    async def __call__(self, **kwargs) -> FleetError | None:
        async with asyncio.timeout(10):
            return await self.execution.execute(**kwargs)

    @property
    def described(self) -> dict:
        return self.store.load(NAME).stored()

    def log(self, k: int) -> bytes:
        path = self.store.log_path(NAME, f"algo-{k}")
        return path.read_bytes() if path.exists() else b""

    def exit_codes(self) -> list[int | None]:
        hosts = self.described["Hosts"]
        return [hosts[f"algo-{k}"].get("ExitCode") for k in range(1, len(self.fakes) + 1)]


def logs_of(k: int, lines: int = 3) -> list[bytes]:
    """algo-k's container log, in chunks; the last line unterminated."""
    return [f"algo-{k} line {i}\n".encode() for i in range(lines)] + [f"algo-{k} end".encode()]


def ran_to_its_end(fake: FakeHost) -> None:
    """A host whose session did everything: went, cleaned up itself."""
    assert fake.commands == ["fleet-session"]
    assert fake.answers == ["go", "clean"]
    assert (fake.container, fake.directory) == ("removed", "removed")


# -- success -----------------------------------------------------------------------------------

async def test_three_hosts_complete_with_every_log_byte_stored(tmp_path):
    fakes = [FakeHost(Container(logs_of(k), runs_for=0.05 * k, message=b"done on 1" if k == 1 else None))
             for k in (1, 2, 3)]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is None
    described = run.described
    assert described["ProcessingJobStatus"] == "Completed"
    assert "FailureReason" not in described
    assert described["ExitMessage"] == "done on 1"
    assert run.exit_codes() == [0, 0, 0]
    assert "ProcessingStartTime" in described and "ProcessingEndTime" in described
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == fake.spec.full_log
        ran_to_its_end(fake)
        assert fake.transports[0].connects == 1
    assert b"[algo-2] algo-2 line 1\n" in run.out.getvalue()
    assert b"[algo-3] algo-3 end\n" in run.out.getvalue()  # the unterminated last line, flushed


# -- a failing container -----------------------------------------------------------------------

async def test_a_failing_container_fails_the_job_and_the_others_are_stopped(tmp_path):
    long = dict(runs_for=30, stop_log=b"got SIGINT\n", stop_code=0)
    fakes = [FakeHost(Container([b"one\n"], **long)),
             FakeHost(Container([b"two\n", b"oops\n"], runs_for=0.1, exit_code=3)),
             FakeHost(Container([b"three\n"], **long))]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 1
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == ("AlgorithmError: algo-2 exited with code 3. "
                                          "See job logs for more information")
    assert run.exit_codes() == [0, 3, 0]
    assert [run.log(k) for k in (1, 2, 3)] == [b"one\ngot SIGINT\n", b"two\noops\n", b"three\ngot SIGINT\n"]
    ran_to_its_end(fakes[1])
    for fake in (fakes[0], fakes[2]):
        assert fake.commands == ["fleet-session", "docker stop"]
        assert fake.answers == ["go", "clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")
    assert "AlgorithmError: algo-2 exited with code 3" in run.err.getvalue()


# -- stop ----------------------------------------------------------------------------------------

async def test_a_stop_request_stops_every_container_and_the_job_is_stopped(tmp_path):
    fakes = [FakeHost(Container([b"working\n"], runs_for=30, stop_log=b"bye\n")) for _ in range(3)]
    run = Run(tmp_path, fakes)
    job = asyncio.create_task(run())
    await asyncio.gather(*(fake.running() for fake in fakes))
    run.execution.request_stop()
    error = await job
    assert error is not None and error.exit_code == 130
    described = run.described
    assert described["ProcessingJobStatus"] == "Stopped"
    assert "FailureReason" not in described
    assert run.exit_codes() == [130, 130, 130]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b"working\nbye\n"
        assert fake.commands == ["fleet-session", "docker stop"]
        assert fake.answers == ["go", "clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")


async def test_a_second_stop_request_kills_the_containers(tmp_path):
    # The containers ignore SIGINT: `docker stop` would wait out the grace (30 s).
    fakes = [FakeHost(Container([b"stubborn\n"], runs_for=60, exits_on_stop=False)) for _ in range(2)]
    run = Run(tmp_path, fakes)
    job = asyncio.create_task(run())
    await asyncio.gather(*(fake.running() for fake in fakes))
    run.execution.request_stop()
    await asyncio.gather(*(fake.got("docker stop") for fake in fakes))
    run.execution.request_stop()
    error = await job
    assert error is not None and error.exit_code == 130
    assert run.described["ProcessingJobStatus"] == "Stopped"
    assert run.exit_codes() == [137, 137]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b"stubborn\n"
        assert fake.commands == ["fleet-session", "docker stop", "docker kill"]
        assert fake.answers == ["go", "clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")
    assert "second interrupt: killing the containers now" in run.err.getvalue()


async def test_a_stop_before_the_containers_start_starts_nothing(tmp_path):
    fakes = [FakeHost(Container([b"never\n"])) for _ in range(2)]
    run = Run(tmp_path, fakes)
    run.execution.request_stop()
    error = await run()
    assert error is not None and error.exit_code == 130
    assert run.described["ProcessingJobStatus"] == "Stopped"
    assert run.exit_codes() == [None, None]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b""
        assert "go" not in fake.answers
        assert fake.container in (None, "removed")


# -- MaxRuntimeInSeconds -----------------------------------------------------------------------

async def test_max_runtime_stops_every_container_and_fails_the_job(tmp_path):
    fakes = [FakeHost(Container([b"slow\n", b"never written\n"], runs_for=20, stop_log=b"stopped\n"))
             for _ in range(2)]
    run = Run(tmp_path, fakes, max_runtime=1)
    error = await run()
    assert error is not None and error.exit_code == 124
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == ("MaxRuntimeExceeded: Job exceeded MaxRuntimeInSeconds (1 s); "
                                          "the containers were stopped")
    assert run.exit_codes() == [130, 130]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b"slow\nstopped\n"
        assert fake.commands == ["fleet-session", "docker stop"]
        assert fake.answers == ["go", "clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")


# -- preparation ----------------------------------------------------------------------------------

async def test_a_host_failing_preparation_starts_nothing_anywhere(tmp_path):
    fakes = [FakeHost(Container([b"never\n"])),
             FakeHost(fail_preparation=Status.PULL_FAILED, said=b"dial tcp 10.0.0.9:443: connect: connection "
                                                                b"refused\n"),
             FakeHost(Container([b"never\n"]))]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 75  # the machinery's: the registry out of reach
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == ("ClientError: algo-2 (h2, h2.lab): cannot pull image zq:1: "
                                          "dial tcp 10.0.0.9:443: connect: connection refused")
    assert "ProcessingStartTime" not in described
    assert run.exit_codes() == [None, None, None]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b""
        assert "go" not in fake.answers
        assert fake.container in (None, "removed")
        assert fake.directory == "removed"
    for fake in (fakes[0], fakes[2]):
        assert fake.answers == ["abort"]
        assert fake.commands == ["fleet-session", "fleet-cleanup"]
    assert fakes[1].answers == []
    assert fakes[1].commands == ["fleet-session", "fleet-cleanup"]


@pytest.mark.parametrize("said", [
    b"Error response from daemon: Get \"http://r.lab/v2/zq/manifests/1\": no basic auth credentials\n",
    b"Error response from daemon: manifest for zq:1 not found: manifest unknown: manifest unknown\n",
    b"Error: initializing source docker://r.lab/zq:1: reading manifest 1 in r.lab/zq: unauthorized\n",
])
async def test_a_registry_refusing_a_hosts_pull_fails_the_job_as_the_users_exit_1(tmp_path, said):
    # A scheduler requeuing on 75 could never fix a refused pull: it is the user's failure.
    fakes = [FakeHost(Container([b"never\n"])), FakeHost(fail_preparation=Status.PULL_FAILED, said=said)]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 1
    assert run.described["ProcessingJobStatus"] == "Failed"
    assert run.described["FailureReason"] == ("ClientError: algo-2 (h2, h2.lab): cannot pull image zq:1: "
                                              + said.decode().strip())
    assert all("go" not in fake.answers for fake in fakes)


@pytest.mark.parametrize("status, said, reason", [
    (Status.NO_SPACE, b"1024\n", "not enough free space in /srv/fleet: the job's VolumeSizeInGB needs 1.0 GiB, "
                                 "0.0 GiB free"),
    (Status.DOCKER_TIMEOUT, b"", "docker did not answer within 7 s"),
])
async def test_a_host_error_in_preparation_is_a_client_error_naming_the_host(tmp_path, status, said, reason):
    fakes = [FakeHost(Container()), FakeHost(fail_preparation=status, said=said)]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 75  # the machinery's
    assert run.described["ProcessingJobStatus"] == "Failed"
    assert run.described["FailureReason"] == f"ClientError: algo-2 (h2, h2.lab): {reason}"
    assert fakes[0].answers == ["abort"]
    assert all("go" not in fake.answers for fake in fakes)


# -- reaching the hosts --------------------------------------------------------------------------

async def test_two_unreachable_hosts_fail_the_job_in_one_message_naming_both(tmp_path):
    fakes = [FakeHost(unreachable=True), FakeHost(Container()), FakeHost(unreachable=True)]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 75  # the machinery's
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == ("ClientError: algo-1 (h1, h1.lab): connection refused on port 22\n"
                                          "algo-3 (h3, h3.lab): connection refused on port 22")
    for fake in fakes:
        assert fake.commands == []  # nothing runs anywhere before every host is reached
        assert fake.container is None
    assert [run.log(k) for k in (1, 2, 3)] == [b"", b"", b""]


async def test_a_host_lost_past_the_host_timeout_fails_the_job_and_the_others_are_stopped(tmp_path):
    log = [b"before\n", b"after the cut\n"]
    fakes = [FakeHost(Container([b"fine\n"], runs_for=30, stop_log=b"stopped\n")),
             FakeHost(Container(log, runs_for=30), cut_at=len(b"before\n"), refuse_after_cut=ALWAYS)]
    run = Run(tmp_path, fakes, host_timeout=0.5)
    error = await run()
    assert error is not None and error.exit_code == 75  # the machinery's
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"].startswith("InternalServerError: lost contact with algo-2 (h2.lab) for ")
    assert run.exit_codes() == [130, None]
    assert run.log(1) == b"fine\nstopped\n"
    assert run.log(2) == b"before\n"
    assert fakes[0].commands == ["fleet-session", "docker stop"]
    assert fakes[0].answers == ["go", "clean"]
    lost = fakes[1]
    assert lost.commands == ["fleet-session"]  # nothing else ever got through
    assert lost.transports[0].connects >= 2  # reconnecting was tried, more than once
    assert lost.container == "running"  # for `fleet gc`: the host is out of reach
    assert "cleanup incomplete" in run.err.getvalue()


async def test_a_lost_connection_is_resumed_at_the_last_byte_stored(tmp_path):
    log = [b"one\n", b"tw", b"o\nthree\n", b"end"]
    cut = len(b"one\ntw")
    fakes = [FakeHost(Container(log, runs_for=0.2), cut_at=cut, refuse_after_cut=1),
             FakeHost(Container([b"other\n"], runs_for=0.2))]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is None
    assert run.described["ProcessingJobStatus"] == "Completed"
    assert run.exit_codes() == [0, 0]
    assert run.log(1) == b"one\ntwo\nthree\nend"  # every byte, once
    assert run.log(2) == b"other\n"
    resumed = fakes[0]
    assert resumed.commands == ["fleet-session", "fleet-resume"]
    assert resumed.resumed_at == [cut]
    assert resumed.answers == ["go", "clean"]
    assert (resumed.container, resumed.directory) == ("removed", "removed")
    assert resumed.transports[0].cuts == 1 and resumed.transports[0].connects == 3  # connect, refused, back
    assert len(run.execution.instances[0].reconnects) == 1
    assert "algo-1 (h1, h1.lab): reconnected after " in run.err.getvalue()
    ran_to_its_end(fakes[1])


# -- take-over -------------------------------------------------------------------------------------

async def test_a_started_job_is_taken_over_from_the_stored_log(tmp_path):
    # Another fleet process started the containers 2 s ago, stored part of their logs, and died.
    fakes = [FakeHost(Container([b"a1\n", b"a2\n", b"a3\n"], runs_for=2.2)),
             FakeHost(Container([b"b1\n", b"b2\n"], runs_for=2.1, exit_code=0, message=b"from 2"))]
    run = Run(tmp_path, fakes)
    stored = [b"a1\n", b"b"]
    for k, (fake, part) in enumerate(zip(fakes, stored), start=1):
        fake.started_container(container_name(NAME, f"algo-{k}"), RUN_ID, ago=2.0)
        run.store.log_path(NAME, f"algo-{k}").write_bytes(part)
    started = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    run.record.update(ProcessingStartTime=started)
    error = await run(take_over=True, started=started)
    assert error is None
    described = run.described
    assert described["ProcessingJobStatus"] == "Completed"
    assert described["ExitMessage"] == "from 2"
    assert run.exit_codes() == [0, 0]
    assert run.log(1) == b"a1\na2\na3\n"
    assert run.log(2) == b"b1\nb2\n"
    for fake, part in zip(fakes, stored):
        assert fake.commands == ["fleet-resume"]
        assert fake.resumed_at == [len(part)]
        assert fake.answers == ["clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")


async def test_a_job_taken_over_whose_container_is_gone_uses_the_recorded_exit_code(tmp_path):
    fakes = [FakeHost(Container([b"x\n"]))]
    run = Run(tmp_path, fakes)
    run.record.update(Hosts={"algo-1": {**run.described["Hosts"]["algo-1"], "ExitCode": 0}})
    started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    error = await run(take_over=True, started=started)
    assert error is None
    assert run.described["ProcessingJobStatus"] == "Completed"
    assert run.exit_codes() == [0]
    assert fakes[0].commands == ["fleet-resume", "fleet-cleanup"]
    assert fakes[0].resumed_at == [0]


async def test_a_job_taken_over_before_its_containers_started_fails_and_cleans_up(tmp_path):
    fakes = [FakeHost(Container()), FakeHost(Container())]
    run = Run(tmp_path, fakes)
    error = await run(take_over=True, started=None)
    assert error is not None and error.exit_code == 1
    described = run.described
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == ("InternalServerError: the fleet process running the job ended "
                                          "before its containers started")
    for fake in fakes:
        assert fake.commands == ["fleet-cleanup"]


async def test_fleet_stop_of_a_job_without_its_fleet_process_stops_it_at_the_hosts(tmp_path):
    # `fleet stop` when the `fleet run` is gone: a take-over asked to stop at once.
    fakes = [FakeHost(Container([b"up\n"], runs_for=30, stop_log=b"down\n")) for _ in range(2)]
    run = Run(tmp_path, fakes)
    for k, fake in enumerate(fakes, start=1):
        fake.started_container(container_name(NAME, f"algo-{k}"), RUN_ID, ago=1.0)
    started = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    run.execution.request_stop()
    error = await run(take_over=True, started=started)
    assert error is not None and error.exit_code == 130
    assert run.described["ProcessingJobStatus"] == "Stopped"
    assert run.exit_codes() == [130, 130]
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b"up\ndown\n"
        assert fake.resumed_at == [0]
        assert sorted(fake.commands) == ["docker stop", "fleet-resume"]  # in either order
        assert fake.answers == ["clean"]
        assert (fake.container, fake.directory) == ("removed", "removed")


async def test_a_stop_reaches_a_host_being_reconnected_to_once_it_is_back(tmp_path):
    fakes = [FakeHost(Container([b"a\n", b"b\n"], runs_for=30, stop_log=b"stopped\n"),
                      cut_at=len(b"a\n"), refuse_after_cut=2),
             FakeHost(Container([b"c\n"], runs_for=30, stop_log=b"stopped\n"))]
    run = Run(tmp_path, fakes)
    job = asyncio.create_task(run())
    await asyncio.gather(*(fake.running() for fake in fakes))
    await fakes[0].got("cut")
    run.execution.request_stop()  # while algo-1 is out of reach
    error = await job
    assert error is not None and error.exit_code == 130
    assert run.described["ProcessingJobStatus"] == "Stopped"
    assert run.exit_codes() == [130, 130]
    assert run.log(1) == b"a\nstopped\n"
    assert run.log(2) == b"c\nstopped\n"
    back = fakes[0]
    assert "docker stop" in back.commands and "fleet-resume" in back.commands
    assert back.resumed_at == [len(b"a\n")]
    assert back.answers == ["go", "clean"]
    assert (back.container, back.directory) == ("removed", "removed")
    assert fakes[1].commands == ["fleet-session", "docker stop"]


async def test_keep_leaves_the_job_directories_but_no_container(tmp_path):
    fakes = [FakeHost(Container([b"kept\n"])) for _ in range(2)]
    run = Run(tmp_path, fakes, keep=True)
    assert await run() is None
    assert run.described["ProcessingJobStatus"] == "Completed"
    for k, fake in enumerate(fakes, start=1):
        assert run.log(k) == b"kept\n"
        assert fake.commands == ["fleet-session"]
        assert fake.answers == ["go", "keep"]
        assert (fake.container, fake.directory) == ("removed", "written")


async def test_a_job_taken_over_past_its_max_runtime_is_stopped_at_once(tmp_path):
    fakes = [FakeHost(Container([b"late\n"], runs_for=30, stop_log=b"stopped\n"))]
    run = Run(tmp_path, fakes, max_runtime=1)
    fakes[0].started_container(container_name(NAME, "algo-1"), RUN_ID, ago=5.0)
    started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    error = await run(take_over=True, started=started)
    assert error is not None and error.exit_code == 124
    assert run.described["ProcessingJobStatus"] == "Failed"
    assert run.described["FailureReason"].startswith("MaxRuntimeExceeded: Job exceeded MaxRuntimeInSeconds (1 s)")
    assert run.log(1) == b"late\nstopped\n"
    assert sorted(fakes[0].commands) == ["docker stop", "fleet-resume"]


# -- the image ------------------------------------------------------------------------------------

async def test_every_host_is_told_how_to_get_the_image_and_the_record_names_the_one_it_ran(tmp_path):
    fakes = [FakeHost(Container([b"ok\n"])), FakeHost(Container([b"ok\n"]))]
    run = Run(tmp_path, fakes)
    assert await run() is None
    for fake in fakes:  # no registry reachable (unit tests): pulled as named, without credentials
        assert fake.image_step == ("pull", "zq:1") and fake.received_auth == b""
    described = run.described
    assert described["AppSpecification"] == {"ImageUri": "zq:1", "ImageDigest": fakes[0].image_id}
    assert described["Image"]["Hosts"]["algo-2"] == {"Delivery": "pulled", "ImageId": fakes[0].image_id,
                                                     "BytesSent": 0}


async def test_hosts_with_different_images_for_the_uri_start_nothing(tmp_path):
    fakes = [FakeHost(Container([b"never\n"])) for _ in range(3)]
    fakes[2].image_id = "sha256:" + "0" * 64  # an older build under the same tag
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 1
    reason = run.described["FailureReason"]
    assert reason.startswith("ClientError: the hosts do not have the same image zq:1: ")
    assert f"algo-1 {fakes[0].image_id}" in reason and f"algo-3 {'sha256:' + '0' * 64}" in reason
    for fake in fakes:
        assert "go" not in fake.answers and fake.container in (None, "removed") and fake.directory == "removed"


async def test_the_registry_refusing_the_controller_is_one_error_naming_the_hosts(tmp_path, monkeypatch):
    from fleet.errors import ClientError
    from fleet.image import supply

    async def refused(reference):
        raise ClientError(f"ECR GetAuthorizationToken for {reference.registry} (image {reference}): "
                          f"AccessDeniedException: not authorized")
    monkeypatch.setattr(supply, "credentials_for", refused)
    fakes = [FakeHost(Container([b"never\n"])), FakeHost(Container([b"never\n"]))]
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None and error.exit_code == 1
    assert run.described["FailureReason"] == (
        "ClientError: algo-1 (h1, h1.lab), algo-2 (h2, h2.lab) have no image zq:1 and must pull it, but: "
        "ECR GetAuthorizationToken for docker.io (image zq:1): AccessDeniedException: not authorized")
    for fake in fakes:  # each was asked for the image by name first; none pulled
        assert fake.tried == "zq:1" and fake.image_step is None
        assert "go" not in fake.answers and fake.directory == "removed"


async def test_hosts_holding_the_image_by_name_use_it_and_no_credentials_are_asked(tmp_path, monkeypatch):
    from fleet.image import supply

    async def never(reference):
        raise AssertionError("credentials asked although every host holds the image")
    monkeypatch.setattr(supply, "credentials_for", never)
    fakes = [FakeHost(Container([b"ok\n"])) for _ in range(3)]
    for fake in fakes:
        fake.holds_image = True
    run = Run(tmp_path, fakes)
    assert await run() is None
    for fake in fakes:
        assert fake.image_step == ("use", "zq:1") and fake.received_auth == b""
    assert run.described["Image"]["Hosts"]["algo-3"]["Delivery"] == "present"


async def test_a_host_lacking_the_image_when_no_credentials_can_be_had_is_named_with_both_facts(tmp_path,
                                                                                                 monkeypatch):
    from fleet.errors import ClientError
    from fleet.image import supply

    async def unreachable(reference):
        raise ClientError(f"ECR GetAuthorizationToken for {reference.registry}: Could not connect to the "
                          f"endpoint URL")
    monkeypatch.setattr(supply, "credentials_for", unreachable)
    fakes = [FakeHost(Container([b"never\n"])) for _ in range(3)]
    fakes[0].holds_image = fakes[2].holds_image = True
    run = Run(tmp_path, fakes)
    error = await run()
    assert error is not None
    assert run.described["FailureReason"] == (
        "ClientError: algo-2 (h2, h2.lab) has no image zq:1 and must pull it, but: ECR GetAuthorizationToken "
        "for docker.io: Could not connect to the endpoint URL")
    for fake in fakes:  # nothing started anywhere, nothing left
        assert "go" not in fake.answers and fake.container in (None, "removed") and fake.directory == "removed"
