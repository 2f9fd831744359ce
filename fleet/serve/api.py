"""The operations `fleet serve` answers, each a dict in, a dict out, in the shapes of
botocore's service models (SageMaker 2017-07-24, CloudWatch Logs 2014-03-28).

SageMaker: CreateProcessingJob, DescribeProcessingJob, ListProcessingJobs,
StopProcessingJob. CloudWatch Logs (what the SDK's `logs=True` and `aws logs tail` read):
DescribeLogStreams, GetLogEvents and FilterLogEvents on the log group
/aws/sagemaker/ProcessingJobs, one stream per host, `JOBNAME/algo-k-EPOCH` (EPOCH: the job's
creation, in seconds), each line an event timed by its arrival on the controller (logs.py).
Errors are ApiError(code, message): botocore raises them as ClientError with that code.

Each operation acts for the Principal whose key signed the request (auth.py). A job belongs
to the principal that created it (the record's `Owner`; a record without one was made by
`fleet run`: the controller's). A caller sees and stops only its own jobs unless it is an
admin: another's job is answered exactly as a job that does not exist (ResourceNotFound,
ResourceNotFoundException for its log streams; List leaves it out), as an IAM-scoped AWS
account shows nothing of another account's. Names stay one namespace (one FLEET_HOME): a
create of a name another principal uses is ResourceInUse, saying nothing more about that job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fleet.contract.describe import TERMINAL, new_record
from fleet.contract.job import JOB_NAME_PATTERN, parse_job
from fleet.data.sources import check_job_data
from fleet.errors import FleetError, ResourceInUse
from fleet.image.reference import parse_reference
from fleet.plan import job_arn
from fleet.runtime.store import JobStore, RecordCache
from fleet.serve import logs
from fleet.serve.auth import CONTROLLER, Principal
from fleet.serve.scheduler import STARTING, Scheduler, spool_request

log = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
TIMESTAMPS = ("CreationTime", "LastModifiedTime", "ProcessingStartTime", "ProcessingEndTime")
SUMMARY = ("ProcessingJobName", "ProcessingJobArn", "CreationTime", "ProcessingEndTime", "LastModifiedTime",
           "ProcessingJobStatus", "FailureReason", "ExitMessage")  # a ProcessingJobSummary's fields
OWNER = "Owner"  # fleet's field of the record: the name of the principal that created the job
# what List and the log streams' prefix search keep of each record
SUMMARY_FIELDS = (*SUMMARY, "Hosts", OWNER, "ProcessingStartTime")


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _validation(message: str) -> ApiError:
    return ApiError("ValidationException", message)


def _owner(record: dict) -> str:
    """Whose job it is: a record `fleet run` made names no owner, it is the controller's."""
    return record.get(OWNER) or CONTROLLER.name


def _sees(caller: Principal, record: dict) -> bool:
    """Whether `caller` may see (and stop) the job: its own, or any for an admin."""
    return caller.admin or _owner(record) == caller.name


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _integer(request: dict, key: str, default: int, low: int, high: int) -> int:
    """request[key], an integer in [low, high] (JSON's true and 1.5 are not), else ValidationException."""
    value = request.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _validation(f"{key} must be an integer between {low} and {high}")
    return value


def _number(request: dict, key: str) -> float | None:
    """request[key], a number (a timestamp: epoch seconds or milliseconds) or absent."""
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _validation(f"{key} must be a number")
    return float(value)


