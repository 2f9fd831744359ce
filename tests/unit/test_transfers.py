"""The job's final upload: one host's failure cancels the other hosts' uploads at once (they
do not run on while the cleanup begins)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from fleet.contract.job import parse_job
from fleet.errors import ClientError
from fleet.inventory import SshHost
from fleet.plan import plan_cluster
from fleet.runtime.console import Console
from fleet.runtime.transfers import JobData
from fleet.transport.scripted import ScriptedCommand, ScriptedTransport


def _job(target: Path):
    return parse_job({
        "ProcessingJobName": "uploads",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 2, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox"},
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
            "S3Uri": f"file://{target}", "LocalPath": "/opt/ml/processing/out", "S3UploadMode": "EndOfJob"}}]},
    }, "job.json")


async def test_a_failed_upload_cancels_the_other_hosts_uploads(tmp_path: Path):
    job = _job(tmp_path / "out")
    hosts = [SshHost(address=f"10.0.0.{k}") for k in (1, 2)]
    plan = plan_cluster(job, hosts, ["10.0.0.1", "10.0.0.2"], stop_grace=1, region="r", account="1")
    abandoned = asyncio.Event()

    async def failing(command: ScriptedCommand) -> int:
        command.write_stderr(b"tar: .: Cannot open: Permission denied\n")
        return 2

    async def endless(command: ScriptedCommand) -> int:
        # An archive that never ends (a host that hangs): only the controller closing the
        # channel ends it.
        while not command.closed:  # noqa: ASYNC110 (a fake host polling its own channel)
            await asyncio.sleep(0.01)
        abandoned.set()
        return -1

    transports = [ScriptedTransport(hosts[0], "algo-1 (10.0.0.1)", failing),
                  ScriptedTransport(hosts[1], "algo-2 (10.0.0.2)", endless)]
    for transport in transports:
        await transport.connect()
    data = JobData(job, Console(out=io.BytesIO(), err=io.StringIO()))
    try:
        async with asyncio.timeout(10):  # a hang fails the test instead of stalling it
            with pytest.raises(ClientError, match="reading output out on algo-1 .*Permission denied"):
                await data.upload(list(zip(plan.hosts, transports)), completed=True)
            # Cancelled, not left to run: algo-2's channel was closed by the time upload raised.
            await asyncio.wait_for(abandoned.wait(), 1)
    finally:
        for transport in transports:
            await transport.close()
    assert [t.started[0][3] for t in transports] == ["fleet-archive", "fleet-archive"]
