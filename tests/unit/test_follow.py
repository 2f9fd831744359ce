"""`fleet wait` and `fleet logs -f`: a job followed from another process through the store
alone (describe.json, logs/algo-k.log, owner.lock), as it runs and once it ended."""

from __future__ import annotations

import io
import threading
import time

import pytest

from fleet import cli
from fleet.contract.describe import JobDescription, now
from fleet.runtime.console import Console
from fleet.runtime.follow import exit_code_of, follow_logs, wait
from fleet.runtime.store import JobStore

NAME = "followed-job"


@pytest.mark.parametrize("record, code", [
    ({"ProcessingJobStatus": "Completed"}, 0),
    ({"ProcessingJobStatus": "Stopped"}, 130),
    ({"ProcessingJobStatus": "Failed", "FailureReason": "MaxRuntimeExceeded: Job exceeded MaxRuntimeInSeconds"}, 124),
    ({"ProcessingJobStatus": "Failed", "FailureReason": "AlgorithmError: algo-2 exited with code 3"}, 1),
    ({"ProcessingJobStatus": "Failed", "FailureReason": "ClientError: algo-1 (h1): connection refused"}, 1),
    ({"ProcessingJobStatus": "Failed"}, 1),
    ({"ProcessingJobStatus": "Failed", "FailureReason": "ClientError: algo-1 (h1): refused", "ExitCode": 75}, 75),
    ({"ProcessingJobStatus": "Completed", "ExitCode": 0}, 0),
    ({"ProcessingJobStatus": "Failed", "FailureReason": "MaxRuntimeExceeded: x", "ExitCode": 124}, 124),
], ids=["completed", "stopped", "max-runtime", "algorithm", "client", "no-reason", "stored-75", "stored-0",
        "stored-124"])
def test_wait_exits_with_the_stored_code_else_the_one_the_status_implies(record, code):
    assert exit_code_of(JobDescription.model_validate({"ProcessingJobName": NAME, **record})) == code


def make_job(tmp_path, hosts: int = 2, **fields) -> JobStore:
    store = JobStore(tmp_path / "home")
    store.create({"ProcessingJobName": NAME, "ProcessingJobStatus": "InProgress", "CreationTime": now(),
                  "Hosts": {f"algo-{k}": {"Name": f"h{k}"} for k in range(1, hosts + 1)}, **fields})
    return store


def console() -> tuple[Console, io.StringIO]:
    err = io.StringIO()
    return Console(io.BytesIO(), err), err


class Owner(threading.Thread):
    """The job's fleet process, in a thread: owns the job, appends to its logs in pieces that
    cut lines anywhere, then writes its end, then lets go, as the executor does."""

    def __init__(self, store: JobStore, pieces: list[tuple[str, bytes]], end: dict, pause: float = 0.01) -> None:
        super().__init__()
        self.store, self.pieces, self.end, self.pause = store, pieces, end, pause
        self.ownership = store.claim(NAME)  # before the follower looks
        self.ended_at = 0.0

    def run(self) -> None:
        record = self.store.record(NAME)
        files = {algo: record.open_log(algo) for algo in record.data["Hosts"]}
        for algo, piece in self.pieces:
            files[algo].write(piece)
            time.sleep(self.pause)
        record.update(**self.end)
        self.ended_at = time.monotonic()
        for file in files.values():
            file.close()
        self.ownership.release()


def numbered(algo: str, count: int) -> bytes:
    return b"".join(f"{algo} line {n}\n".encode() for n in range(count))


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_logs_follow_prints_every_line_once_as_the_files_grow_and_stops_at_the_end(tmp_path, monkeypatch,
                                                                                   capsysbinary):
    store = make_job(tmp_path)
    one, two = numbered("algo-1", 60) + b"no newline at the end", numbered("algo-2", 40)
    pieces = [p for pair in zip(cut(one, 7), cut(two, 11)) for p in (("algo-1", pair[0]), ("algo-2", pair[1]))]
    pieces += [("algo-1", p) for p in cut(one, 7)[len(cut(two, 11)):]]
    owner = Owner(store, pieces, {"ProcessingJobStatus": "Completed", "ExitCode": 0})
    out = io.BytesIO()
    owner.start()
    code = follow_logs(store, NAME, out, console()[0], poll=0.02)
    returned = time.monotonic()
    owner.join()
    assert code == 0
    assert returned >= owner.ended_at  # not before the record said the job ended
    printed = out.getvalue().splitlines(keepends=True)
    for algo, data in (("algo-1", one), ("algo-2", two)):
        mine = [line for line in printed if line.startswith(f"[{algo}] ".encode())]
        assert mine == [f"[{algo}] ".encode() + line + b"\n" for line in data.splitlines()]
    assert len(printed) == 61 + 40
    # the same lines `fleet logs` prints once the job ended (it prints host by host)
    monkeypatch.setenv("FLEET_HOME", str(store.home))
    assert cli.main(["logs", NAME]) == 0
    assert sorted(capsysbinary.readouterr().out.splitlines()) == sorted(out.getvalue().splitlines())


