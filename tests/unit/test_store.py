"""The job store: records newest first, the one owner of a job, run.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.contract.describe import JobDescription, JobSummary
from fleet.errors import InvalidInput
from fleet.inventory import SshHost
from fleet.runtime.store import JobOwned, JobStore, RecordCache, RunOptions, RunRecord


def record(name: str, created: str, status: str = "Completed", **extra) -> dict:
    return {"ProcessingJobName": name, "ProcessingJobStatus": status, "CreationTime": created,
            "Hosts": {"algo-1": {"Name": "h1", "Address": "10.0.0.1"}}, **extra}


def test_records_come_newest_first(tmp_path: Path):
    store = JobStore(tmp_path)
    for name, created in [("b", "2026-01-02T00:00:00+00:00"), ("a", "2026-01-03T00:00:00+00:00"),
                          ("c", "2026-01-01T00:00:00+00:00")]:
        store.create(record(name, created))
    (store.jobs / "broken").mkdir()
    (store.jobs / "broken" / "describe.json").write_text("{not json")
    assert [r.ProcessingJobName for r in store.records()] == ["a", "b", "c"]


def test_a_job_has_one_owner_at_a_time(tmp_path: Path):
    store = JobStore(tmp_path)
    store.create(record("j", "2026-01-01T00:00:00+00:00", "InProgress"))
    assert store.owner("j") is None
    ownership = store.claim("j")
    assert store.owner("j") == os.getpid()
    with pytest.raises(JobOwned) as caught:
        store.claim("j")
    assert caught.value.pid == os.getpid() and "fleet stop j" in caught.value.message
    ownership.release()
    assert store.owner("j") is None
    store.claim("j").release()


def test_run_json_round_trips_and_its_absence_is_named(tmp_path: Path):
    store = JobStore(tmp_path)
    store.create(record("j", "2026-01-01T00:00:00+00:00"))
    with pytest.raises(InvalidInput, match="has no run.json"):
        store.read_run("j")
    host = SshHost(address="10.0.0.1", name="gpu-01", gpus=[0, 1])
    run = RunRecord(RunId="abc", Controller="c:/h", Request={"ProcessingJobName": "j"}, Hosts=[host],
                    Options=RunOptions(stop_grace=7, keep=True))
    store.record("j").save_run(run)
    assert store.read_run("j") == run
    assert store.read_run("j").Hosts[0].gpus == [0, 1]
    store.record("j").save_run(run.model_copy(update={"Addresses": ["10.0.0.9"]}))
    assert store.read_run("j").Addresses == ["10.0.0.9"]


def test_an_unreadable_run_json_is_named(tmp_path: Path):
    store = JobStore(tmp_path)
    store.create(record("j", "2026-01-01T00:00:00+00:00"))
    (tmp_path / "jobs" / "j" / "run.json").write_text('{"RunId": 5}')
    with pytest.raises(InvalidInput, match="run.json is not a run record"):
        store.read_run("j")


def test_fleet_list_shows_jobs_newest_first_and_filters(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path))
    store = JobStore(tmp_path)
    store.create(record("older", "2026-01-01T00:00:00+00:00", ProcessingStartTime="2026-01-01T00:00:01+00:00",
                        ProcessingEndTime="2026-01-01T01:02:04+00:00"))
    store.create(record("newer", "2026-01-02T00:00:00+00:00", "InProgress"))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "HOSTS", "START", "DURATION"]
    assert lines[1].startswith("newer") and "InProgress (no fleet process: fleet attach)" in lines[1]
    assert lines[2].startswith("older") and "Completed" in lines[2] and lines[2].endswith("1:02:03")
    assert main(["list", "--status", "Completed", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["ProcessingJobName"] for r in listed] == ["older"]
    assert listed[0]["ProcessingJobStatus"] == "Completed"


def test_stop_of_an_ended_job_says_so(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path))
    JobStore(tmp_path).create(record("done", "2026-01-01T00:00:00+00:00"))
    assert main(["stop", "done"]) == 0
    assert "already Completed; nothing to stop" in capsys.readouterr().err
    assert main(["stop", "nosuch"]) == 2


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_only_the_owner_can_read_the_store_whatever_the_umask(tmp_path: Path):
    """describe.json and run.json hold the Environment (secrets), the logs what the job said."""
    home = tmp_path / "home"
    old = os.umask(0o002)
    try:
        store = JobStore(home)
        job = store.create(record("zq-secret", "2026-01-01T00:00:00+00:00", Environment={"K": "zq-s3cr3t"}))
        job.save_run(RunRecord(RunId="r1", Controller="c", Request={}, Hosts=[SshHost(address="h1")]))
        store.claim("zq-secret").release()
        job.open_log("algo-1").close()
    finally:
        os.umask(old)
    directory = home / "jobs" / "zq-secret"
    assert [mode(d) for d in (home, home / "jobs", directory, directory / "logs")] == [0o700] * 4
    for name in ("describe.json", "run.json", "owner.lock", "logs/algo-1.log"):
        assert mode(directory / name) == 0o600, name


def test_a_store_made_before_is_tightened_as_it_is_written_to(tmp_path: Path):
    home = tmp_path / "home"
    directory = home / "jobs" / "zq-old"
    (directory / "logs").mkdir(parents=True)
    for path in (home, home / "jobs", directory, directory / "logs"):
        path.chmod(0o755)
    for name in ("describe.json", "owner.lock", "logs/algo-1.log"):
        (directory / name).write_text(json.dumps(record("zq-old", "2026-01-01T00:00:00+00:00")))
        (directory / name).chmod(0o644)
    store = JobStore(home)
    store.claim("zq-old").release()
    job = store.record("zq-old")
    job.update(ProcessingJobStatus="Failed")
    job.open_log("algo-1").close()
    assert [mode(d) for d in (home, home / "jobs", directory, directory / "logs")] == [0o700] * 4
    for name in ("describe.json", "owner.lock", "logs/algo-1.log"):
        assert mode(directory / name) == 0o600, name


def test_the_record_cache_warms_a_batch_at_a_time_and_then_lists_without_reading(tmp_path: Path, monkeypatch):
    """serve warms its List cache once it listens (Services.warm), a batch between other work; the
    first list afterwards reads no record, a stat each."""
    store = JobStore(tmp_path)
    for i in range(5):
        store.create(record(f"j{i}", f"2026-01-0{i + 1}T00:00:00+00:00"))
        old = os.stat(store.jobs / f"j{i}" / "describe.json").st_mtime - 3600  # settled: past the racy window
        os.utime(store.jobs / f"j{i}" / "describe.json", (old, old))
    cache = RecordCache(store, JobSummary)
    assert list(cache.warm(batch=2)) == [2, 4, 5]
    parsed: list[bytes] = []
    monkeypatch.setattr(cache.model, "model_validate_json", lambda data: parsed.append(data) or {})
    assert [r.ProcessingJobName for r in cache.records()] == ["j4", "j3", "j2", "j1", "j0"]
    assert parsed == []


def test_a_run_json_from_before_hosts_were_typed_by_transport_is_read(tmp_path: Path):
    """fleet gave every host the SSH settings (port 22, user null...) until hosts were typed by
    their transport: a job it started on a local or srun host can still be attached to."""
    store = JobStore(tmp_path)
    store.create(record("j", "2026-01-01T00:00:00+00:00"))
    ssh_settings = {"user": None, "port": 22, "identity_file": None, "known_hosts": None,
                    "host_key_checking": None, "connect_timeout": 15.0}
    hosts = [{"address": "localhost", "transport": "local", **ssh_settings},
             {"address": "n1", "transport": "srun", **ssh_settings},
             {"address": "a.lab", "transport": "ssh", **ssh_settings, "user": "ops"}]
    (store.job_dir("j") / "run.json").write_text(json.dumps(
        {"RunId": "abc", "Controller": "c:/h", "Request": {"ProcessingJobName": "j"}, "Hosts": hosts}))
    local, node, remote = store.read_run("j").Hosts
    assert (local.transport, node.transport, remote.transport) == ("local", "srun", "ssh")
    assert remote.model_dump(include={"user", "port"}) == {"user": "ops", "port": 22}
    assert "port" not in local.model_dump() and "port" not in node.model_dump()


def test_an_older_fleets_record_loads_typed_and_is_rewritten_byte_for_byte(tmp_path: Path):
    """describe.json as fleet wrote it before the record had a model: no Owner, a host whose
    ExitCode is null, a field the model does not name; read typed, written back unchanged."""
    store = JobStore(tmp_path)
    store.create(record("old", "2026-01-01T00:00:00+00:00"))
    path = store.job_dir("old") / "describe.json"
    stored = {"ProcessingJobName": "old", "ProcessingJobArn": "arn:aws:sagemaker:us-east-1:0:processing-job/old",
              "ProcessingJobStatus": "Failed", "CreationTime": "2026-01-01T00:00:00+00:00",
              "LastModifiedTime": "2026-01-01T00:05:00+00:00", "Environment": {"A": "1"},
              "Hosts": {"algo-1": {"Name": "h1", "Address": "10.0.0.1", "ExitCode": 3},
                        "algo-2": {"Name": "h2", "Address": "10.0.0.2", "ExitCode": None}},
              "FailureReason": "AlgorithmError: algo-1 exited with code 3", "SomethingNewer": {"x": [1]}}
    path.write_text(json.dumps(stored, indent=2) + "\n")
    before = path.read_bytes()
    described = store.load("old")
    assert (described.ProcessingJobStatus, described.Owner, described.ended) == ("Failed", None, True)
    assert {algo: host.ExitCode for algo, host in described.Hosts.items()} == {"algo-1": 3, "algo-2": None}
    assert described.stored() == stored  # in its order, the unknown field kept
    store.record("old").save()
    assert path.read_bytes() == before
    assert [r.ProcessingJobName for r in RecordCache(store, JobSummary).records()] == ["old"]


def test_a_record_fleet_cannot_read_is_named_not_a_traceback(tmp_path: Path):
    store = JobStore(tmp_path)
    store.create(record("bad", "2026-01-01T00:00:00+00:00"))
    (store.job_dir("bad") / "describe.json").write_text(json.dumps({"ProcessingJobName": "bad", "Hosts": "h1"}))
    with pytest.raises(InvalidInput, match=r"describe.json is not a job record fleet can read: Hosts"):
        store.load("bad")
    assert store.records() == [] and RecordCache(store, JobDescription).records() == []
