"""The owner of a job, as other fleet processes see it: looked at without being disturbed,
and signalled only once proven. Real processes throughout: probers polling the owner lock
in tight loops (as `fleet wait`, `logs -f`, `list` and serve's adopt loop do), a `sleep`
holding a pid a dead owner left in owner.lock, owners that claim the job and are stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fleet
from fleet import cli
from fleet.contract.describe import now
from fleet.runtime.store import JobOwned, JobStore

NAME = "owned-job"
ROOT = Path(fleet.__file__).resolve().parent.parent
PROBE = "import sys; from pathlib import Path; from fleet.runtime.store import JobStore\n" \
        "store = JobStore(Path(sys.argv[1])); print('ready', flush=True)\n" \
        "while True: store.owner(sys.argv[2])\n"
# A fleet process running the job: claims it, and on SIGTERM writes its end and lets go.
OWNER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from fleet.runtime.store import JobStore
    store = JobStore(Path(sys.argv[1]))
    ownership = store.claim(sys.argv[2])
    def stop(signum, frame):
        store.record(sys.argv[2]).update(ProcessingJobStatus="Stopped", ExitCode=130)
        ownership.release()
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    print("owning", flush=True)
    while True:
        time.sleep(1)
""")


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() in ("ready", "owning")
    return process


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> JobStore:
    store = JobStore(tmp_path / "home")
    store.create({"ProcessingJobName": NAME, "ProcessingJobStatus": "InProgress", "CreationTime": now(),
                  "Hosts": {"algo-1": {"Name": "h1"}}})
    monkeypatch.setenv("FLEET_HOME", str(store.home))
    return store


@pytest.fixture
def probers(store: JobStore) -> Iterator[Callable[[], None]]:
    """Starts 4 probers (call it once the scene is set)."""
    processes: list[subprocess.Popen] = []
    try:
        yield lambda: processes.extend(_python(PROBE, str(store.home), NAME) for _ in range(4))
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _dead_owner_left(store: JobStore) -> str:
    """owner.lock as a fleet process that claimed the job and was killed (SIGKILL) left it."""
    owner = _python(OWNER, str(store.home), NAME)
    owner.kill()
    owner.wait()
    left = (store.job_dir(NAME) / "owner.lock").read_text()
    assert str(owner.pid) in left
    return left.replace(str(owner.pid), "PID")


def test_stop_never_signals_a_process_that_reused_a_dead_owners_pid_while_others_probe(store, probers, sleeper,
                                                                                      capsys):
    # The owner died; its pid now belongs to an unrelated process of the same user (the sleep).
    left = _dead_owner_left(store)
    lock = store.job_dir(NAME) / "owner.lock"
    probers()
    deadline = time.monotonic() + 8
    attempts = 0
    while time.monotonic() < deadline and attempts < 100:
        lock.write_text(left.replace("PID", str(sleeper.pid)))  # as the dead owner left it, every time
        code = cli.main(["stop", NAME])
        attempts += 1
        assert sleeper.poll() is None, f"fleet stop killed the sleep (pid {sleeper.pid}) at attempt {attempts}"
        said = capsys.readouterr().err
        # No fleet process runs the job: stop goes to its hosts (this record has no run.json to
        # take it over with) and never finds the job owned by a prober.
        assert f"stopping {NAME} at its hosts (no fleet process runs it)" in said, said
        assert "is run by another fleet process" not in said, said
        assert code == 2 and "has no run.json" in said
    assert sleeper.poll() is None


def test_stop_signals_the_jobs_fleet_process_while_others_probe(store, probers, capsys):
    owner = _python(OWNER, str(store.home), NAME)
    probers()
    try:
        assert cli.main(["stop", NAME]) == 0
        assert owner.wait(timeout=10) == 130  # it got the SIGTERM: a graceful stop
    finally:
        owner.kill()
        owner.wait()
    assert store.load(NAME).ProcessingJobStatus == "Stopped"
    assert f"stopping {NAME} (through its fleet process, pid {owner.pid})" in capsys.readouterr().err


def _fleet_stop(store: JobStore) -> subprocess.CompletedProcess:
    """`fleet stop NAME` in a process of its own (bounded: the code before the fix looped)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_HOME": str(store.home)}
    return subprocess.run([sys.executable, "-m", "fleet", "stop", NAME], env=env, capture_output=True, text=True,
                          timeout=30)


def test_stop_never_signals_a_pid_that_does_not_hold_the_owner_lock(store, sleeper):
    # A fleet process holds the lock, but owner.lock names another process (here the sleep,
    # even with the sleep's own start time): unproven, so nothing is signalled.
    owner = _python(OWNER, str(store.home), NAME)
    lock = store.job_dir(NAME) / "owner.lock"
    try:
        lock.write_text(lock.read_text().replace(str(owner.pid), str(sleeper.pid))
                        .replace(str(_start_time(owner.pid)), str(_start_time(sleeper.pid))))
        stop = _fleet_stop(store)
        assert sleeper.poll() is None and owner.poll() is None
    finally:
        owner.kill()
        owner.wait()
    assert stop.returncode == 2 and f"not signalling pid {sleeper.pid}" in stop.stderr, stop.stderr


def test_stop_never_signals_the_lock_holder_whose_start_time_is_not_the_recorded_one(store):
    owner = _python(OWNER, str(store.home), NAME)
    lock = store.job_dir(NAME) / "owner.lock"
    try:
        started = str(_start_time(owner.pid))
        assert started in lock.read_text()
        lock.write_text(lock.read_text().replace(started, str(int(started) - 1)))
        stop = _fleet_stop(store)
        assert owner.poll() is None
    finally:
        owner.kill()
        owner.wait()
    assert stop.returncode == 2 and f"not signalling pid {owner.pid}" in stop.stderr, stop.stderr


def test_a_claim_never_fails_because_other_processes_look(store, probers):
    probers()
    refused = 0
    for _ in range(2000):
        try:
            store.claim(NAME).release()
        except JobOwned:
            refused += 1
    assert refused == 0, f"{refused} of 2000 claims refused (JobOwned) while nobody owned the job"


def test_looking_at_the_owner_neither_creates_the_lock_nor_takes_it(store):
    assert store.owner(NAME) is None
    assert not (store.job_dir(NAME) / "owner.lock").exists()
    ownership = store.claim(NAME)
    try:
        assert store.owner(NAME) == os.getpid()
    finally:
        ownership.release()


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (after the command's parenthesis)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

