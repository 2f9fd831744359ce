"""CloudWatch Logs' reads in fleet serve over a real store (no HTTP): GetLogEvents with each
line's arrival time, startFromHead, startTime/endTime and both tokens as CloudWatch pages;
FilterLogEvents interleaving the hosts' streams, its patterns and nextToken; bounded memory
on a large log."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from fleet.inventory import parse_inventory
from fleet.runtime.store import JobStore, RunOptions
from fleet.serve.auth import CONTROLLER, Principal
from fleet.serve.errors import ServiceError
from fleet.serve.logs import events as logs
from fleet.serve.logs.shapes import LOG_GROUP
from fleet.serve.scheduler import Scheduler
from fleet.serve.services import Services

T0 = 1_796_000_000_000  # ms
LATER = T0 + 3_600_000  # "now" for FilterLogEvents: every line is settled


def request(name: str, count: int = 1) -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": count, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}}


@pytest.fixture
def api(tmp_path: Path) -> Services:
    inventory = parse_inventory({"hosts": [{"address": "h1"}, {"address": "h2"}, {"address": "h3"}]}, "hosts.yaml")
    store = JobStore(tmp_path / "home")
    return Services(store, Scheduler(store, inventory, RunOptions()), "us-east-1", "000000000000")


async def job_with_lines(api: Services, name: str, lines: dict[str, list[tuple[int, bytes]]],
                         status: str = "Completed", caller: Principal = CONTROLLER) -> dict[str, str]:
    """A job whose hosts received `lines` ((ms, chunk) each) through the log file the executor
    writes (store.open_log); its streams' names by algo."""
    await api.sagemaker.create(request(name, len(lines)), caller)
    record = api.store.record(name)
    record.update(Hosts={algo: {"Name": f"h{i}"} for i, algo in enumerate(lines, 1)},
                  ProcessingStartTime="2026-11-29T10:00:00+00:00", ProcessingJobStatus=status)
    for algo, chunks in lines.items():
        log = record.open_log(algo)
        for ms, chunk in chunks:
            log._index._clock = lambda ms=ms: ms
            log.write(chunk)
        log.close()
    streams = await api.logs.describe_log_streams({"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{name}/"},
                                                  caller)
    return {s["logStreamName"].split("/")[1].rsplit("-", 1)[0]: s["logStreamName"] for s in streams["logStreams"]}


def messages(answer: dict) -> list[str]:
    return [e["message"] for e in answer["events"]]


async def get(api: Services, stream: str, **fields) -> dict:
    return await api.logs.get_log_events({"logGroupName": LOG_GROUP, "logStreamName": stream, **fields}, CONTROLLER)


async def test_events_carry_the_arrival_time_of_their_line(api):
    streams = await job_with_lines(api, "zq-times", {"algo-1": [(T0, b"a\nb\n"), (T0 + 2000, b"c\n")]})
    answer = await get(api, streams["algo-1"], startFromHead=True)
    assert [(e["message"], e["timestamp"], e["ingestionTime"]) for e in answer["events"]] == \
        [("a", T0, T0), ("b", T0, T0), ("c", T0 + 2000, T0 + 2000)]
    described = await api.logs.describe_log_streams({"logGroupName": LOG_GROUP, "logStreamNamePrefix": "zq-times/"},
                                               CONTROLLER)
    stream = described["logStreams"][0]
    assert (stream["firstEventTimestamp"], stream["lastEventTimestamp"]) == (T0, T0 + 2000)


async def test_without_start_from_head_the_last_page_comes_and_pages_go_backward(api):
    lines = [(T0 + i * 10, b"line %d\n" % i) for i in range(10)]
    stream = (await job_with_lines(api, "zq-last", {"algo-1": lines}))["algo-1"]
    last = await get(api, stream, limit=3)
    assert messages(last) == ["line 7", "line 8", "line 9"]
    before = await get(api, stream, limit=3, nextToken=last["nextBackwardToken"])
    assert messages(before) == ["line 4", "line 5", "line 6"]
    head = await get(api, stream, limit=4, nextToken=(await get(api, stream, limit=4, nextToken=(
        await get(api, stream, limit=3, nextToken=before["nextBackwardToken"]))["nextBackwardToken"]))[
        "nextBackwardToken"])
    assert head["events"] == []  # at the head: the same backward token again
    first = await get(api, stream, limit=3, startFromHead=True)
    assert messages(first) == ["line 0", "line 1", "line 2"]
    again = await get(api, stream, limit=3, startFromHead=True, nextToken=first["nextBackwardToken"])
    assert again["events"] == [] and again["nextBackwardToken"] == first["nextBackwardToken"]
    forward = await get(api, stream, startFromHead=True, nextToken=last["nextForwardToken"])
    assert forward["events"] == [] and forward["nextForwardToken"] == last["nextForwardToken"]


