"""fleet serve's queue on a real store (issue 19, points 6 and 7): a scheduling round reads
only the records that changed, List stays a page of cached summaries at 10,000 jobs, and a
take-over that keeps failing is tried a bounded number of times, further apart each time,
before the job ends Failed with the reason. Costs are counted (record reads), never timed."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.inventory import parse_inventory
from fleet.plan import record_hosts
from fleet.runtime.store import JobStore, RunOptions, RunRecord
from fleet.serve.auth import CONTROLLER
from fleet.serve.scheduler import Scheduler
from fleet.serve.services import Services

SETTLED = 1.1  # seconds after which a record written by the test is trusted by its stat alone


def _job(name: str) -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}}


@pytest.fixture
def api(tmp_path: Path) -> Services:
    inventory = parse_inventory({"hosts": [{"address": "h1"}]}, "hosts.yaml")
    store = JobStore(tmp_path / "home")
    return Services(store, Scheduler(store, inventory, RunOptions()), "us-east-1", "000000000000")


def _waiting_jobs(api: Services, count: int) -> list[str]:
    """`count` jobs as CreateProcessingJob records them (waiting for hosts), created a second
    apart in CreationTime; their names."""
    template = {key: value for key, value in api.store.load("zq-template").stored().items()
                if key not in ("ProcessingEndTime",)}
    start = datetime(2099, 1, 1, tzinfo=UTC)  # after the template
    names = []
    for i in range(count):
        name = f"zq-{i:05}"
        api.store.create({**template, "ProcessingJobName": name, "ProcessingJobStatus": "InProgress",
                          "SecondaryStatus": "Starting",
                          "ProcessingJobArn": template["ProcessingJobArn"].replace("zq-template", name),
                          "CreationTime": (start + timedelta(seconds=i)).isoformat()})
        (api.store.job_dir(name) / "request.json").write_text(json.dumps(_job(name)))
        names.append(name)
    return names


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every describe.json opened for reading, by anyone in this process."""
    opened: list[str] = []
    real = io.open

    def counting(file, mode="r", *args, **kwargs):
        if str(file).endswith("describe.json") and "r" in mode:
            opened.append(str(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    return opened


async def _template(api: Services) -> None:
    await api.sagemaker.create(_job("zq-template"), CONTROLLER)
    await api.sagemaker.stop({"ProcessingJobName": "zq-template"}, CONTROLLER)  # ended: not in the queue


# --- 6. the queue ---


async def test_a_scheduling_round_reads_only_the_records_that_changed_of_3000_waiting_jobs(api, reads):
    await _template(api)
    store, scheduler = api.store, api.scheduler
    busy = "zq-busy"  # holds the only host (its owner: this process), so the 3,000 wait
    await api.sagemaker.create(_job(busy), CONTROLLER)
    record = store.record(busy)
    record.save_run(RunRecord(RunId="r", Controller="c", Request=_job(busy), Hosts=scheduler.inventory.hosts))
    record.update(Hosts=record_hosts(scheduler.inventory.hosts), SecondaryStatus=None)
    ownership = store.claim(busy)
    try:
        names = _waiting_jobs(api, 3000)
        scheduler = Scheduler(store, scheduler.inventory, RunOptions())  # a `fleet serve` started on them
        await asyncio.sleep(SETTLED)
        reads.clear()
        await scheduler.place()
        assert len(reads) <= 3002  # the first look reads the store once
        assert [r.ProcessingJobName for r in scheduler.waiting()][:2] == names[:2]
        for _ in range(3):
            reads.clear()
            await scheduler.place()
            assert reads == []  # nothing changed: nothing read (each of 3,001 records was, before)
        store.record(names[5]).update(ProcessingJobStatus="Stopped")  # as `fleet stop` would, from outside
        reads.clear()
        await scheduler.place()
        assert [Path(p).parent.name for p in reads] == [names[5]]
        assert names[5] not in [r.ProcessingJobName for r in scheduler.waiting()]
        assert scheduler.queued() == 2999
        assert not scheduler.workers  # nothing placed, nothing taken over
    finally:
        ownership.release()


async def test_list_over_10000_records_answers_the_right_page_reading_only_changed_records(api, reads):
    await _template(api)
    names = _waiting_jobs(api, 10_000)
    await asyncio.sleep(SETTLED)
    reads.clear()
    first = await api.sagemaker.list_jobs({"MaxResults": 100}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in first["ProcessingJobSummaries"]] == names[::-1][:100]
    assert len(reads) <= 10_001
    reads.clear()
    second = await api.sagemaker.list_jobs({"MaxResults": 100, "NextToken": first["NextToken"]}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in second["ProcessingJobSummaries"]] == names[::-1][100:200]
    assert reads == []  # 10,000 records were read and parsed for each page, before
    named = await api.sagemaker.list_jobs({"NameContains": "zq-0123", "SortBy": "Name", "SortOrder": "Ascending"},
                                          CONTROLLER)
    assert [s["ProcessingJobName"] for s in named["ProcessingJobSummaries"]] == names[1230:1240]
    api.store.record(names[42]).update(ProcessingJobStatus="Completed")
    reads.clear()
    done = await api.sagemaker.list_jobs({"StatusEquals": "Completed"}, CONTROLLER)
    assert [s["ProcessingJobName"] for s in done["ProcessingJobSummaries"]] == [names[42]]
    assert [Path(p).parent.name for p in reads] == [names[42]]
    assert "Environment" not in json.dumps(done)


# --- 7. a take-over that keeps failing ---


async def test_a_take_over_that_always_fails_is_tried_5_times_further_apart_then_the_job_fails(api, monkeypatch):
    """The job's run.json was written by a newer fleet (a field this one does not know): each
    real `fleet attach` exits without ending the job. Rounds run on a clock the test moves a
    second a round; the attempts are counted."""
    store, scheduler = api.store, api.scheduler
    name = "zq-newer"
    await api.sagemaker.create(_job(name), CONTROLLER)
    record = store.record(name)
    record.save_run(RunRecord(RunId="r", Controller="c", Request=_job(name), Hosts=scheduler.inventory.hosts))
    run = json.loads((store.job_dir(name) / "run.json").read_text())
    (store.job_dir(name) / "run.json").write_text(json.dumps({**run, "Checkpoint": {"step": 7}}))
    record.update(Hosts=record_hosts(scheduler.inventory.hosts), SecondaryStatus=None)
    now = [0.0]
    scheduler.clock = lambda: now[0]
    attempts: list[float] = []
    spawn = scheduler._spawn

    async def spawning(verb: str, job: str):
        attempts.append(now[0])
        return await spawn(verb, job)

    monkeypatch.setattr(scheduler, "_spawn", spawning)
    while now[0] < 40 and len(attempts) <= 8 and store.load(name).ProcessingJobStatus == "InProgress":
        await scheduler.place()
        for worker in list(scheduler.workers.values()):
            await worker.wait()
        scheduler._reap()
        now[0] += 1

    assert attempts == [0, 1, 3, 7, 15]  # gaps of 1, 2, 4, 8 rounds (every round, before: without end)
    ended = store.load(name).stored()
    assert ended["ProcessingJobStatus"] == "Failed"
    assert ended["FailureReason"].startswith("InternalServerError: fleet serve could not take the job over "
                                             "(5 attempts of `fleet attach`")
    assert "is not a run record fleet can read" in ended["FailureReason"]  # what `fleet attach` said
    await scheduler.place()
    assert not scheduler.workers and scheduler.free_hosts() == scheduler.inventory.hosts
