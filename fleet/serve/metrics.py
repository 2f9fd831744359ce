"""`GET /metrics` of `fleet serve`: the Prometheus text exposition format (version 0.0.4).

What it shows, with no job name and no profile in any label (the label values are fixed sets:
the ProcessingJobStatus values, the operations serve answers, HTTP statuses):
- fleet_jobs{status}: the store's jobs by ProcessingJobStatus (`Stopping` as Describe says it);
- fleet_queue_length, fleet_queue_oldest_wait_seconds: the jobs waiting for hosts;
- fleet_hosts{state="busy"|"free"}: the inventory's hosts;
- fleet_api_requests_total{operation,code,error} and fleet_api_request_duration_seconds{operation}:
  the requests to `POST /` (an operation serve does not answer counts as `unknown`, so a
  client inventing names adds no series);
- fleet_job_duration_seconds{status}: ended jobs, from ProcessingStartTime to ProcessingEndTime.

A scrape costs O(jobs not ended), not O(records): JobCensus reads every record once (at
serve's start), then a job that ended is never looked at again (an ended job's status does
not change); the jobs still running are stat'ed (read only when their record changed), and
the jobs directory is listed again only when it changed (a job created or removed). With
10,000 records (100 waiting): 1.7 ms a scrape, 7.3 ms when a record was added since (the
listing), against 0.14 ms for an empty store and 120 ms for a ListProcessingJobs
(scripts/bench-metrics).

Written by hand rather than with prometheus_client: six families of fixed labels are ~100
lines, and serve takes no dependency and no process-global registry for them (the tests parse
the answer with prometheus_client's parser).
"""

from __future__ import annotations

import bisect
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiohttp import web

from fleet.contract.describe import TERMINAL, JobSummary
from fleet.errors import InvalidInput
from fleet.inventory import Inventory
from fleet.runtime.store import RACY_SECONDS, JobStore, RecordCache
from fleet.serve.auth import is_loopback
from fleet.serve.scheduler import STARTING, STOP_ASKED

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("InProgress", "Stopping", "Completed", "Failed", "Stopped")  # ProcessingJobStatus
UNKNOWN = "unknown"  # the operation label of a request naming none serve answers
# A handler dispatching on something else than X-Amz-Target (STS's Query protocol: an Action in
# a form body) names its operation to the middleware as request[OPERATION]; counted by name if
# it is one of Metrics' operations or KNOWN_ELSEWHERE, else as UNKNOWN.
OPERATION = web.RequestKey("fleet.operation", str)
KNOWN_ELSEWHERE = ("STS.GetCallerIdentity",)
OTHER = "other"  # the error label once MAX_ERRORS distinct ones were counted
MAX_ERRORS = 32  # distinct AWS error codes counted by name (serve's own are ~15)
# Seconds. An API call is a few ms (Describe p99 < 50 ms under load); GetLogEvents reads up to 1 MB.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds. A no-op job takes ~2 s on 3 hosts; processing jobs run minutes to days.
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


def _epoch(iso: object) -> float | None:
    try:
        return datetime.fromisoformat(str(iso)).timestamp() if iso else None
    except ValueError:
        return None


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


@dataclass
class Histogram:
    """Observations in fixed buckets, per label value (the caller bounds the label values)."""

    buckets: tuple[float, ...]
    counts: dict[str, list[int]] = field(default_factory=dict)  # per bucket, not cumulative; +Inf last
    sums: dict[str, float] = field(default_factory=dict)

    def observe(self, label: str, value: float) -> None:
        counts = self.counts.setdefault(label, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[label] = self.sums.get(label, 0.0) + value

    def lines(self, name: str, label_name: str) -> list[str]:
        lines = []
        for label in sorted(self.counts):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), self.counts[label]):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{{label_name}="{label}",le="{le}"}} {running}')
            lines.append(f'{name}_sum{{{label_name}="{label}"}} {self.sums[label]!r}')
            lines.append(f'{name}_count{{{label_name}="{label}"}} {running}')
        return lines


@dataclass
class _Active:
    """What the census keeps of a job not ended: enough for the gauges, no request."""

    status: str
    created: float | None
    waiting: bool
    hosts: tuple[str, ...]