async def test_start_time_is_inclusive_and_end_time_exclusive(api):
    lines = [(T0, b"zero\n"), (T0 + 1000, b"one\n"), (T0 + 2000, b"two\n"), (T0 + 3000, b"three\n")]
    stream = (await job_with_lines(api, "zq-range", {"algo-1": lines}))["algo-1"]
    window = await get(api, stream, startFromHead=True, startTime=T0 + 1000, endTime=T0 + 3000)
    assert messages(window) == ["one", "two"]
    assert messages(await get(api, stream, startTime=T0 + 1000, endTime=T0 + 3000)) == ["one", "two"]
    assert messages(await get(api, stream, startFromHead=True, startTime=T0 + 1)) == ["one", "two", "three"]
    # the SDK's tailer: from the last time seen, with the token, skipping what it saw
    paged = await get(api, stream, startFromHead=True, startTime=T0 + 2000, limit=1)
    assert messages(paged) == ["two"]
    rest = await get(api, stream, startFromHead=True, startTime=T0 + 2000, nextToken=paged["nextForwardToken"])
    assert messages(rest) == ["three"]
    assert (await get(api, stream, startFromHead=True, startTime=T0 + 9000))["events"] == []
    with pytest.raises(ServiceError) as bad:
        await get(api, stream, startTime="yesterday")
    assert bad.value.code == "ValidationException" and "startTime" in bad.value.message


async def test_a_running_jobs_unfinished_line_waits_and_an_ended_jobs_is_an_event(api):
    running = (await job_with_lines(api, "zq-run", {"algo-1": [(T0, b"done\nhalf")]}, status="InProgress"))
    assert messages(await get(api, running["algo-1"], startFromHead=True)) == ["done"]
    ended = (await job_with_lines(api, "zq-end", {"algo-1": [(T0, b"done\nno newline at the end")]}))
    assert messages(await get(api, ended["algo-1"], startFromHead=True)) == ["done", "no newline at the end"]


async def filter_(api: Services, caller: Principal = CONTROLLER, now: int = LATER, **fields) -> dict:
    original = logs.filter_events

    def at_now(*args, **kwargs):
        return original(*args, **kwargs, now=now)
    logs.filter_events = at_now
    try:
        return await api.logs.filter_log_events({"logGroupName": LOG_GROUP, **fields}, caller)
    finally:
        logs.filter_events = original


async def test_filter_interleaves_the_hosts_by_time_and_pages_with_next_token(api):
    streams = await job_with_lines(api, "zq-merge", {
        "algo-1": [(T0, b"1a\n"), (T0 + 20, b"1b\n"), (T0 + 40, b"1c\n")],
        "algo-2": [(T0 + 10, b"2a\n"), (T0 + 20, b"2b\n"), (T0 + 50, b"2c\n")]})
    everything = await filter_(api, logStreamNamePrefix="zq-merge")
    assert messages(everything) == ["1a", "2a", "1b", "2b", "1c", "2c"]
    assert "nextToken" not in everything
    assert [e["logStreamName"] for e in everything["events"]][:2] == [streams["algo-1"], streams["algo-2"]]
    assert len({e["eventId"] for e in everything["events"]}) == 6
    pages, token = [], None
    while True:
        page = await filter_(api, logStreamNamePrefix="zq-merge", limit=2, **({"nextToken": token} if token else {}))
        pages.append(messages(page))
        token = page.get("nextToken")
        if token is None:
            break
    assert [m for p in pages for m in p] == messages(everything) and all(len(p) <= 2 for p in pages)
    timed = await filter_(api, logStreamNames=[streams["algo-2"]], startTime=T0 + 10, endTime=T0 + 20)
    assert messages(timed) == ["2a", "2b"]  # FilterLogEvents' endTime includes events at endTime
    # `aws logs tail --follow`: again from the newest time seen, dropping the ids it has
    again = await filter_(api, logStreamNamePrefix="zq-merge/", startTime=everything["events"][-1]["timestamp"])
    assert [e["eventId"] for e in again["events"]] == [everything["events"][-1]["eventId"]]


async def test_filter_patterns(api):
    await job_with_lines(api, "zq-pattern", {"algo-1": [(T0, b"ERROR disk full\nWARN slow disk\nINFO ok\n"
                                                             b"ERROR net down\n")]})

    async def matching(pattern: str) -> list[str]:
        return messages(await filter_(api, logStreamNamePrefix="zq-pattern", filterPattern=pattern))
    assert await matching("ERROR") == ["ERROR disk full", "ERROR net down"]
    assert await matching("ERROR disk") == ["ERROR disk full"]
    assert await matching('"slow disk"') == ["WARN slow disk"]
    assert await matching("?WARN ?INFO") == ["WARN slow disk", "INFO ok"]
    assert await matching("ERROR -disk") == ["ERROR net down"]
    assert await matching("error") == []  # case-sensitive, as CloudWatch
    assert await matching("") == ["ERROR disk full", "WARN slow disk", "INFO ok", "ERROR net down"]
    for unsupported in ('{ $.level = "ERROR" }', "[ip, user]", "%ERR.*%", '"open'):
        with pytest.raises(ServiceError) as refused:
            await filter_(api, logStreamNamePrefix="zq-pattern", filterPattern=unsupported)
        assert refused.value.code == "InvalidParameterException" and "filterPattern" in refused.value.message


