"""A host's session across a lost SSH connection: reconnect, resume at the last log byte
received, give up after host_timeout. A scripted in-memory transport stands in for SSH."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from fleet.contract.job import parse_job
from fleet.errors import HostError, HostLost
from fleet.inventory import Host
from fleet.plan import plan_cluster
from fleet.runtime import hostcommands
from fleet.runtime.session import HostSession
from fleet.transport.base import RemoteProcess, Transport


class ScriptedProcess(RemoteProcess):
    """Says its stdout and stderr, then ends: with `status`, or lost (no end seen)."""

    def __init__(self, stdout: list[bytes], stderr: list[bytes], status: int | None) -> None:
        self._stdout, self._stderr, self._status = list(stdout), list(stderr), status
        self.written = b""

    async def read_stdout(self) -> bytes:
        await asyncio.sleep(0)
        return self._stdout.pop(0) if self._stdout else b""

    async def read_stderr(self) -> bytes:
        await asyncio.sleep(0)
        return self._stderr.pop(0) if self._stderr else b""

    async def write(self, data: bytes) -> None:
        self.written += data

    def close_stdin(self) -> None:
        pass

    async def wait(self) -> int:
        return -1 if self._status is None else self._status

    def close(self) -> None:
        pass

    @property
    def lost(self) -> bool:
        return self._status is None


class ScriptedTransport(Transport):
    def __init__(self, host: Host, processes: list[ScriptedProcess], failed_reconnects: int = 0) -> None:
        super().__init__(host, "algo-1 (h1.lab)")
        self.processes = processes
        self.started: list[list[str]] = []
        self.reconnects = 0
        self.failed_reconnects = failed_reconnects

    async def connect(self) -> None:
        pass

    async def reconnect(self, timeout: float) -> None:
        self.reconnects += 1
        if self.reconnects <= self.failed_reconnects:
            raise HostError(self.label, "connection refused on port 22")

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        self.started.append(list(argv))
        return self.processes.pop(0)

    async def close(self) -> None:
        pass

    @property
    def peer_address(self) -> str:
        return "10.0.0.1"


def _plan():
    host = Host(address="h1.lab", name="h1", workdir="/srv/zq")
    job = parse_job({"ProcessingJobName": "zq-job", "ProcessingResources": {"ClusterConfig": {
        "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "zq:1"}}, "job.json")
    return plan_cluster(job, [host], ["10.0.0.1"], stop_grace=30, region="us-east-1",
                        account="000000000000", run_id="zq0run").hosts[0]


async def test_a_lost_connection_is_resumed_at_the_last_byte_received():
    first = ScriptedProcess([b"line 1\nline 2\npart"], [b"fleet:prepared\nfleet:started\nfleet:mess"], None)
    second = ScriptedProcess([b"ial\nline 3\n"], [b"fleet:started\nfleet:exit-code:4\nfleet:exited\n"], 0)
    transport = ScriptedTransport(Host(address="h1.lab"), [first, second], failed_reconnects=2)
    received = bytearray()
    notices: list[str] = []
    session = HostSession(transport, _plan(), received.extend, host_timeout=5, docker_timeout=7,
                          on_notice=notices.append)
    await session.open("zq:1", 7)
    code, message = await session.exited()
    assert (code, message) == (4, None)
    assert bytes(received) == b"line 1\nline 2\npartial\nline 3\n"  # nothing lost, nothing twice
    assert transport.started[1] == hostcommands.resume(session.plan, len(b"line 1\nline 2\npart"), 7)
    assert transport.reconnects == 3 and len(session.reconnects) == 1
    assert "mess" not in session.report.errors
    assert notices[-1].startswith("algo-1 (h1.lab): reconnected after ")
    await session.close()


async def test_a_host_out_of_reach_past_host_timeout_is_lost():
    first = ScriptedProcess([b"line 1\n"], [b"fleet:prepared\nfleet:started\n"], None)
    transport = ScriptedTransport(Host(address="h1.lab"), [first], failed_reconnects=10 ** 6)
    session = HostSession(transport, _plan(), lambda chunk: None, host_timeout=0.6, docker_timeout=7)
    await session.open("zq:1", 7)
    with pytest.raises(HostLost) as lost:
        await session.exited()
    assert lost.value.failure_reason.startswith("InternalServerError: lost contact with algo-1 (h1.lab) for ")
    assert len(transport.started) == 1 and transport.reconnects >= 2
    await session.close()


async def test_a_connection_lost_before_the_container_started_is_not_resumed():
    first = ScriptedProcess([], [b"fleet:prepared\n"], None)
    transport = ScriptedTransport(Host(address="h1.lab"), [first])
    session = HostSession(transport, _plan(), lambda chunk: None, host_timeout=5, docker_timeout=7)
    await session.open("zq:1", 7)
    await session.prepared("zq:1", 7)
    with pytest.raises(HostError, match="the SSH connection closed"):
        await session.exited()
    assert transport.reconnects == 0 and len(transport.started) == 1
    await session.close()


async def test_a_session_that_ends_with_a_status_is_not_resumed():
    first = ScriptedProcess([], [b"fleet:prepared\nfleet:started\ndocker: wait failed\n"], hostcommands.WAIT_FAILED)
    transport = ScriptedTransport(Host(address="h1.lab"), [first])
    session = HostSession(transport, _plan(), lambda chunk: None, host_timeout=5, docker_timeout=7)
    await session.open("zq:1", 7)
    with pytest.raises(HostError, match="lost track of the container"):
        await session.exited()
    assert transport.reconnects == 0
    await session.close()