@pytest.mark.parametrize("raw, shown", [
    (True, b"\x1b[2Jraw\r\nbytes\nand a tail"),  # --raw (to a pipe): the stored bytes unchanged
    (False, b"\\x1b[2Jraw\nbytes\nand a tail\n"),  # as the console prints them, without the prefix
], ids=["raw", "escaped"])
def test_logs_follow_of_one_host_prints_its_bytes(tmp_path, raw, shown):
    store = make_job(tmp_path)
    data = b"\x1b[2Jraw\r\nbytes\nand a tail"
    owner = Owner(store, [("algo-2", p) for p in cut(data, 3)] + [("algo-1", b"not this host\n")],
                  {"ProcessingJobStatus": "Failed", "FailureReason": "AlgorithmError: x", "ExitCode": 1})
    out = io.BytesIO()
    owner.start()
    assert follow_logs(store, NAME, out, console()[0], host="algo-2", raw=raw, poll=0.02) == 0
    owner.join()
    assert out.getvalue() == shown


def test_logs_follow_refuses_a_host_the_job_does_not_have(tmp_path):
    store = make_job(tmp_path)
    with pytest.raises(cli.InvalidInput, match="--host algo-9: job followed-job has hosts algo-1, algo-2"):
        follow_logs(store, NAME, io.BytesIO(), console()[0], host="algo-9")


def test_logs_follow_of_a_job_whose_owner_is_gone_prints_what_there_is_and_says_so(tmp_path):
    store = make_job(tmp_path)
    with store.record(NAME).open_log("algo-1") as log:
        log.write(b"before the owner died\n")
    report, err = console()
    out = io.BytesIO()
    assert follow_logs(store, NAME, out, report, poll=0.02, grace=0.1) == 75
    assert out.getvalue() == b"[algo-1] before the owner died\n"
    assert "owner is gone" in err.getvalue() and f"fleet attach {NAME}" in err.getvalue()


def test_wait_blocks_until_the_end_and_exits_with_the_runs_code(tmp_path):
    store = make_job(tmp_path)
    end = {"ProcessingJobStatus": "Failed", "ExitCode": 75,
           "FailureReason": "ClientError: algo-2 (h2, 10.0.0.2): docker did not answer within 20 s"}
    owner = Owner(store, [("algo-1", b"x\n")] * 20, end, pause=0.02)
    report, err = console()
    owner.start()
    code = wait(store, NAME, report, poll=0.02)
    returned = time.monotonic()
    owner.join()
    assert code == 75 and returned >= owner.ended_at
    assert err.getvalue() == f"fleet: {NAME}: Failed: {end['FailureReason']}\n"


def test_wait_on_an_ended_job_answers_at_once(tmp_path):
    store = make_job(tmp_path)
    store.record(NAME).update(ProcessingJobStatus="Stopped", ExitCode=130)
    assert wait(store, NAME, console()[0]) == 130


def test_wait_says_when_the_jobs_owner_is_gone_rather_than_hang(tmp_path):
    store = make_job(tmp_path)
    report, err = console()
    started = time.monotonic()
    assert wait(store, NAME, report, poll=0.02, grace=0.2) == 75
    assert 0.2 <= time.monotonic() - started < 5
    assert f"its owner is gone (no fleet process runs it): fleet attach {NAME}" in err.getvalue()


def test_wait_waits_for_a_job_fleet_serve_has_not_placed_yet(tmp_path):
    store = make_job(tmp_path, SecondaryStatus="Starting")  # no owner yet, and rightly so

    def serve_places_and_runs() -> None:
        time.sleep(0.5)
        ownership = store.claim(NAME)
        store.record(NAME).update(SecondaryStatus=None)
        time.sleep(0.2)
        store.record(NAME).update(ProcessingJobStatus="Completed", ExitCode=0)
        ownership.release()

    serve = threading.Thread(target=serve_places_and_runs)
    serve.start()
    assert wait(store, NAME, console()[0], poll=0.02, grace=0.2) == 0
    serve.join()


def test_wait_through_the_cli(tmp_path, monkeypatch, capsys):
    store = make_job(tmp_path)
    store.record(NAME).update(ProcessingJobStatus="Failed", FailureReason="AlgorithmError: algo-1 exited with code 3")
    monkeypatch.setenv("FLEET_HOME", str(store.home))
    assert cli.main(["wait", NAME]) == 1
    assert cli.main(["wait", "no-such-job"]) == 2
    assert "no job named no-such-job" in capsys.readouterr().err
