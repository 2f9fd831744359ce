"""The logs of `fleet serve` jobs timed per line, through real clients on the test bed: boto3's
GetLogEvents windows a job's lines by their arrival times (startTime, endTime, startFromHead,
the last page by default), and a follower of the whole job, as `aws logs tail --follow
/aws/sagemaker/ProcessingJobs --log-stream-name-prefix JOB` follows (FilterLogEvents), sees
the lines of every host arrive while the job runs, each once.

`aws logs tail` is an AWS CLI v2 command (awscli/customizations/logs/tail.py there); the v1 CLI
installed here has no `tail`, and v2 is not on PyPI. `follow` below makes exactly the calls of
v2's FollowLogEventsGenerator (filter_log_events with interleaved, startTime ten minutes back,
the prefix; nextToken until none; then startTime = the newest timestamp seen, dropping the
eventIds seen at it), polling every 0.5 s instead of 5; the v1 CLI's `aws logs
filter-log-events` (which pages with nextToken itself) checks the finished job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from test_serve_api import GROUP, _request, served

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


def follow(logs, prefix: str, seen: list[dict], stop: threading.Event) -> None:
    """`aws logs tail --follow GROUP --log-stream-name-prefix PREFIX`'s calls (see the module)."""
    kwargs = {"logGroupName": GROUP, "interleaved": True, "logStreamNamePrefix": prefix,
              "startTime": int((time.time() - 600) * 1000)}
    ids_at: dict[int, set[str]] = defaultdict(set)
    while not stop.is_set():
        response = logs.filter_log_events(**kwargs)
        for event in response["events"]:
            if event["eventId"] not in ids_at[event["timestamp"]]:
                ids_at[event["timestamp"]].add(event["eventId"])
                seen.append(event)
        if ids_at:
            newest = max(ids_at)
            ids_at = defaultdict(set, {newest: ids_at[newest]})
        if "nextToken" in response:
            kwargs["nextToken"] = response["nextToken"]
        else:
            if ids_at:
                kwargs["startTime"] = max(ids_at)
            kwargs.pop("nextToken", None)
            stop.wait(0.5)


def test_a_follower_of_the_job_sees_every_hosts_lines_arrive_once_while_it_runs(fleet, cluster):
    with served(fleet) as server:
        job = _request(make_job('for i in 1 2 3 4 5 6 7 8 9 10; do echo "tick-$i on $(hostname)"; sleep 1; done',
                                count=2, name=f"tail-{uuid.uuid4().hex[:8]}"))
        name = job["ProcessingJobName"]
        sm, logs = server.client("sagemaker"), server.client("logs")
        seen: list[dict] = []
        statuses: dict[str, str] = {}  # the job's status when each line was first seen
        stop = threading.Event()
        follower = threading.Thread(target=follow, args=(logs, name, seen, stop))
        follower.start()
        try:
            sm.create_processing_job(**job)
            while (status := sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]) \
                    not in ("Completed", "Failed", "Stopped"):
                for event in list(seen):
                    statuses.setdefault(event["eventId"], status)
                time.sleep(0.2)
            assert status == "Completed"
            deadline = time.monotonic() + 30
            while len(seen) < 20 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            follower.join(timeout=30)
        by_stream: dict[str, list[str]] = defaultdict(list)
        for event in seen:
            by_stream[event["logStreamName"]].append(event["message"].split(" on ")[0])
        assert sorted(by_stream) == sorted(f"{name}/algo-{k}-" + s.rsplit("-", 1)[1] for k, s in
                                           zip((1, 2), sorted(by_stream), strict=True))
        for messages in by_stream.values():
            assert messages == [f"tick-{i}" for i in range(1, 11)]  # every line, once, in order
        assert [e["timestamp"] for e in seen] == sorted(e["timestamp"] for e in seen)  # interleaved by time
        first = seen[0]["eventId"]
        assert statuses.get(first) == "InProgress"  # the first line came while the job ran
