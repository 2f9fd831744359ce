"""Jobs waiting for hosts, first come first served; each job run by a fleet process of its own.

A job created through the API is recorded at once (InProgress, SecondaryStatus `Starting`)
and waits until InstanceCount hosts of the inventory are free; it then gets the first free
ones (run.json written: the same RunRecord `fleet run` writes) and a worker process
(`fleet serve-worker NAME`, in its own session) runs it exactly as `fleet run` would, owning
it through the store's owner lock. So:
- a job's supervision never shares an event loop with the API (100 clients polling do not
  slow it), and `fleet list`, `fleet describe`, `fleet stop` see and act on it as on any job;
- SIGTERM (or SIGKILL) to `fleet serve` leaves the workers running; the next `fleet serve`
  finds them through their owner locks, takes over (`fleet attach`) any whose worker died,
  and starts the waiting ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fleet.contract.describe import TERMINAL, JobDescription, now
from fleet.errors import FleetError
from fleet.inventory import Host, Inventory
from fleet.plan import record_hosts
from fleet.runtime.store import JobStore, RecordCache, RunOptions, RunRecord, controller_id

log = logging.getLogger(__name__)

STARTING = "Starting"  # SecondaryStatus while the job waits for hosts (as SageMaker's capacity wait)
REAP_EVERY = 0.5  # seconds between looks at the workers
RETRY_AFTER = 2.0  # seconds before the round after one that failed
STOP_ASKED = "stop-asked"  # in the job's directory: StopProcessingJob was called
TAKEOVER_ATTEMPTS = 5  # failed `fleet attach`es of a job before it is marked Failed
TAKEOVER_BACKOFF = 1.0  # seconds before the second take-over; doubled before each next one
MAX_QUEUED = 500  # jobs waiting for hosts at most (--max-queued); CreateProcessingJob beyond: ResourceLimitExceeded


@dataclass(frozen=True)
class TakeOver:
    """A job whose take-over failed: how many times, and when to try again."""

    failures: int
    next_at: float


class Scheduler:
    def __init__(self, store: JobStore, inventory: Inventory, options: RunOptions,
                 max_queued: int = MAX_QUEUED) -> None:
        self.store = store
        self.inventory = inventory
        self.options = options
        self.max_queued = max_queued
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.stopping: dict[str, asyncio.subprocess.Process] = {}  # the `fleet stop` of a job, while it runs
        self.takeovers: dict[str, TakeOver] = {}  # jobs whose take-over failed: when to try again
        self.clock = time.monotonic
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one placement at a time (a stop of a waiting job too)
        self._records = RecordCache(store, JobDescription)  # a record is read again only when it changed
        self._active: set[str] | None = None  # names of the jobs not ended (None: not read yet)
        self._placed: set[str] = set()  # of those, the ones given hosts (a run.json)
        self._waiting: set[str] = set()  # of those, the ones waiting for hosts
        self._taking_over: set[str] = set()  # jobs whose worker is a `fleet attach`

    # -- what runs where ------------------------------------------------------------------------
    def _active_records(self) -> list[JobDescription]:
        """The records of the jobs not ended yet. The whole store is read once (at the
        server's start); then only the jobs still active, each read again only when its
        record changed: a queue of 3,000 waiting jobs costs 3,000 stats a round, no read
        (it cost 0.21 s of the API's event loop a round when each was read)."""
        if self._active is None:
            self._active = {r.ProcessingJobName for r in self._records.records() if not r.ended}
            self._placed = {name for name in self._active if (self.store.job_dir(name) / "run.json").exists()}
        records = []
        for name in sorted(self._active):
            record = self._records.load(name)
            if record is None or record.ended:
                self._active.discard(name)
                self._placed.discard(name)
                self._waiting.discard(name)
                self.takeovers.pop(name, None)
                continue
            if name not in self._placed and (self.store.job_dir(name) / "run.json").exists():
                self._placed.add(name)  # placed by this server, or (in tests) by hand
            if name not in self._placed and record.ProcessingJobStatus == "InProgress" \
                    and record.SecondaryStatus == STARTING:
                self._waiting.add(name)
            else:
                self._waiting.discard(name)
            records.append(record)
        return records

    def queued(self) -> int:
        """How many jobs wait for hosts."""
        if self._active is None:
            self._active_records()
        return len(self._waiting)

    def added(self, name: str) -> None:
        """A job was just created: it waits for hosts."""
        if self._active is not None:
            self._active.add(name)
            self._waiting.add(name)
        self.poke()

    def _running(self, records: list[JobDescription]) -> dict[str, list[str]]:
        """Of these records, the jobs that hold hosts (placed: a run.json); their hosts' labels."""
        return {r.ProcessingJobName: [h.Name or "" for h in r.Hosts.values()]
                for r in records if r.ProcessingJobName in self._placed}

    def waiting(self, records: list[JobDescription] | None = None) -> list[JobDescription]:
        """Jobs waiting for hosts, oldest first."""
        found = [r for r in (self._active_records() if records is None else records)
                 if r.ProcessingJobName in self._waiting]
        return sorted(found, key=lambda r: r.CreationTime or "")

    def free_hosts(self, records: list[JobDescription] | None = None) -> list[Host]:
        running = self._running(self._active_records() if records is None else records)
        busy = {label for labels in running.values() for label in labels}
        return [host for host in self.inventory.hosts if host.label not in busy]

    def poke(self) -> None:
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Place waiting jobs as hosts free up; take over jobs whose worker died; reap."""
        while True:
            try:
                await self.place()
                self._reap()
            except Exception:  # EMFILE, a full disk, a bug: the next round tries again
                log.exception("a scheduling round failed; retrying in %s s", RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REAP_EVERY):
                    await self._wake.wait()
            self._wake.clear()

    async def place(self) -> None:
        async with self._lock:
            records = self._active_records()  # the store read once for this round
            await self._adopt(records)
            free = self.free_hosts(records)
            for record in self.waiting(records):
                job_count = record.instance_count
                if len(free) < job_count:
                    break  # first come first served: a later, smaller job does not jump the queue
                await self._start(record, free[:job_count])
                free = free[job_count:]

    async def _start(self, record: JobDescription, hosts: list[Host]) -> None:
        name = record.ProcessingJobName
        job_record = self.store.record(name)
        run = RunRecord(RunId=uuid.uuid4().hex[:16], Controller=controller_id(self.store.home),
                        Request=self._request(name), Hosts=hosts, Options=self.options)
        job_record.save_run(run)
        self._placed.add(name)
        self._waiting.discard(name)
        job_record.update(Hosts=record_hosts(hosts), SecondaryStatus=None)
        log.info("%s: starting on %s", name, ", ".join(h.label for h in hosts))
        self.workers[name] = await self._spawn("serve-worker", name)

    def _request(self, name: str) -> dict:
        return json.loads((self.store.job_dir(name) / "request.json").read_text())

    async def _spawn(self, verb: str, name: str) -> asyncio.subprocess.Process:
        """A fleet process for the job, in its own session: a signal to `fleet serve` (or its
        terminal) does not reach it."""
        log_file = self.store.job_dir(name) / f"{verb}.log"
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleet", verb, name, stdin=asyncio.subprocess.DEVNULL,
                stdout=fd, stderr=fd, start_new_session=True,
                env={**os.environ, "FLEET_HOME": str(self.store.home)})
        finally:
            os.close(fd)

    async def _adopt(self, records: list[JobDescription]) -> None:
        """Running jobs without a live worker (this server restarted, a worker died): a
        `fleet attach` takes each over, as a user would. One that fails without ending the
        job (a run.json of a newer fleet, a race for the owner lock) is tried again after
        TAKEOVER_BACKOFF seconds, doubled each time, TAKEOVER_ATTEMPTS times in all."""
        for name in self._running(records):
            worker = self.workers.get(name)
            if worker is not None and worker.returncode is None:
                continue
            if self.store.owner(name) is not None:
                continue  # a worker of a previous `fleet serve` still runs it
            failed = self.takeovers.get(name)
            if failed is not None and self.clock() < failed.next_at:
                continue
            log.info("%s: no fleet process runs it; taking it over", name)
            self.workers[name] = await self._spawn("attach", name)
            self._taking_over.add(name)

    def _reap(self) -> None:
        for name, worker in list(self.workers.items()):
            if worker.returncode is not None:
                del self.workers[name]
                if name in self._taking_over:
                    self._taking_over.discard(name)
                    self._took_over(name, worker.returncode)
                self.poke()
        for name, stopper in list(self.stopping.items()):
            if stopper.returncode is not None:
                del self.stopping[name]

    def _took_over(self, name: str, code: int) -> None:
        """A `fleet attach` of the job exited: if the job did not end and no fleet process
        owns it, the take-over failed; the job waits longer for the next one, and ends Failed
        after TAKEOVER_ATTEMPTS, with what the last one said."""
        try:
            record = self.store.record(name)
        except FleetError:
            return
        if record.status in TERMINAL or self.store.owner(name) is not None:
            self.takeovers.pop(name, None)
            return
        failures = (self.takeovers[name].failures if name in self.takeovers else 0) + 1
        said = _last_line(self.store.job_dir(name) / "attach.log") or f"it exited with code {code}"
        if failures < TAKEOVER_ATTEMPTS:
            delay = TAKEOVER_BACKOFF * 2 ** (failures - 1)
            log.warning("%s: taking it over failed (%d of %d): %s; next try in %g s", name, failures,
                        TAKEOVER_ATTEMPTS, said, delay)
            self.takeovers[name] = TakeOver(failures, self.clock() + delay)
            return
        log.error("%s: taking it over failed %d times: %s; marking it Failed", name, failures, said)
        self.takeovers.pop(name, None)
        record.update(ProcessingJobStatus="Failed", SecondaryStatus=None, ProcessingEndTime=now(),
                      FailureReason=f"InternalServerError: fleet serve could not take the job over "
                                    f"({failures} attempts of `fleet attach`; its hosts may still run its "
                                    f"containers: `fleet gc` removes them): {said}"[:1024])

    # -- stop -------------------------------------------------------------------------------------
    async def stop(self, name: str) -> None:
        """Stop a job: a waiting one ends Stopped at once; a running one as `fleet stop` does
        (its worker gets SIGTERM: a graceful stop, as Ctrl-C; one without a worker is taken
        over and stopped at its hosts), by a `fleet stop` process of its own: one at a time
        per job (a stop asked for again while it runs is already being done: AWS answers a
        stop of a Stopping job with success)."""
        async with self._lock:
            record = self.store.record(name)
            if record.status in TERMINAL:
                return
            if not (self.store.job_dir(name) / "run.json").exists():
                record.update(ProcessingJobStatus="Stopped", SecondaryStatus=None, ProcessingEndTime=now())
                self._waiting.discard(name)
                return
            stopper = self.stopping.get(name)
            if stopper is not None and stopper.returncode is None:
                return
            (self.store.job_dir(name) / STOP_ASKED).touch(mode=0o600)
            self.stopping[name] = await self._spawn("stop", name)

    def stop_asked(self, name: str) -> bool:
        """A stop was asked for (Describe says Stopping until the job's process writes its end)."""
        return (self.store.job_dir(name) / STOP_ASKED).exists()

    async def close(self) -> None:
        """Stop serving: the workers go on (they own their jobs); nothing is killed. Their
        exits are not waited for (a `fleet serve` started later adopts them)."""
        self.workers.clear()


def _last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a process's log (of its last `tail` bytes), or ""."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - tail))
            data = file.read(tail)
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:512] if lines else ""


def spool_request(store: JobStore, name: str, request: dict) -> Path:
    """The validated request, kept until the job is placed (the worker reads run.json)."""
    path = store.job_dir(name) / "request.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(request, file)
    return path
