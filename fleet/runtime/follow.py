"""Following a job from any terminal: `fleet logs -f NAME` and `fleet wait NAME`.

Both only read the store (describe.json, logs/algo-k.log, owner.lock), every POLL seconds:
no inotify, and they work on any filesystem the store is on. The fleet process that runs
the job writes every log byte before the record's terminal status, and releases its owner
lock only after that; so a follower that sees the terminal status, then reads the logs to
their end, has every byte, and one that sees no owner, then a record that is not terminal,
knows the job was left unfinished (its owner was killed: `fleet attach NAME` takes it over).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import BinaryIO

from fleet.contract.describe import JobDescription
from fleet.errors import MACHINERY_EXIT, InvalidInput, JobStopped, MaxRuntimeExceeded
from fleet.runtime.console import Console, HostLines
from fleet.runtime.store import JobStore

POLL = 0.2  # seconds between looks at the record and the logs
OWNER_GRACE = 3.0  # seconds a live job may show no owner: between `fleet run` writing the
# record and claiming it, or `fleet serve` placing it and its worker starting
READ_CHUNK = 1 << 20  # bytes read from a log at once
WAITING_FOR_HOSTS = "Starting"  # SecondaryStatus of a job `fleet serve` has not placed yet


def exit_code_of(record: JobDescription) -> int:
    """The exit code `fleet run` returned (or would have) for this ended job: the one it
    stored, else from the status (a record of an older fleet)."""
    if record.ExitCode is not None:
        return record.ExitCode
    status = record.ProcessingJobStatus
    if status == "Completed":
        return 0
    if status == "Stopped":
        return JobStopped.exit_code
    if (record.FailureReason or "").startswith(f"{MaxRuntimeExceeded.failure_kind}:"):
        return MaxRuntimeExceeded.exit_code
    return 1


def ending(record: JobDescription) -> str:
    """How the job ended, in one line: `NAME: Failed: AlgorithmError: ...`."""
    name, status = record.ProcessingJobName, record.ProcessingJobStatus
    return f"{name}: {status}" + (f": {record.FailureReason}" if status == "Failed" and record.FailureReason
                                  is not None else "")


class OwnerGone(Exception):
    """The job is not ended and no fleet process runs it."""


@dataclass
class JobWatch:
    """Looks at a job's record and owner; tells a job left unfinished from one starting."""

    store: JobStore
    name: str
    grace: float = OWNER_GRACE
    _ownerless_since: float | None = None

    def look(self) -> JobDescription:
        """The record now; OwnerGone if the job has had no owner for `grace` seconds."""
        owner = self.store.owner(self.name)  # before the record: the owner writes its end, then lets go
        record = self.store.load(self.name)
        if record.ended or owner is not None or record.SecondaryStatus == WAITING_FOR_HOSTS:
            self._ownerless_since = None
            return record
        moment = time.monotonic()
        if self._ownerless_since is None:
            self._ownerless_since = moment
        if moment - self._ownerless_since >= self.grace:
            raise OwnerGone(f"job {self.name} is {record.ProcessingJobStatus} but its owner is gone "
                            f"(no fleet process runs it): fleet attach {self.name}")
        return record


def wait(store: JobStore, name: str, console: Console, *, poll: float = POLL, grace: float = OWNER_GRACE) -> int:
    """Block until the job ends; the exit code `fleet run` had. MACHINERY_EXIT (75) if its
    owner is gone without ending it (`fleet attach` takes it over; wait again then)."""
    watch = JobWatch(store, name, grace)
    while True:
        try:
            record = watch.look()
        except OwnerGone as gone:
            console.notice(str(gone))
            return MACHINERY_EXIT
        if record.ended:
            console.notice(ending(record))
            return exit_code_of(record)
        time.sleep(poll)


@dataclass
class _HostLog:
    algo: str
    lines: HostLines | None  # the console's: escaped, cut at LINE_LIMIT; None for raw bytes
    offset: int = 0


class LogFollower:
    """Prints a job's logs as they grow: every byte once. As the console prints them while
    the job runs (`[algo-k] line`, controls shown as `\\xNN`, a line once it has ended and
    at most LINE_LIMIT bytes of it: memory stays bounded whatever the container printed);
    one host's (`host`) without the prefix; or, with `raw`, one host's stored bytes
    unchanged (for a pipe: cli.py refuses it to a terminal)."""

    def __init__(self, store: JobStore, name: str, out: BinaryIO, host: str | None = None,
                 raw: bool = False) -> None:
        if raw and host is None:
            raise InvalidInput("--raw prints one host's stored bytes: name the host with --host algo-k")
        self.store = store
        self.name = name
        self.out = out
        self.host = host
        self.raw = raw
        self.logs: dict[str, _HostLog] = {}

    def check_host(self, record: JobDescription) -> None:
        algos = list(record.Hosts)
        if self.host is not None and algos and self.host not in algos:
            raise InvalidInput(f"--host {self.host}: job {self.name} has hosts {', '.join(algos)}")

    def pump(self, record: JobDescription) -> None:
        """Print what the logs gained since the last pump."""
        self.pump_hosts([self.host] if self.host is not None else list(record.Hosts))

    def pump_hosts(self, algos: list[str]) -> None:
        """Print what these hosts' logs gained since the last pump."""
        for algo in algos:
            log = self.logs.get(algo) or self.logs.setdefault(algo, _HostLog(algo, self._lines(algo)))
            try:
                with open(self.store.log_path(self.name, algo), "rb") as file:
                    file.seek(log.offset)
                    while chunk := file.read(READ_CHUNK):
                        log.offset += len(chunk)
                        if log.lines is None:
                            self.out.write(chunk)
                        else:
                            log.lines.feed(chunk)
            except FileNotFoundError:  # not planned yet
                continue
        self.out.flush()

    def finish(self) -> None:
        """The last lines that did not end with a newline (as `fleet logs` prints them)."""
        for log in self.logs.values():
            if log.lines is not None:
                log.lines.flush()
        self.out.flush()

    def _lines(self, algo: str) -> HostLines | None:
        if self.raw:
            return None
        return HostLines(self.out, b"" if self.host is not None else f"[{algo}] ".encode())


def print_logs(store: JobStore, name: str, out: BinaryIO, *, host: str | None = None, raw: bool = False) -> None:
    """`fleet logs`: the job's stored logs as they are now, host by host, printed as
    `fleet logs -f` prints them."""
    algos = list(store.load(name).Hosts)
    if host is not None and host not in algos:
        raise InvalidInput(f"--host {host}: job {name} has hosts {', '.join(algos)}")
    follower = LogFollower(store, name, out, host, raw)
    for algo in [host] if host is not None else algos:
        follower.pump_hosts([algo])
        follower.finish()


def follow_logs(store: JobStore, name: str, out: BinaryIO, console: Console, *, host: str | None = None,
                raw: bool = False, poll: float = POLL, grace: float = OWNER_GRACE) -> int:
    """`fleet logs -f`: print the job's logs until it ends and they are drained (0). A job
    already ended: its logs, at once. Its owner gone: what there is, and MACHINERY_EXIT."""
    follower = LogFollower(store, name, out, host, raw)
    watch = JobWatch(store, name, grace)
    follower.check_host(store.load(name))
    while True:
        try:
            record = watch.look()
        except OwnerGone as gone:
            follower.pump(store.load(name))
            follower.finish()
            console.notice(str(gone))
            return MACHINERY_EXIT
        follower.check_host(record)
        follower.pump(record)  # after the look: a terminal record means the logs are complete
        if record.ended:
            follower.finish()
            return 0
        time.sleep(poll)