class JobCensus:
    """The store's jobs counted by status, kept up to date at O(jobs not ended) a refresh."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.ended: dict[str, str] = {}  # name -> its terminal status: never read again
        self.active: dict[str, _Active | None] = {}  # None: no record yet (being created)
        self.counts = dict.fromkeys(TERMINAL, 0)
        self.durations = Histogram(JOB_BUCKETS)
        self._records = RecordCache(store, JobSummary)
        self._listed: tuple[int, int, int, int] | None = None  # the jobs directory's stat when last listed

    def refresh(self) -> None:
        self._list()
        for name in list(self.active):
            self._look(name)

    def _list(self) -> None:
        """List the jobs directory again if it changed since (a job created or removed changes
        its mtime; one that changed within RACY_SECONDS is listed again next time, as a
        second change in the same clock tick would not show)."""
        try:
            stat = os.stat(self.store.jobs)
        except FileNotFoundError:
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_nlink)
        if stamp == self._listed:
            return
        names = {entry.name for entry in os.scandir(self.store.jobs) if entry.is_dir()}
        settled = time.time_ns() - stat.st_mtime_ns > RACY_SECONDS * 1e9
        self._listed = stamp if settled else None
        for name in names.difference(self.ended).difference(self.active):
            self.active[name] = None
        for name in self.ended.keys() - names:
            self.counts[self.ended.pop(name)] -= 1
        for name in self.active.keys() - names:
            del self.active[name]
            self._records.forget(name)

    def _look(self, name: str) -> None:
        record = self._records.load(name)
        if record is None:
            self.active[name] = None
            return
        status = record.ProcessingJobStatus
        if status in TERMINAL:
            del self.active[name]
            self._records.forget(name)
            self.ended[name] = str(status)
            self.counts[str(status)] += 1
            started, ended = _epoch(record.ProcessingStartTime), _epoch(record.ProcessingEndTime)
            if started is not None and ended is not None:
                self.durations.observe(str(status), max(0.0, ended - started))
            return
        labels = tuple(host.Name or "" for host in record.Hosts.values())
        if status == "InProgress" and (self.store.job_dir(name) / STOP_ASKED).exists():
            status = "Stopping"
        self.active[name] = _Active(str(status), _epoch(record.CreationTime),
                                    status == "InProgress" and record.SecondaryStatus == STARTING, labels)

    def by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(self.counts)
        for job in self.active.values():
            if job is not None and job.status in counts:
                counts[job.status] += 1
        return counts


class RequestCounts:
    """The API's requests by operation, HTTP status and AWS error code, and their latency by
    operation. Bounded: operations outside `operations` count as UNKNOWN, statuses outside
    100-599 as 0, error codes past MAX_ERRORS distinct ones as OTHER."""

    def __init__(self, operations: Iterable[str]) -> None:
        self.operations = frozenset(operations).union(KNOWN_ELSEWHERE)
        self.requests: dict[tuple[str, int, str], int] = {}
        self.latency = Histogram(REQUEST_BUCKETS)
        self._errors: set[str] = set()

    def operation(self, target: str | None) -> str:
        return target if target in self.operations else UNKNOWN

    def count(self, target: str | None, status: int, error: str, seconds: float) -> None:
        operation = self.operation(target)
        if error and error not in self._errors:
            if len(self._errors) >= MAX_ERRORS or not error.isidentifier():
                error = OTHER
            else:
                self._errors.add(error)
        key = (operation, status if 100 <= status <= 599 else 0, error)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe(operation, seconds)


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


class Metrics:
    """The exposition, and who may read it: with a token, a request bearing it
    (`Authorization: Bearer TOKEN`); without one, any request if serve listens on loopback,
    none otherwise (a Prometheus scraper cannot sign SigV4; a job count is not for the whole
    network to read)."""

    def __init__(self, store: JobStore, inventory: Inventory, operations: Iterable[str], *,
                 token: str | None, open_without_token: bool) -> None:
        self.census = JobCensus(store)
        self.inventory = inventory
        self.requests = RequestCounts(operations)
        self.token = token
        self.open_without_token = open_without_token
        self.clock = time.time

    def exposition(self) -> str:
        self.census.refresh()
        now = self.clock()
        lines: list[str] = []
        _family(lines, "fleet_jobs", "gauge", "Jobs in the store by ProcessingJobStatus.")
        lines += [f'fleet_jobs{{status="{status}"}} {count}' for status, count in self.census.by_status().items()]
        waiting = [job for job in self.census.active.values() if job is not None and job.waiting]
        created = [job.created for job in waiting if job.created is not None]
        _family(lines, "fleet_queue_length", "gauge", "Jobs waiting for hosts.")
        lines.append(f"fleet_queue_length {len(waiting)}")
        _family(lines, "fleet_queue_oldest_wait_seconds", "gauge",
                "How long the job waiting longest for hosts has waited (0: none waits).")
        lines.append(f"fleet_queue_oldest_wait_seconds {_number(max(0.0, now - min(created)) if created else 0)}")
        busy_labels = {label for job in self.census.active.values() if job is not None and not job.waiting
                       for label in job.hosts}
        busy = sum(1 for host in self.inventory.hosts if host.label in busy_labels)
        _family(lines, "fleet_hosts", "gauge", "The inventory's hosts, busy with a job or free.")
        lines.append(f'fleet_hosts{{state="busy"}} {busy}')
        lines.append(f'fleet_hosts{{state="free"}} {len(self.inventory.hosts) - busy}')
        _family(lines, "fleet_api_requests_total", "counter",
                "API requests (POST /) by operation, HTTP status and AWS error code.")
        lines += [f'fleet_api_requests_total{{operation="{op}",code="{code}",error="{error}"}} {count}'
                  for (op, code, error), count in sorted(self.requests.requests.items())]
        _family(lines, "fleet_api_request_duration_seconds", "histogram",
                "API request latency, from the request's head to its answer.")
        lines += self.requests.latency.lines("fleet_api_request_duration_seconds", "operation")
        _family(lines, "fleet_job_duration_seconds", "histogram",
                "Ended jobs that started, from ProcessingStartTime to ProcessingEndTime, by status.")
        lines += self.census.durations.lines("fleet_job_duration_seconds", "status")
        return "\n".join(lines) + "\n"

    def allowed(self, request: web.Request) -> bool:
        if self.token is None:
            # Open on a loopback listen, to this machine's own clients: a web page whose name
            # an attacker rebinds to 127.0.0.1 (DNS rebinding) reaches the port too, but its
            # requests name the attacker's host.
            return self.open_without_token and _names_loopback(request.headers.get("Host", ""))
        given = request.headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token.encode())

    async def handle(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            if self.token is None:
                return web.Response(status=403, text="/metrics is served only on a loopback --listen, or with "
                                                     "--metrics-token-file\n")
            return web.Response(status=401, text="/metrics needs Authorization: Bearer TOKEN "
                                                 "(of --metrics-token-file)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="fleet serve metrics"'})
        return web.Response(body=self.exposition().encode(), headers={"Content-Type": CONTENT_TYPE})

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Count and time the API's requests (POST /); pass every other one through."""
        if request.method != "POST" or request.path != "/":
            return await handler(request)
        start = time.monotonic()
        target = request.headers.get("X-Amz-Target")
        status, error = 500, "InternalFailure"
        try:
            response = await handler(request)
            status, error = response.status, response.headers.get("x-amzn-ErrorType", "")
            return response
        except web.HTTPException as exc:
            status, error = exc.status, ""
            raise
        finally:
            self.requests.count(request.get(OPERATION, target), status, error, time.monotonic() - start)


def read_token(path: Path) -> str:
    """The bearer token of --metrics-token-file: its one line, 16 characters at least; the file
    readable by its owner alone (as a credentials file)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--metrics-token-file {path}: cannot read it: {exc}") from exc
    if mode & 0o077:
        raise InvalidInput(f"--metrics-token-file {path}: others can read it (mode {mode & 0o777:o}); "
                           f"chmod 600 {path}")
    token = text.strip()
    if len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidInput(f"--metrics-token-file {path}: the token must be one line of 16 or more printable "
                           f"characters, without spaces")
    return token


def _names_loopback(host: str) -> bool:
    """A Host header naming this machine's loopback: localhost, 127.x.y.z or [::1], with or
    without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return is_loopback(name)
