"""FLEET_HOME/jobs/NAME/: the records of jobs.

    describe.json      the DescribeProcessingJob record, rewritten atomically on each change;
                       beside SageMaker's fields, fleet's own (Hosts, Image, Transfers, and
                       ExitCode: what `fleet run` exited with, once the job ended; Owner:
                       the profile whose key created it through `fleet serve`, absent for
                       `fleet run`'s, which are the controller's: serve/jobs.py)
    logs/algo-k.log    each host's container log, exactly the bytes received
    logs/algo-k.log.times  when those bytes arrived (runtime/logindex.py: each line's time)
    run.json           what another fleet needs to take the job over (`fleet attach`,
                       `fleet stop` when its `fleet run` is gone): the request, the hosts,
                       their addresses, the options, the run's id
    owner.lock         locked by the fleet process running the job, holding its pid and start
                       time (runtime/owner.py: how others look at it, and prove it)
    VERB.log           what a background fleet process running the job said (its stdout and
                       stderr): run.log (`fleet run --detach`), serve-worker.log, attach.log
                       (`fleet serve`)

The records hold the Environment (often secrets: describe.json and run.json have the request)
and the containers' logs: FLEET_HOME and every directory in it are 0700, every file 0600,
whatever the umask; a store made by an older fleet is tightened as it is written to.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fleet.contract.describe import JobDescription, JobSummary, now
from fleet.contract.job import JOB_NAME_PATTERN, ProcessingJob, parse_job
from fleet.errors import InvalidInput, ResourceInUse
from fleet.inventory import Host, stored_host
from fleet.runtime import owner as owner_lock
from fleet.runtime.logindex import IndexedLog, index_path


class RunOptions(BaseModel):
    """How a run goes: `fleet run`'s options, and where its ARN points."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stop_grace: int = 30
    keep: bool = False
    docker_timeout: int = 20
    host_timeout: float = 120
    region: str = "us-east-1"
    account: str = "000000000000"
    push_image: bool = False  # --push-image: every host gets the image from the controller
    image_archive: str | None = None  # --image-archive FILE: the image, for a controller without Docker
    insecure_registries: tuple[str, ...] = ()  # the inventory's


