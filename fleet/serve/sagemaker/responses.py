"""SageMaker's processing-job operations, each a dict in, a dict out, in the shapes of
botocore's service model (SageMaker 2017-07-24): CreateProcessingJob, DescribeProcessingJob,
ListProcessingJobs, StopProcessingJob.

Each operation acts for the Principal whose key signed the request (auth.py) and sees only
what that principal may (jobs.py). Names stay one namespace (one FLEET_HOME): a create of a
name another principal uses is ResourceInUse, saying nothing more about that job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet.contract.describe import JobSummary, new_record
from fleet.contract.job import parse_job
from fleet.data.sources import check_job_data
from fleet.errors import FleetError, ResourceInUse as NameTaken
from fleet.image.reference import parse_reference
from fleet.plan import job_arn
from fleet.runtime.store import JobStore, RecordCache
from fleet.serve.auth import Principal
from fleet.serve.jobs import OWNER, SUMMARY, epoch, owner, sees
from fleet.serve.paginator import paginate
from fleet.serve.sagemaker.exceptions import ResourceInUse, ResourceLimitExceeded, ResourceNotFound, ValidationException
from fleet.serve.sagemaker.shapes import JobNamed, ListProcessingJobs
from fleet.serve.scheduler import STARTING, Scheduler, spool_request

TIMESTAMPS = ("CreationTime", "LastModifiedTime", "ProcessingStartTime", "ProcessingEndTime")
_SORT_KEYS: dict[str, Callable[[JobSummary], str]] = {
    "Name": lambda r: r.ProcessingJobName, "CreationTime": lambda r: r.CreationTime or "",
    "Status": lambda r: r.ProcessingJobStatus or ""}


class SageMaker:
    """The operations on the jobs of `store`, run by `scheduler`; `summaries` the List cache."""

    def __init__(self, store: JobStore, scheduler: Scheduler, summaries: RecordCache, region: str,
                 account: str) -> None:
        self.store = store
        self.scheduler = scheduler
        self.summaries = summaries
        self.region = region
        self.account = account

    def operations(self) -> dict[str, Any]:
        """Operation name: handler."""
        return {"CreateProcessingJob": self.create, "DescribeProcessingJob": self.describe,
                "ListProcessingJobs": self.list_jobs, "StopProcessingJob": self.stop}

    async def create(self, request: dict, caller: Principal) -> dict:
        try:
            job = parse_job(request, "CreateProcessingJob")
            check_job_data(job, "CreateProcessingJob")
            parse_reference(job.AppSpecification.ImageUri)
        except FleetError as exc:
            raise ValidationException(exc.message) from None
        count, hosts = job.instance_count, len(self.scheduler.inventory.hosts)
        if count > hosts:
            raise ValidationException(f"ProcessingResources.ClusterConfig.InstanceCount: {count} instances asked "
                                      f"for; the inventory has {hosts} host(s)")
        if self.scheduler.queued() >= self.scheduler.max_queued:
            raise ResourceLimitExceeded(
                f"The account-level service limit 'Number of processing jobs waiting for hosts' is "
                f"{self.scheduler.max_queued} jobs, with current utilization of {self.scheduler.queued()} jobs "
                f"(fleet serve --max-queued). Retry once jobs have started or ended.")
        arn = job_arn(job, self.region, self.account)
        record = new_record(job, arn, {})
        record["SecondaryStatus"] = STARTING
        record[OWNER] = caller.name
        try:
            self.store.create(record)
        except NameTaken:  # whoever's it is: names are one namespace, its owner stays unsaid
            raise ResourceInUse(f"Job {job.ProcessingJobName} already exists") from None
        spool_request(self.store, job.ProcessingJobName, job.model_dump(mode="json", exclude_none=True))
        self.scheduler.added(job.ProcessingJobName)
        return {"ProcessingJobArn": arn}

    def _record(self, request: dict, caller: Principal) -> JobSummary:
        """The record of the job the request names if `caller` may see it; else
        ResourceNotFound, the same answer as for a job that does not exist."""
        name = JobNamed.parse(request).ProcessingJobName
        try:
            record = self.store.load(name)
        except FleetError:
            record = None
        if record is None or not sees(caller, record):
            raise ResourceNotFound(f"Processing job {name} does not exist")
        return record

    def _shaped(self, record: JobSummary) -> dict:
        """The record as DescribeProcessingJob answers it: timestamps as epoch seconds
        (fleet's own fields, Hosts, Image, Transfers, Owner, ride along: clients ignore them;
        Owner is filled in for a `fleet run` record, which names none);
        `Stopping` as soon as a stop was asked for (the job's own process writes its record:
        the server never does once it runs); a failed container's ExitMessage also in the
        FailureReason, which is all the SageMaker SDK shows of a failure."""
        shaped = record.stored()
        shaped[OWNER] = owner(record)
        for key in TIMESTAMPS:
            if isinstance(shaped.get(key), str):
                shaped[key] = epoch(shaped[key])
        if record.ProcessingJobStatus == "InProgress" and self.scheduler.stop_asked(record.ProcessingJobName):
            shaped["ProcessingJobStatus"] = "Stopping"
        reason, message = record.FailureReason, record.ExitMessage
        if reason and message and reason.startswith("AlgorithmError") and message not in reason:
            shaped["FailureReason"] = f"{reason}. ExitMessage: {message}"[:1024]
        return shaped

    async def describe(self, request: dict, caller: Principal) -> dict:
        return self._shaped(self._record(request, caller))

    async def list_jobs(self, request: dict, caller: Principal) -> dict:
        asked = ListProcessingJobs.parse(request)
        records = self.summaries.records()  # 10,000 jobs: 10,000 stats, and reads of the changed ones only
        chosen = [record for record in records if sees(caller, record) and _matches(asked, record)]
        chosen.sort(key=_SORT_KEYS[asked.SortBy], reverse=asked.SortOrder == "Descending")
        page = paginate(chosen, asked.NextToken, asked.MaxResults)
        answer: dict[str, Any] = {"ProcessingJobSummaries": [
            {key: value for key, value in self._shaped(r).items() if key in SUMMARY} for r in page.items]}
        if page.next_token is not None:
            answer["NextToken"] = page.next_token
        return answer

    async def stop(self, request: dict, caller: Principal) -> dict:
        record = self._record(request, caller)
        if record.ended:
            raise ValidationException(f"The processing job {record.ProcessingJobName} is "
                                      f"{record.ProcessingJobStatus}: it cannot be stopped")
        await self.scheduler.stop(record.ProcessingJobName)
        return {}


def _matches(asked: ListProcessingJobs, record: JobSummary) -> bool:
    """Whether ListProcessingJobs' filters keep the job (a bound excludes its own instant)."""
    if asked.NameContains and asked.NameContains not in record.ProcessingJobName:
        return False
    if asked.StatusEquals and record.ProcessingJobStatus != asked.StatusEquals:
        return False
    created = epoch(record.CreationTime)
    modified = epoch(record.LastModifiedTime or record.CreationTime)
    return ((asked.CreationTimeAfter is None or created > asked.CreationTimeAfter)
            and (asked.CreationTimeBefore is None or created < asked.CreationTimeBefore)
            and (asked.LastModifiedTimeAfter is None or modified > asked.LastModifiedTimeAfter)
            and (asked.LastModifiedTimeBefore is None or modified < asked.LastModifiedTimeBefore))