def _string(request: dict, key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise _validation(f"{key} must be a string")
    return value


class Api:
    def __init__(self, store: JobStore, scheduler: Scheduler, region: str, account: str) -> None:
        self.store = store
        self.scheduler = scheduler
        self.region = region
        self.account = account
        self.summaries = RecordCache(store, SUMMARY_FIELDS)  # for List: read again only when changed
        self.operations: dict[str, Callable[[dict, Principal], Awaitable[dict]]] = {
            "SageMaker.CreateProcessingJob": self.create,
            "SageMaker.DescribeProcessingJob": self.describe,
            "SageMaker.ListProcessingJobs": self.list_jobs,
            "SageMaker.StopProcessingJob": self.stop,
            "Logs_20140328.DescribeLogStreams": self.describe_log_streams,
            "Logs_20140328.GetLogEvents": self.get_log_events,
            "Logs_20140328.FilterLogEvents": self.filter_log_events,
        }

    async def warm(self) -> None:
        """Read every job's summary into the List cache, 64 records (~1.5 ms) at a time between
        other work: serve runs this right after it listens, so that the first ListProcessingJobs
        (and the page's first list) costs a stat per record, not a read and a parse (the page's
        first list of 10,000 jobs as a warm one, 68-127 ms on a busy 2-core machine, was 235-246
        cold against a 300 ms target: scripts/bench-page), while a Describe that comes meanwhile
        waits for one batch at most, and serve's start not at all."""
        try:
            for _ in self.summaries.warm():
                await asyncio.sleep(0)
        except OSError as exc:  # an unreadable jobs directory: List says so when asked; serve goes on
            log.warning("could not read the job records ahead of the first list: %s", exc)

    # -- SageMaker -------------------------------------------------------------------------------
    async def create(self, request: dict, caller: Principal) -> dict:
        try:
            job = parse_job(request, "CreateProcessingJob")
            check_job_data(job, "CreateProcessingJob")
            parse_reference(job.AppSpecification.ImageUri)
        except FleetError as exc:
            raise _validation(exc.message) from None
        count, hosts = job.instance_count, len(self.scheduler.inventory.hosts)
        if count > hosts:
            raise _validation(f"ProcessingResources.ClusterConfig.InstanceCount: {count} instances asked "
                              f"for; the inventory has {hosts} host(s)")
        if self.scheduler.queued() >= self.scheduler.max_queued:
            raise ApiError("ResourceLimitExceeded",
                           f"The account-level service limit 'Number of processing jobs waiting for hosts' is "
                           f"{self.scheduler.max_queued} jobs, with current utilization of "
                           f"{self.scheduler.queued()} jobs (fleet serve --max-queued). Retry once jobs have "
                           f"started or ended.")
        arn = job_arn(job, self.region, self.account)
        record = new_record(job, arn, {})
        record["SecondaryStatus"] = STARTING
        record[OWNER] = caller.name
        try:
            self.store.create(record)
        except ResourceInUse:  # whoever's it is: names are one namespace, its owner stays unsaid
            raise ApiError("ResourceInUse", f"Job {job.ProcessingJobName} already exists") from None
        spool_request(self.store, job.ProcessingJobName, job.model_dump(mode="json", exclude_none=True))
        self.scheduler.added(job.ProcessingJobName)
        return {"ProcessingJobArn": arn}

    def _record(self, name: Any, caller: Principal) -> dict:
        """The record of job `name` if `caller` may see it; else ResourceNotFound, the same
        answer as for a job that does not exist."""
        if not isinstance(name, str) or not re.fullmatch(JOB_NAME_PATTERN, name):
            raise _validation(f"ProcessingJobName {name!r} does not match {JOB_NAME_PATTERN}")
        try:
            record = self.store.load(name)
        except FleetError:
            record = None
        if record is None or not _sees(caller, record):
            raise ApiError("ResourceNotFound", f"Processing job {name} does not exist")
        return record

    def _shaped(self, record: dict) -> dict:
        """The record as DescribeProcessingJob answers it: timestamps as epoch seconds
        (fleet's own fields, Hosts, Image, Transfers, Owner, ride along: clients ignore them;
        Owner is filled in for a `fleet run` record, which names none);
        `Stopping` as soon as a stop was asked for (the job's own process writes its record:
        the server never does once it runs); a failed container's ExitMessage also in the
        FailureReason, which is all the SageMaker SDK shows of a failure."""
        shaped = dict(record)
        shaped[OWNER] = _owner(record)
        for key in TIMESTAMPS:
            if isinstance(shaped.get(key), str):
                shaped[key] = _epoch(shaped[key])
        name = record.get("ProcessingJobName", "")
        if shaped.get("ProcessingJobStatus") == "InProgress" and self.scheduler.stop_asked(name):
            shaped["ProcessingJobStatus"] = "Stopping"
        reason, message = shaped.get("FailureReason"), shaped.get("ExitMessage")
        if reason and message and reason.startswith("AlgorithmError") and message not in reason:
            shaped["FailureReason"] = f"{reason}. ExitMessage: {message}"[:1024]
        return shaped

    async def describe(self, request: dict, caller: Principal) -> dict:
        return self._shaped(self._record(request.get("ProcessingJobName"), caller))

    async def list_jobs(self, request: dict, caller: Principal) -> dict:
        contains = _string(request, "NameContains")
        status = _string(request, "StatusEquals")
        bounds = {key: _number(request, key) for key in ("CreationTimeAfter", "CreationTimeBefore",
                                                          "LastModifiedTimeAfter", "LastModifiedTimeBefore")}
        records = self.summaries.records()  # 10,000 jobs: 10,000 stats, and reads of the changed ones only
        chosen = []
        for record in records:
            if not _sees(caller, record):
                continue
            if contains and contains not in record.get("ProcessingJobName", ""):
                continue
            if status and record.get("ProcessingJobStatus") != status:
                continue
            created, modified = _epoch(record["CreationTime"]), _epoch(record.get("LastModifiedTime",
                                                                                   record["CreationTime"]))
            if bounds["CreationTimeAfter"] is not None and not created > float(bounds["CreationTimeAfter"]):
                continue
            if bounds["CreationTimeBefore"] is not None and not created < float(bounds["CreationTimeBefore"]):
                continue
            if bounds["LastModifiedTimeAfter"] is not None and not modified > float(bounds["LastModifiedTimeAfter"]):
                continue
            if bounds["LastModifiedTimeBefore"] is not None and not modified < float(bounds["LastModifiedTimeBefore"]):
                continue
            chosen.append(record)
        sort_by = request.get("SortBy", "CreationTime")
        keys = {"Name": lambda r: r["ProcessingJobName"], "CreationTime": lambda r: r["CreationTime"],
                "Status": lambda r: r.get("ProcessingJobStatus", "")}
        if sort_by not in keys:
            raise _validation(f"SortBy {sort_by!r}: one of Name, CreationTime, Status")
        order = request.get("SortOrder", "Descending")
        if order not in ("Ascending", "Descending"):
            raise _validation(f"SortOrder {order!r}: Ascending or Descending")
        chosen.sort(key=keys[sort_by], reverse=order == "Descending")
        limit = _integer(request, "MaxResults", 10, 1, 100)
        start = _token(request.get("NextToken"))
        page = chosen[start:start + limit]
        answer: dict[str, Any] = {"ProcessingJobSummaries": [
            {key: value for key, value in self._shaped(r).items() if key in SUMMARY}
            for r in page]}
        if start + limit < len(chosen):
            answer["NextToken"] = base64.urlsafe_b64encode(json.dumps({"at": start + limit}).encode()).decode()
        return answer

    async def stop(self, request: dict, caller: Principal) -> dict:
        record = self._record(request.get("ProcessingJobName"), caller)
        if record["ProcessingJobStatus"] in TERMINAL:
            raise _validation(f"The processing job {record['ProcessingJobName']} is "
                              f"{record['ProcessingJobStatus']}: it cannot be stopped")
        await self.scheduler.stop(record["ProcessingJobName"])
        return {}

    # -- CloudWatch Logs ---------------------------------------------------------------------------
    def _streams(self, prefix: str, caller: Principal) -> list[tuple[str, str, str, dict]]:
        """(stream name, job name, algo, record) of every job `caller` sees whose stream names
        start with `prefix` (every stream `caller` sees for "")."""
        job_name = prefix.split("/", 1)[0]
        if not job_name and prefix:
            return []
        if "/" in prefix:
            try:
                records = [self.store.load(job_name)]
            except FleetError:
                records = []
        else:  # many jobs, maybe every one: their summaries (a stat each), which keep what a stream needs
            records = [r for r in self.summaries.records() if r["ProcessingJobName"].startswith(prefix)]
        streams = []
        for record in records:
            name = record["ProcessingJobName"]
            if not _sees(caller, record):
                continue
            epoch = int(_epoch(record["CreationTime"]))
            for algo in record.get("Hosts", {}):
                stream = f"{name}/{algo}-{epoch}"
                if stream.startswith(prefix):
                    streams.append((stream, name, algo, record))
        return streams

    def _group(self, request: dict) -> None:
        if request.get("logGroupName") != LOG_GROUP:
            raise ApiError("ResourceNotFoundException", "The specified log group does not exist.")

    async def describe_log_streams(self, request: dict, caller: Principal) -> dict:
        self._group(request)
        prefix = request.get("logStreamNamePrefix") or ""
        if not isinstance(prefix, str) or not prefix:
            return {"logStreams": []}
        found = []
        for stream, name, algo, record in self._streams(prefix, caller):
            first, last, size = logs.stream_times(self._source(stream, name, algo, record))
            if not size:
                continue  # no event yet: CloudWatch shows a stream once it has one
            created = int(_epoch(record["CreationTime"]) * 1000)
            found.append({"logStreamName": stream, "creationTime": created, "firstEventTimestamp": first,
                          "lastEventTimestamp": last, "lastIngestionTime": last,
                          "uploadSequenceToken": "0", "storedBytes": size,
                          "arn": f"arn:aws:logs:{self.region}:{self.account}:log-group:{LOG_GROUP}:"
                                 f"log-stream:{stream}"})
        found.sort(key=lambda s: str(s["logStreamName"]), reverse=bool(request.get("descending")))
        limit = _integer(request, "limit", 50, 1, 50)
        start = _token(request.get("nextToken"))
        answer: dict[str, Any] = {"logStreams": found[start:start + limit]}
        if start + limit < len(found):
            answer["nextToken"] = base64.urlsafe_b64encode(json.dumps({"at": start + limit}).encode()).decode()
        return answer

    def _stream(self, stream: Any, caller: Principal) -> logs.Source:
        """The stream `stream` names, if `caller` may read it; else ResourceNotFoundException,
        the same answer as for a stream that does not exist."""
        match = re.fullmatch(r"([^/]+)/(algo-\d+)-(\d+)", stream if isinstance(stream, str) else "")
        if not match:
            raise ApiError("ResourceNotFoundException", "The specified log stream does not exist.")
        name, algo = match[1], match[2]
        try:
            record = self.store.load(name)
        except FleetError:
            raise ApiError("ResourceNotFoundException", "The specified log stream does not exist.") from None
        if algo not in record.get("Hosts", {}) or not _sees(caller, record):
            raise ApiError("ResourceNotFoundException", "The specified log stream does not exist.")
        return self._source(stream, name, algo, record)

    def _source(self, stream: str, name: str, algo: str, record: dict) -> logs.Source:
        return logs.Source(stream, self.store.log_path(name, algo), _stamp(record),
                           record.get("ProcessingJobStatus") in TERMINAL)

    async def get_log_events(self, request: dict, caller: Principal) -> dict:
        """A host's log as events, a line each, timed by their arrival on the controller
        (logs.py): `f/OFFSET` and `b/OFFSET` tokens; without one, the first page
        (`startFromHead`) or the last (the default, as CloudWatch's)."""
        self._group(request)
        source = self._stream(_string(request, "logStreamName"), caller)
        token = request.get("nextToken")
        if token is not None and (not isinstance(token, str) or not re.fullmatch(r"[fb]/\d{1,18}", token)):
            raise _validation(f"The specified nextToken is invalid: {token!r}")
        head = request.get("startFromHead", False)
        if not isinstance(head, bool):
            raise _validation("startFromHead must be true or false")
        return await asyncio.to_thread(
            logs.get_events, source, start_time=_millis(request, "startTime"), end_time=_millis(request, "endTime"),
            token=token, from_head=head, limit=_integer(request, "limit", logs.PAGE_EVENTS, 1, logs.PAGE_EVENTS))

    async def filter_log_events(self, request: dict, caller: Principal) -> dict:
        """FilterLogEvents on the streams named (logStreamNames) or starting with
        logStreamNamePrefix (every stream the caller sees without either), interleaved by time
        (logs.filter_events). Streams the caller may not see are left out, as unknown ones."""
        self._group(request)
        names, prefix = request.get("logStreamNames"), _string(request, "logStreamNamePrefix")
        if names is not None and prefix is not None:
            raise ApiError("InvalidParameterException",
                           "logStreamNames and logStreamNamePrefix cannot both be specified.")
        if names is not None and (not isinstance(names, list) or not 1 <= len(names) <= 100
                                  or not all(isinstance(n, str) for n in names)):
            raise ApiError("InvalidParameterException", "logStreamNames must be a list of 1 to 100 stream names")
        if request.get("startFromHead", True) is not True:
            raise ApiError("InvalidParameterException", "fleet serve answers FilterLogEvents oldest first only "
                                                        "(startFromHead true)")
        pattern, token = _string(request, "filterPattern") or "", _string(request, "nextToken")
        try:
            matches = logs.parse_pattern(pattern)
            after = logs.parse_token(token) if token is not None else None
        except ValueError as exc:
            raise ApiError("InvalidParameterException", str(exc)) from None
        if names is not None:
            sources = []
            for name in dict.fromkeys(names):
                try:
                    sources.append(self._stream(name, caller))
                except ApiError:
                    continue
        else:
            sources = [self._source(*found) for found in self._streams(prefix or "", caller)]
        return await asyncio.to_thread(
            logs.filter_events, sources, start_time=_millis(request, "startTime"),
            end_time=_millis(request, "endTime"), pattern=matches, token=after,
            limit=_integer(request, "limit", logs.PAGE_EVENTS, 1, logs.PAGE_EVENTS))


def _stamp(record: dict) -> int:
    """The time (ms) of the lines of a stream that no index times (an older fleet's run):
    when the job started (else was created)."""
    return int(_epoch(record.get("ProcessingStartTime") or record["CreationTime"]) * 1000)


def _millis(request: dict, key: str) -> int | None:
    """request[key], a time in ms since the epoch (CloudWatch's Timestamp: a whole number)."""
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _validation(f"{key} must be a whole number of milliseconds since the epoch")
    return value


def _token(token: Any) -> int:
    if token is None:
        return 0
    try:
        at = json.loads(base64.urlsafe_b64decode(str(token).encode()))["at"]
        if isinstance(at, int) and at >= 0:
            return at
    except (ValueError, KeyError, TypeError):
        pass
    raise _validation("The NextToken is invalid")
