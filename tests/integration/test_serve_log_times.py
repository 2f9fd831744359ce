"""The logs of `fleet serve` jobs timed per line, through real clients on the test bed: boto3's
GetLogEvents windows a job's lines by their arrival times (startTime, endTime, startFromHead,
the last page by default), and the real `aws logs tail --follow /aws/sagemaker/ProcessingJobs
--log-stream-name-prefix JOB` (FilterLogEvents) shows the lines of every host while the job
runs, each once, and `aws logs tail` without --follow all of them once it has ended.

`aws logs tail` is an AWS CLI v2 command, and PyPI's awscli is v1: the v2 here is Debian's
(package awscli, 2.x in sid), which scripts/setup installs in the engines' sid chroot
(/var/cache/fleet/engines-sid). It runs through `chroot`, which keeps the network namespace, so
the server on 127.0.0.1 answers it; its HOME is a directory made for the test under the
chroot's /tmp and removed after, its config and credentials files /dev/null.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_serve_api import GROUP, KEY, SECRET, _request, served

from conftest import make_job

pytestmark = pytest.mark.integration


def test_get_log_events_windows_a_jobs_lines_by_their_arrival_times(fleet, cluster):
    with served(fleet) as server:
        job = _request(make_job("echo one; sleep 2; echo two; sleep 2; echo three", count=1))
        name = job["ProcessingJobName"]
        server.client("sagemaker").create_processing_job(**job)
        described = server.wait(name)
        assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
        logs = server.client("logs")
        stream = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["logStreams"][0]
        events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream["logStreamName"],
                                     startFromHead=True)["events"]
        assert [e["message"] for e in events] == ["one", "two", "three"]
        one, two, three = (e["timestamp"] for e in events)
        started = described["ProcessingStartTime"].timestamp() * 1000
        ended = described["ProcessingEndTime"].timestamp() * 1000
        # each line's own time, 2 s apart as printed (not the job's start for all, as before)
        assert started - 1000 <= one < two < three <= ended + 1000
        assert two - one >= 1000 and three - two >= 1000
        assert (stream["firstEventTimestamp"], stream["lastEventTimestamp"]) == (one, three)

        def messages(**window) -> list[str]:
            return [e["message"] for e in logs.get_log_events(
                logGroupName=GROUP, logStreamName=stream["logStreamName"], **window)["events"]]
        assert messages(startFromHead=True, startTime=two) == ["two", "three"]
        assert messages(startFromHead=True, endTime=two) == ["one"]  # endTime excludes
        assert messages(startFromHead=True, startTime=two, endTime=three) == ["two"]
        assert messages(limit=1) == ["three"]  # without startFromHead: the last page
        assert messages(startFromHead=True, limit=1) == ["one"]

        aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
        if aws is not None:  # the v1 CLI's filter-log-events, a time window and a term
            result = subprocess.run([aws, "logs", "filter-log-events", "--log-group-name", GROUP,
                                     "--log-stream-name-prefix", name, "--start-time", str(two),
                                     "--filter-pattern", "?three ?one ?two"],
                                    capture_output=True, text=True, env=server.env, timeout=60)
            assert result.returncode == 0, result.stderr
            assert [e["message"] for e in json.loads(result.stdout)["events"]] == ["two", "three"]


ENGINES = Path("/var/cache/fleet/engines-sid")  # scripts/setup's engines' chroot, with awscli
SHORT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (tick-\d+) on (algo-\d+)$")  # --format short


@contextmanager
def aws_v2(server):
    """A function running Debian's AWS CLI v2 in the engines' chroot against `server`
    (argv after `aws`; Popen keyword arguments), with a HOME of its own there."""
    chroot = shutil.which("chroot")
    if chroot is None or not (ENGINES / "usr/bin/aws").is_file() or not (ENGINES / "tmp").is_dir():
        pytest.skip(f"no AWS CLI v2 in {ENGINES} (scripts/setup installs Debian's awscli there)")
    home = Path(tempfile.mkdtemp(prefix="fleet-aws-", dir=ENGINES / "tmp"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": f"/tmp/{home.name}", "LC_ALL": "C.UTF-8",
           "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": server.url, "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_PAGER": "",
           "PYTHONUNBUFFERED": "1"}  # each line as the CLI writes it, though stdout is a pipe

    def aws(*argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([chroot, str(ENGINES), "aws", *argv], env=env, text=True, **kwargs)
    try:
        yield aws
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _text(file) -> str:
    file.seek(0)
    return file.read()


def _by_host(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """--format short lines (`TIME tick-N on algo-K`): (time, tick) per host, in order shown."""
    hosts: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in lines:
        match = SHORT.match(line)
        assert match, f"not a line of the job: {line!r}"
        hosts[match[3]].append((match[1], match[2]))
    return hosts


def test_aws_logs_tail_follows_every_hosts_lines_while_the_job_runs(fleet, cluster):
    ticks = [f"tick-{i}" for i in range(1, 13)]
    with served(fleet) as server, aws_v2(server) as aws:
        job = _request(make_job(f'for i in {" ".join(t.split("-")[1] for t in ticks)}; do '
                                'echo "tick-$i on $(hostname)"; sleep 1; done',
                                count=2, name=f"tail-{uuid.uuid4().hex[:8]}"))
        name = job["ProcessingJobName"]
        sm = server.client("sagemaker")
        arrived: list[tuple[float, str]] = []  # (monotonic time, line) as the tail printed them
        errors = open(fleet.tmp / f"{name}.tail.err", "w+")  # noqa: SIM115 (closed below)
        tail = aws("logs", "tail", "--follow", GROUP, "--log-stream-name-prefix", name, "--format", "short",
                   stdout=subprocess.PIPE, stderr=errors)

        def read() -> None:
            assert tail.stdout is not None
            for line in tail.stdout:
                arrived.append((time.monotonic(), line.rstrip("\n")))
        reader = threading.Thread(target=read)
        reader.start()
        try:
            sm.create_processing_job(**job)
            running_at = 0.0  # the latest moment the job was seen not to have ended yet
            while True:
                asked = time.monotonic()
                described = sm.describe_processing_job(ProcessingJobName=name)
                if described["ProcessingJobStatus"] in ("Completed", "Failed", "Stopped"):
                    break
                assert described["ProcessingJobStatus"] == "InProgress", described
                running_at = asked
                assert tail.poll() is None, _text(errors)
                time.sleep(0.2)
            assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
            deadline = time.monotonic() + 30  # the tail polls every 5 s: the last lines come after
            while len(arrived) < 2 * len(ticks) and time.monotonic() < deadline and tail.poll() is None:
                time.sleep(0.2)
            assert tail.poll() is None, _text(errors)  # --follow: still following
        finally:
            tail.send_signal(signal.SIGINT)  # as Control-C stops it
            try:
                tail.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tail.kill()
                tail.wait(timeout=30)
            reader.join(timeout=30)
            errors.close()
        hosts = _by_host([line for _, line in arrived])
        assert sorted(hosts) == ["algo-1", "algo-2"]
        started = described["ProcessingStartTime"].astimezone(UTC).replace(microsecond=0, tzinfo=None)
        ended = described["ProcessingEndTime"].astimezone(UTC).replace(tzinfo=None)
        for host, shown in hosts.items():
            assert [tick for _, tick in shown] == ticks, host  # every line, once, in order
            times = [datetime.fromisoformat(t) for t, _ in shown]
            assert times == sorted(times), host  # in time order
            assert started - timedelta(seconds=1) <= times[0] < times[-1] <= ended + timedelta(seconds=1), host
            # some of each host's lines were shown while the job still ran
            assert any(at < running_at and f" on {host}" in line for at, line in arrived), (host, arrived)

        # without --follow, over the ended job: all its lines, once, and the command ends
        done = aws("logs", "tail", GROUP, "--log-stream-name-prefix", name, "--format", "short", "--since", "1h",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = done.communicate(timeout=120)
        assert done.returncode == 0, err
        assert _by_host(out.splitlines()) == hosts  # the same lines with the same times
