"""fleet serve's operations on a real store, without hosts and without HTTP: validation and
error codes, the record as Describe answers it, List's filters and paging, the logs as
events with CloudWatch's tokens, jobs waiting for hosts and their stop."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.inventory import parse_inventory
from fleet.runtime.store import JobStore, RunOptions
from fleet.serve.auth import CONTROLLER
from fleet.serve.errors import ServiceError
from fleet.serve.logs.shapes import LOG_GROUP
from fleet.serve.scheduler import STOP_ASKED, Scheduler
from fleet.serve.services import Services


def request(name: str, count: int = 1, **fields) -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": count, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}, **fields}


@pytest.fixture
def api(tmp_path: Path) -> Services:
    inventory = parse_inventory({"hosts": [{"address": "h1"}, {"address": "h2"}, {"address": "h3"}]}, "hosts.yaml")
    store = JobStore(tmp_path / "home")
    return Services(store, Scheduler(store, inventory, RunOptions()), "us-east-1", "000000000000")


async def error_of(call) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        await call
    return raised.value


async def test_create_validates_as_fleet_run_and_names_the_field(api):
    error = await error_of(api.sagemaker.create(request("zq-a", count=4), CONTROLLER))
    assert (error.code, error.status) == ("ValidationException", 400)
    assert "InstanceCount: 4 instances asked for; the inventory has 3 host(s)" in error.message
    error = await error_of(api.sagemaker.create({**request("zq-b"), "Unknown": 1}, CONTROLLER))
    assert error.code == "ValidationException" and "Unknown" in error.message
    error = await error_of(api.sagemaker.create(request("zq-c", AppSpecification={"ImageUri": "UPPER/case"}),
                                                CONTROLLER))
    assert error.code == "ValidationException" and "AppSpecification.ImageUri" in error.message
    arn = (await api.sagemaker.create(request("zq-d"), CONTROLLER))["ProcessingJobArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:000000000000:processing-job/zq-d"
    error = await error_of(api.sagemaker.create(request("zq-d"), CONTROLLER))
    assert error.code == "ResourceInUse"
    assert not (api.store.job_dir("zq-a")).exists()  # nothing recorded for a refused request


async def test_describe_answers_the_record_with_epoch_times_and_unknown_jobs_are_not_found(api):
    await api.sagemaker.create(request("zq-a"), CONTROLLER)
    described = await api.sagemaker.describe({"ProcessingJobName": "zq-a"}, CONTROLLER)
    assert described["ProcessingJobStatus"] == "InProgress" and described["SecondaryStatus"] == "Starting"
    assert isinstance(described["CreationTime"], float)
    assert (await error_of(api.sagemaker.describe({"ProcessingJobName": "zq-none"}, CONTROLLER))).code == \
        "ResourceNotFound"
    assert (await error_of(api.sagemaker.describe({"ProcessingJobName": "../x"}, CONTROLLER))).code == \
        "ValidationException"


async def test_a_waiting_job_stops_at_once_and_a_running_one_says_stopping(api):
    await api.sagemaker.create(request("zq-wait"), CONTROLLER)
    await api.sagemaker.stop({"ProcessingJobName": "zq-wait"}, CONTROLLER)
    assert (await api.sagemaker.describe({"ProcessingJobName": "zq-wait"}, CONTROLLER))["ProcessingJobStatus"] == \
        "Stopped"
    assert (await error_of(api.sagemaker.stop({"ProcessingJobName": "zq-wait"}, CONTROLLER))).code == \
        "ValidationException"
    await api.sagemaker.create(request("zq-run"), CONTROLLER)
    (api.store.job_dir("zq-run") / STOP_ASKED).touch()  # as Scheduler.stop leaves it for a running job
    assert (await api.sagemaker.describe({"ProcessingJobName": "zq-run"}, CONTROLLER))["ProcessingJobStatus"] == \
        "Stopping"


async def test_a_failed_containers_message_is_in_the_failure_reason_the_sdk_shows(api):
    await api.sagemaker.create(request("zq-f"), CONTROLLER)
    record = api.store.record("zq-f")
    record.update(ProcessingJobStatus="Failed", ExitMessage="disk quota exceeded in /opt/ml",
                  FailureReason="AlgorithmError: algo-1 exited with code 3. See job logs for more information")
    described = await api.sagemaker.describe({"ProcessingJobName": "zq-f"}, CONTROLLER)
    assert described["FailureReason"] == ("AlgorithmError: algo-1 exited with code 3. See job logs for more "
                                          "information. ExitMessage: disk quota exceeded in /opt/ml")


async def test_jobs_wait_first_come_first_served_for_free_hosts(api):
    scheduler = api.scheduler
    await api.sagemaker.create(request("zq-1", count=2), CONTROLLER)
    await api.sagemaker.create(request("zq-2", count=2), CONTROLLER)
    await api.sagemaker.create(request("zq-3", count=1), CONTROLLER)
    # zq-1 runs on h1, h2 (as `place` would record it, without starting a process here)
    from fleet.plan import record_hosts
    from fleet.runtime.store import RunRecord
    hosts = scheduler.inventory.hosts[:2]
    record = api.store.record("zq-1")
    record.save_run(RunRecord(RunId="r", Controller="c", Request=request("zq-1", count=2), Hosts=hosts))
    record.update(Hosts=record_hosts(hosts), SecondaryStatus=None)
    assert [h.label for h in scheduler.free_hosts()] == ["h3"]
    # zq-2 needs 2: it waits, and zq-3 (1 host, later) does not jump the queue
    assert [r.ProcessingJobName for r in scheduler.waiting()] == ["zq-2", "zq-3"]


async def test_list_filters_sorts_and_pages(api):
    for name in ("zq-b", "zq-a", "zq-c"):
        await api.sagemaker.create(request(name), CONTROLLER)
    page = await api.sagemaker.list_jobs({"SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 2}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in page["ProcessingJobSummaries"]] == ["zq-a", "zq-b"]
    rest = await api.sagemaker.list_jobs({"SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 2,
                                "NextToken": page["NextToken"]}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in rest["ProcessingJobSummaries"]] == ["zq-c"] and "NextToken" not in rest
    newest = await api.sagemaker.list_jobs({}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in newest["ProcessingJobSummaries"]] == ["zq-c", "zq-a", "zq-b"]
    named = await api.sagemaker.list_jobs({"NameContains": "-b"}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in named["ProcessingJobSummaries"]] == ["zq-b"]
    assert (await api.sagemaker.list_jobs({"StatusEquals": "Completed"}, CONTROLLER))["ProcessingJobSummaries"] == []
    assert (await error_of(api.sagemaker.list_jobs({"NextToken": "garbage"}, CONTROLLER))).code == "ValidationException"
    assert (await error_of(api.sagemaker.list_jobs({"MaxResults": 0}, CONTROLLER))).code == "ValidationException"


async def test_a_hosts_log_is_events_a_line_each_paged_with_cloudwatch_tokens(api):
    await api.sagemaker.create(request("zq-log", count=2), CONTROLLER)
    record = api.store.record("zq-log")
    record.update(Hosts={"algo-1": {"Name": "h1"}, "algo-2": {"Name": "h2"}},
                  ProcessingStartTime="2026-11-29T10:00:00+00:00")
    path = api.store.log_path("zq-log", "algo-1")
    path.write_bytes(b"one\ntwo \xff\nthree\nunfinish")
    streams = await api.logs.describe_log_streams({"logGroupName": LOG_GROUP, "logStreamNamePrefix": "zq-log/"},
                                                  CONTROLLER)
    names = [s["logStreamName"] for s in streams["logStreams"]]
    assert len(names) == 1 and names[0].startswith("zq-log/algo-1-")  # algo-2 has no event yet
    first = await api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": names[0], "limit": 2,
                                      "startFromHead": True}, CONTROLLER)
    assert [e["message"] for e in first["events"]] == ["one", "two \ufffd"]
    assert first["events"][0]["timestamp"] == int(datetime(2026, 11, 29, 10, tzinfo=UTC).timestamp() * 1000)
    rest = await api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": names[0],
                                     "nextToken": first["nextForwardToken"]}, CONTROLLER)
    assert [e["message"] for e in rest["events"]] == ["three"]  # the unfinished line waits for its end
    with path.open("ab") as file:
        file.write(b"ed\n")
    last = await api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": names[0],
                                     "nextToken": rest["nextForwardToken"]}, CONTROLLER)
    assert [e["message"] for e in last["events"]] == ["unfinished"]
    end = await api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": names[0],
                                    "nextToken": last["nextForwardToken"]}, CONTROLLER)
    assert end["events"] == [] and end["nextForwardToken"] == last["nextForwardToken"]
    assert (await error_of(api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": names[0],
                                               "nextToken": "f/-1"}, CONTROLLER))).code == "ValidationException"
    assert (await error_of(api.logs.get_log_events({"logGroupName": "/x", "logStreamName": names[0]},
                                                   CONTROLLER))).code == \
        "ResourceNotFoundException"
    assert json.dumps(first)  # JSON as the wire carries it


async def test_a_scheduling_round_that_fails_is_logged_and_the_next_one_runs(api, monkeypatch, caplog):
    import asyncio
    import errno

    from fleet.serve import scheduler as scheduling

    monkeypatch.setattr(scheduling, "RETRY_AFTER", 0.01, raising=False)
    rounds = []

    async def place():
        rounds.append(1)
        if len(rounds) == 1:
            raise OSError(errno.EMFILE, "Too many open files")  # descriptors ran out for one round

    monkeypatch.setattr(api.scheduler, "place", place)
    running = asyncio.create_task(api.scheduler.run())
    try:
        while len(rounds) < 3:
            await asyncio.sleep(0.01)
            assert not running.done()
    finally:
        running.cancel()
    assert "a scheduling round failed" in caplog.text