async def test_filter_holds_back_lines_younger_than_a_second(api):
    await job_with_lines(api, "zq-fresh", {"algo-1": [(T0, b"old\n"), (T0 + 5000, b"fresh\n")]},
                         status="InProgress")
    assert messages(await filter_(api, logStreamNamePrefix="zq-fresh", now=T0 + 5500)) == ["old"]
    assert messages(await filter_(api, logStreamNamePrefix="zq-fresh", now=T0 + 6000)) == ["old", "fresh"]
    await job_with_lines(api, "zq-ended", {"algo-1": [(T0, b"old\n"), (T0 + 5000, b"last\n")]})
    assert messages(await filter_(api, logStreamNamePrefix="zq-ended", now=T0 + 5000)) == ["old", "last"]


async def test_filter_shows_only_the_callers_streams(api):
    alice, bob = Principal("alice"), Principal("bob")
    await job_with_lines(api, "zq-alice", {"algo-1": [(T0, b"alice's\n")]}, caller=alice)
    bobs = await job_with_lines(api, "zq-bob", {"algo-1": [(T0, b"bob's\n")]}, caller=bob)
    assert messages(await filter_(api, alice)) == ["alice's"]  # the whole group: only hers
    assert messages(await filter_(api, alice, logStreamNamePrefix="zq-")) == ["alice's"]
    assert messages(await filter_(api, alice, logStreamNames=[bobs["algo-1"]])) == []
    assert messages(await filter_(api, CONTROLLER, logStreamNamePrefix="zq-")) == ["alice's", "bob's"]
    with pytest.raises(ServiceError) as both:
        await filter_(api, alice, logStreamNamePrefix="zq-", logStreamNames=[bobs["algo-1"]])
    assert both.value.code == "InvalidParameterException"


async def test_a_large_log_is_read_in_bounded_memory(api):
    line = b"x" * 99 + b"\n"
    chunk = line * 10_000  # 1 MB
    stream = (await job_with_lines(api, "zq-big", {"algo-1": [(T0 + i, chunk) for i in range(48)]}))["algo-1"]
    tracemalloc.start()
    try:
        last = await get(api, stream, startTime=T0 + 30, endTime=T0 + 40)
        found = await filter_(api, logStreamNamePrefix="zq-big", filterPattern="nothing-matches")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last["events"][-1]["timestamp"] == T0 + 39 and len(last["events"]) == logs.PAGE_BYTES // (99 + 26)
    assert found["events"] == [] and "nextToken" in found  # SCAN_BYTES read, then a token to go on
    assert peak < 12 * 2**20, peak  # 48 MB of log: a page (about 1 MB of events as dicts) at a time


async def test_a_line_longer_than_an_event_is_cut_alike_forward_and_backward(api):
    long = b"L" * (logs.EVENT_BYTES * 2 + 10) + b"\n"
    stream = (await job_with_lines(api, "zq-long", {"algo-1": [(T0, b"before\n" + long), (T0 + 5, b"after\n")]}))[
        "algo-1"]
    forward = await get(api, stream, startFromHead=True)
    backward = await get(api, stream)
    cut = ["before", "L" * logs.EVENT_BYTES, "L" * logs.EVENT_BYTES, "L" * 10, "after"]
    assert messages(forward) == cut and messages(backward) == cut
    assert [e["timestamp"] for e in forward["events"]] == [T0] * 4 + [T0 + 5]


async def test_a_filter_pattern_of_many_terms_cannot_hold_a_thread(api):
    """The attack: a filterPattern of a hundred and fifty `-TERM`s (each tested against every
    event, none matching) and a `?TERM` nothing has, over a log of one-byte lines: one call
    tested every term on each of 8 million events (SCAN_BYTES, 16 MB): minutes of one of
    serve's threads, and a 2 MB body held tens of thousands of terms. A pattern is at
    most 1024 characters (CloudWatch's limit), and a call stops (with a nextToken) once its
    matching work, bytes times terms, reaches SCAN_WORK."""
    short = b"x\n" * 500_000
    await job_with_lines(api, "zq-terms", {"algo-1": [(T0, short)]})
    terms = [f"-t{i}" for i in range(150)]
    pattern = " ".join(["x", *terms, "?absent"])
    assert len(pattern) <= 1024
    found = await filter_(api, logStreamNamePrefix="zq-terms", filterPattern=pattern)
    assert found["events"] == [] and "nextToken" in found
    _, _, scanned_to = logs.parse_token(found["nextToken"])
    events_tested = scanned_to // 2
    assert events_tested < 500_000 // 10  # far from the whole log in one call
    with pytest.raises(ServiceError) as refused:
        await filter_(api, logStreamNamePrefix="zq-terms", filterPattern="x" * 1025)
    assert refused.value.code == "InvalidParameterException" and "1024" in refused.value.message
