"""One host's session across a lost SSH connection (Instance): reconnect, resume at the last
log byte received, give up after host_timeout; no resume before the container started. A
ScriptedTransport (fleet.transport.scripted) stands in for SSH."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO, StringIO

import pytest

from fleet import host as scripts
from fleet.contract.job import parse_job
from fleet.errors import HostError, HostLost
from fleet.host import Status
from fleet.inventory import SshHost
from fleet.plan import plan_cluster
from fleet.runtime.console import Console
from fleet.runtime.instance import Instance
from fleet.runtime.store import RunOptions
from fleet.transport.scripted import ALWAYS, Handler, ScriptedCommand, ScriptedTransport

LABEL = "algo-1 (h1.lab)"


class KeptBytes(BytesIO):
    """The stored log: what was written stays readable after the instance closes it."""

    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


def _plan():
    host = SshHost(address="h1.lab", name="h1", workdir="/srv/zq")
    job = parse_job({"ProcessingJobName": "zq-job", "ProcessingResources": {"ClusterConfig": {
        "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "zq:1"}}, "job.json")
    return plan_cluster(job, [host], ["10.0.0.1"], stop_grace=30, region="us-east-1",
                        account="000000000000", run_id="zq0run").hosts[0]


class Session:
    """An Instance on a ScriptedTransport, planned, with its stored log and notices."""

    def __init__(self, handler: Handler, host_timeout: float = 5) -> None:
        self.plan = _plan()
        self.transport = ScriptedTransport(SshHost(address="h1.lab"), LABEL, handler)
        self.log = KeptBytes()
        self.err = StringIO()
        self.instance = Instance("algo-1", self.plan.host, self.transport,
                                 RunOptions(docker_timeout=7, host_timeout=host_timeout),
                                 Console(BytesIO(), self.err))
        self.instance.planned(self.plan, self.log)

    @property
    def stored(self) -> bytes:
        return self.log.getvalue() if not self.log.closed else self.log.kept

    @property
    def notices(self) -> list[str]:
        return self.err.getvalue().splitlines()


@asynccontextmanager
async def opened(session: Session) -> AsyncIterator[Instance]:
    async with asyncio.TaskGroup() as tasks, session.instance as instance:
        await instance.connect()  # as JobExecution does first: the transport starts unconnected
        await instance.open(tasks, 1)
        yield instance


def scripted(*answers: Handler) -> Handler:
    """A handler answering the n-th command with the n-th handler."""
    pending = list(answers)

    async def handler(command: ScriptedCommand) -> int:
        return await pending.pop(0)(command)
    return handler


async def test_a_lost_connection_is_resumed_at_the_last_byte_received():
    async def first(command: ScriptedCommand) -> int:
        assert command.script == "fleet-session"
        command.write_stderr(b"fleet:prepared\nfleet:started\n")
        command.write_stdout(b"line 1\nline 2\npart")
        command.write_stderr(b"fleet:mess")  # half a line: dropped with the lost session
        command.transport.fail_connects(2)
        command.transport.cut()
        return 0

    async def second(command: ScriptedCommand) -> int:
        assert command.script == "fleet-resume"
        command.write_stdout(b"ial\nline 3\n")
        command.write_stderr(b"fleet:started\nfleet:exit-code:4\nfleet:exited\n")
        return 0

    session = Session(scripted(first, second))
    async with opened(session) as instance:
        code, message = await instance.exited()
        assert (code, message) == (4, None)
        assert session.stored == b"line 1\nline 2\npartial\nline 3\n"  # nothing lost, nothing twice
        transport = session.transport
        assert transport.started[1] == scripts.resume(session.plan, len(b"line 1\nline 2\npart"), 7)
        # connects: the first connection, then three attempts after the cut (two refused)
        assert transport.reconnects == 3 and transport.connects == 4 and len(instance.reconnects) == 1
        assert "mess" not in instance.report.errors
        assert session.notices[-1].startswith(f"fleet: {LABEL}: reconnected after ")


async def test_a_channel_closed_without_exit_status_is_resumed_too():
    async def first(command: ScriptedCommand) -> int:
        command.write_stderr(b"fleet:prepared\nfleet:started\n")
        command.write_stdout(b"abc")
        command.lose("sshd went away", raising=False)
        return 0

    async def second(command: ScriptedCommand) -> int:
        command.write_stdout(b"def\n")
        command.write_stderr(b"fleet:started\nfleet:exit-code:0\nfleet:exited\n")
        return 0

    session = Session(scripted(first, second))
    async with opened(session) as instance:
        assert await instance.exited() == (0, None)
        assert session.stored == b"abcdef\n"
        assert session.transport.started[1] == scripts.resume(session.plan, 3, 7)


async def test_a_host_out_of_reach_past_host_timeout_is_lost():
    async def first(command: ScriptedCommand) -> int:
        command.write_stderr(b"fleet:prepared\nfleet:started\n")
        command.write_stdout(b"line 1\n")
        command.transport.fail_connects(ALWAYS)
        command.transport.cut()
        return 0

    session = Session(scripted(first), host_timeout=0.6)
    async with opened(session) as instance:
        with pytest.raises(HostLost) as lost:
            await instance.exited()
        assert lost.value.failure_reason.startswith("InternalServerError: lost contact with algo-1 (h1.lab) for ")
        assert len(session.transport.started) == 1 and session.transport.reconnects >= 2
        assert session.stored == b"line 1\n"


@pytest.mark.parametrize("raising", [True, False], ids=["reads-fail", "channel-closes"])
async def test_a_connection_lost_before_the_container_started_is_not_resumed(raising):
    async def first(command: ScriptedCommand) -> int:
        command.write_stderr(b"fleet:prepared\n")
        await command.read_stdin()  # the job's files, then nothing until the channel goes
        return 0

    session = Session(scripted(first))
    async with opened(session) as instance:
        await instance.prepared("zq:1")
        session.transport.cut(raising=raising)
        with pytest.raises(HostError, match="lost the SSH connection" if raising else "the SSH connection closed"):
            await instance.exited()
        assert session.transport.reconnects == 0 and len(session.transport.started) == 1


async def test_a_session_that_ends_with_a_status_is_not_resumed():
    async def first(command: ScriptedCommand) -> int:
        command.write_stderr(b"fleet:prepared\nfleet:started\ndocker: wait failed\n")
        return Status.WAIT_FAILED

    session = Session(scripted(first))
    async with opened(session) as instance:
        with pytest.raises(HostError, match="lost track of the container"):
            await instance.exited()
        assert session.transport.reconnects == 0


async def test_a_container_taken_over_that_never_started_is_reported_so():
    async def resume(command: ScriptedCommand) -> int:
        assert command.script == "fleet-resume"
        return Status.NOT_STARTED

    session = Session(scripted(resume))
    async with asyncio.TaskGroup() as tasks, session.instance as instance:
        instance.resume(tasks, 0)
        with pytest.raises(HostError, match="was never started"):
            await instance.exited()
        assert session.transport.started == [scripts.resume(session.plan, 0, 7)]


async def test_the_scripted_transport_runs_no_command_before_it_connects_as_ssh():
    """As SSHTransport: a command before connect() fails "not connected", so a unit test
    catches code that forgets to connect (Instance.clean_up once ran one on a take-over's
    never-connected transport); after a cut the next command connects again."""
    async def answer(command: ScriptedCommand) -> int:
        command.write_stdout(b"ok\n")
        return 0
    transport = ScriptedTransport(SshHost(address="h1.lab"), LABEL, answer)
    with pytest.raises(HostError, match="not connected"):
        await transport.run(["true"])
    with pytest.raises(HostError, match="not connected"):
        await transport.start(["true"])
    assert not transport.connected and transport.commands == []
    await transport.connect()
    assert (await transport.run(["true"])).stdout == b"ok\n"
    transport.cut()
    assert (await transport.run(["true"])).stdout == b"ok\n" and transport.connects == 2
    await transport.close()
    with pytest.raises(HostError, match="not connected"):
        await transport.run(["true"])