class RunRecord(BaseModel):
    """run.json: everything another fleet process needs to take a job over (`fleet attach`,
    `fleet stop` when its `fleet run` is gone): the request, the hosts, where they were
    reached (once known), the options and the run's identity. The executor's input, for a
    new run and a taken-over one alike."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    RunId: str
    Controller: str  # machine:FLEET_HOME (the fleet.controller label)
    Request: dict[str, Any]  # the CreateProcessingJob request, as validated
    Hosts: list[Host]
    Addresses: list[str] | None = None  # where the other hosts reach each host; None before connecting
    Options: RunOptions = RunOptions()

    @field_validator("Hosts", mode="before")
    @classmethod
    def _hosts_as_stored(cls, hosts: Any) -> Any:
        return [stored_host(host) for host in hosts] if isinstance(hosts, list) else hosts

    @classmethod
    def new(cls, job: ProcessingJob, hosts: list[Host], options: RunOptions, run_id: str,
            controller: str) -> RunRecord:
        return cls(RunId=run_id, Controller=controller, Hosts=hosts, Options=options,
                   Request=job.model_dump(mode="json", exclude_none=True))

    def job(self, source: str = "run.json") -> ProcessingJob:
        return parse_job(self.Request, source)


class JobStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.jobs = home / "jobs"

    def job_dir(self, name: str) -> Path:
        return self.jobs / name

    def create(self, record: dict[str, Any]) -> JobRecord:
        """Claim the name (atomically: mkdir) and write the first record.

        A name that already has a record is SageMaker's ResourceInUse; the old record stays.
        """
        name = record["ProcessingJobName"]
        try:
            self.home.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            _private(self.home)
            self.jobs.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            _private(self.jobs)
            self.job_dir(name).mkdir(mode=PRIVATE_DIR_MODE)
            _private(self.job_dir(name))
            (self.job_dir(name) / "logs").mkdir(mode=PRIVATE_DIR_MODE)
            _private(self.job_dir(name) / "logs")
        except FileExistsError as exc:
            raise ResourceInUse(
                f"a job named {name} already exists ({self.job_dir(name)}); "
                f"choose another name with --name") from exc
        except OSError as exc:
            raise InvalidInput(f"cannot write job records in {self.jobs} (FLEET_HOME): {exc.strerror}") from exc
        job = JobRecord(self.job_dir(name), record)
        job.save()
        return job

    def load(self, name: str) -> JobDescription:
        """The job's record, typed; InvalidInput naming the file and field of one fleet cannot read."""
        path = self.job_dir(name) / "describe.json"
        try:
            return JobDescription.model_validate(self.stored(name))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            raise InvalidInput(f"{path} is not a job record fleet can read: "
                               f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from exc

    def stored(self, name: str) -> dict[str, Any]:
        """The job's describe.json as stored (its fields in their order): what its writer
        rewrites, so that a record rewritten unchanged is the same bytes."""
        if not re.fullmatch(JOB_NAME_PATTERN, name):
            raise InvalidInput(f"{name!r} is not a processing job name")
        try:
            return json.loads((self.job_dir(name) / "describe.json").read_text())
        except FileNotFoundError as exc:
            raise InvalidInput(f"no job named {name} in {self.jobs}") from exc

    def log_path(self, name: str, algo: str) -> Path:
        return self.job_dir(name) / "logs" / f"{algo}.log"

    def open_process_log(self, name: str, verb: str) -> int:
        """VERB.log of the job, opened to append (0600): a background fleet process's stdout
        and stderr. The descriptor."""
        return _open_private(self.job_dir(name) / f"{verb}.log", os.O_WRONLY | os.O_APPEND)

    def records(self) -> list[JobDescription]:
        """Every job's record, newest first; unreadable ones are skipped."""
        found = []
        for path in self.jobs.glob("*/describe.json") if self.jobs.is_dir() else []:
            try:
                found.append(JobDescription.model_validate_json(path.read_bytes()))
            except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
                continue
        return sorted(found, key=lambda r: r.CreationTime or "", reverse=True)

    def record(self, name: str) -> JobRecord:
        return JobRecord(self.job_dir(name), self.stored(name))

    def read_run(self, name: str) -> RunRecord:
        path = self.job_dir(name) / "run.json"
        try:
            return RunRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise InvalidInput(f"job {name} has no run.json in {self.job_dir(name)}: it cannot be "
                               f"taken over") from exc
        except ValidationError as exc:
            raise InvalidInput(f"{path} is not a run record fleet can read: "
                               f"{exc.errors()[0]['msg']}") from exc

    def claim(self, name: str) -> Ownership:
        """Become the one fleet process running `name`; JobOwned if another one is."""
        for directory in (self.home, self.jobs, self.job_dir(name)):  # a store of an older fleet
            _private(directory)
        path = self._owner_lock(name)
        file = owner_lock.lock(path, _open_private(path, os.O_RDWR))
        if file is None:
            found = owner_lock.holder(path)
            raise JobOwned(name, found.pid if found is not None else None)
        return Ownership(file)

    def owner(self, name: str) -> int | None:
        """The pid of the fleet process running `name` as its owner.lock says (-1 when it
        does not say), or None when none runs it. Only looks: takes no lock, writes nothing."""
        found = owner_lock.holder(self._owner_lock(name))
        if found is None:
            return None
        return found.pid if found.pid is not None and found.pid > 0 else -1

    def signal_owner(self, name: str, signum: int) -> int | None:
        """Send `signum` to the fleet process running `name`, proven to be it (see
        runtime/owner.py); its pid, or None when none runs it. OwnerUnproven when the lock is
        held but its holder cannot be told: nothing is signalled then."""
        try:
            return owner_lock.signal_holder(self._owner_lock(name), signum)
        except owner_lock.Unproven as exc:
            raise OwnerUnproven(name, exc.holder.pid, self._owner_lock(name)) from exc

    def _owner_lock(self, name: str) -> Path:
        return self.job_dir(name) / "owner.lock"


def controller_id(home: Path) -> str:
    """This controller: the machine and the store (the fleet.controller label)."""
    return f"{socket.gethostname()}:{home.resolve()}"


class JobOwned(InvalidInput):
    def __init__(self, name: str, pid: int | None) -> None:
        super().__init__(f"job {name} is run by another fleet process (pid {pid}); "
                         f"`fleet stop {name}` stops it")
        self.pid = pid


class OwnerUnproven(InvalidInput):
    def __init__(self, name: str, pid: int | None, path: Path) -> None:
        super().__init__(f"job {name} is run by a fleet process that cannot be told for sure: {path} is locked, "
                         f"but not provably by the process it names (pid {pid}, which may be an unrelated one "
                         f"now): not signalling pid {pid}. `fuser -v {path}` shows who holds it")
        self.pid = pid


class Ownership:
    def __init__(self, file) -> None:
        self._file = file

    def release(self) -> None:
        self._file.close()


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _private(directory: Path) -> None:
    """0700, also for a directory made before (mkdir's mode is subject to the umask)."""
    os.chmod(directory, PRIVATE_DIR_MODE)


def _open_private(path: Path, flags: int) -> int:
    """Open (create) `path` as a file only its owner can read, whatever the umask, and
    tighten one made before; the descriptor."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with os.fdopen(_open_private(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as file:
        file.write((json.dumps(data, indent=2) + "\n").encode())
    os.replace(tmp, path)


class JobRecord:
    """One job's describe.json, as its writer holds it (`data`, the fields in the order they
    were set, so that a record rewritten unchanged is the same bytes), rewritten atomically on
    every change. Readers read it typed: `description`, JobStore.load."""

    def __init__(self, directory: Path, record: dict[str, Any]) -> None:
        self.directory = directory
        self.data = record

    @property
    def status(self) -> str:
        return self.data["ProcessingJobStatus"]

    @property
    def description(self) -> JobDescription:
        return JobDescription.model_validate(self.data)

    def update(self, **fields: Any) -> None:
        self.data.update({k: v for k, v in fields.items()})
        self.data = {k: v for k, v in self.data.items() if v is not None}
        self.data["LastModifiedTime"] = now()
        self.save()

    def save(self) -> None:
        _private(self.directory)
        _write_atomically(self.directory / "describe.json", self.data)

    def save_run(self, run: RunRecord) -> None:
        """Write run.json (atomically)."""
        _write_atomically(self.directory / "run.json", run.model_dump(mode="json"))

    def log_size(self, algo: str) -> int:
        try:
            return (self.directory / "logs" / f"{algo}.log").stat().st_size
        except FileNotFoundError:
            return 0

    def open_log(self, algo: str) -> BinaryIO:
        """The host's log, opened to append, unbuffered; its writes keep the index of arrival
        times beside it (logindex.IndexedLog)."""
        _private(self.directory / "logs")
        path = self.directory / "logs" / f"{algo}.log"
        log_fd = _open_private(path, os.O_WRONLY | os.O_APPEND)
        try:
            index_fd = _open_private(index_path(path), os.O_RDWR | os.O_APPEND)
        except BaseException:
            os.close(log_fd)
            raise
        return IndexedLog(log_fd, index_fd)


R = TypeVar("R", bound=JobSummary)
RACY_SECONDS = 1.0  # a record read this soon after its write may hide a later one of the same stat


class RecordCache(Generic[R]):
    """The jobs' records as last read, each read again only when its describe.json changed
    (every write is a rename: a new inode, mtime and size), so that looking at thousands of
    records costs a stat each, not a read and a parse. Each is kept as `model` reads it: a
    JobSummary where a list of 10,000 jobs needs their summaries, not their requests.

    A stat cannot tell two writes apart that land in the same clock tick with the same size
    and a recycled inode: as git does with its index ("racy git"), a record read less than
    RACY_SECONDS after its write is not trusted, and read again at the next look."""

    def __init__(self, store: JobStore, model: type[R]) -> None:
        self.store = store
        self.model = model
        self._known: dict[str, tuple[tuple[int, int, int, int], bool, R]] = {}

    def load(self, name: str) -> R | None:
        """The record of `name`, or None when it has none (or it cannot be read)."""
        path = os.path.join(self.store.jobs, name, "describe.json")  # not pathlib: it was half a 10,000-job list
        try:
            stat = os.stat(path)
        except OSError:
            self._known.pop(name, None)
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        known = self._known.get(name)
        if known is not None and known[0] == stamp and known[1]:
            return known[2]
        try:
            with open(path, "rb") as file:
                record = self.model.model_validate_json(file.read())
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            self._known.pop(name, None)
            return None
        settled = time.time_ns() - stat.st_mtime_ns > RACY_SECONDS * 1e9
        self._known[name] = (stamp, settled, record)
        return record

    def forget(self, name: str) -> None:
        """Drop what is kept of `name` (a job the caller will not look at again)."""
        self._known.pop(name, None)

    def _names(self) -> list[str]:
        try:
            return [entry.name for entry in os.scandir(self.store.jobs) if entry.is_dir()]
        except FileNotFoundError:
            return []

    def warm(self, batch: int = 64) -> Iterator[int]:
        """Read every record not yet kept, `batch` at a time, yielding after each batch the
        number looked at so far: the caller (an event loop's task) lets others run in between,
        so that the first list of 10,000 jobs costs stats, not 10,000 reads and parses, without
        anyone waiting for the whole warm-up. A record that changes meanwhile is read again
        when looked at, as always."""
        names = self._names()
        for start in range(0, len(names), batch):
            for name in names[start:start + batch]:
                self.load(name)
            yield min(start + batch, len(names))

    def records(self) -> list[R]:
        """Every job's record, newest first; unreadable ones are skipped."""
        names = self._names()
        for gone in self._known.keys() - set(names):
            del self._known[gone]
        found = [record for name in names if (record := self.load(name)) is not None]
        return sorted(found, key=lambda r: r.CreationTime or "", reverse=True)
