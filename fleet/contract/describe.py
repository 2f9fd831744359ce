"""The job's record: a DescribeProcessingJob response, plus fleet's own fields.

new_record writes it (a dict, as the store keeps describe.json: fields in the order they
were set, none null at the top); JobDescription reads it, typed, for the CLI, serve and the
store alike: an old record loads (every field but the name may be absent, and fields the
model does not name ride along), and `stored()` gives back the fields it was read from.
The store rewrites a record from its own dict, never from a model (same bytes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from fleet.contract.job import ProcessingJob

TERMINAL = ("Completed", "Failed", "Stopped")
# The request fields DescribeProcessingJob echoes back.
ECHOED = ("ProcessingInputs", "ProcessingOutputConfig", "ProcessingResources", "StoppingCondition",
          "AppSpecification", "Environment", "NetworkConfig", "RoleArn", "ExperimentConfig")


def now() -> str:
    return datetime.now(UTC).isoformat()


def new_record(job: ProcessingJob, arn: str, hosts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record of a job that was just created: InProgress, nothing started yet."""
    created = now()
    request = job.model_dump(mode="json", exclude_none=True)
    record: dict[str, Any] = {
        "ProcessingJobName": job.ProcessingJobName,
        "ProcessingJobArn": arn,
        "ProcessingJobStatus": "InProgress",
        "CreationTime": created,
        "LastModifiedTime": created,
    }
    record.update({key: request[key] for key in ECHOED if key in request})
    record["Hosts"] = hosts
    return record


class RecordedHost(BaseModel):
    """One host of the record's Hosts (algo-k): the inventory's name and address (plan.record_hosts)
    and, once its container ended, its ExitCode (null: it never started or was lost)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    Name: str | None = None
    Address: str | None = None
    ExitCode: int | None = None


class JobSummary(BaseModel):
    """What a look at every job reads of each (ListProcessingJobs, the log streams, the jobs
    page's rows, the metrics): a ProcessingJobSummary's fields and fleet's Hosts, Owner and
    SecondaryStatus; the rest of describe.json is skipped, so that 10,000 of them cost their
    summaries, not their requests. Times are ISO 8601 strings, as stored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ProcessingJobName: str
    ProcessingJobArn: str | None = None
    ProcessingJobStatus: str | None = None
    SecondaryStatus: str | None = None
    CreationTime: str | None = None
    LastModifiedTime: str | None = None
    ProcessingStartTime: str | None = None
    ProcessingEndTime: str | None = None
    FailureReason: str | None = None
    ExitMessage: str | None = None
    Hosts: dict[str, RecordedHost] = {}
    Owner: str | None = None

    @property
    def ended(self) -> bool:
        return self.ProcessingJobStatus in TERMINAL

    def stored(self) -> dict[str, Any]:
        """The fields the record was read from (a field it lacked stays absent), as JSON and in
        describe.json's order (new_record's, then the run's updates'): what `fleet list --json`
        prints and DescribeProcessingJob answers from."""
        fields = self.model_dump(mode="json", exclude_unset=True)
        return {key: fields[key] for key in sorted(fields, key=lambda key: _ORDER.get(key, len(_ORDER)))}


class JobDescription(JobSummary):
    """describe.json, read whole: DescribeProcessingJob's fields, and fleet's own (Hosts,
    Image, Transfers, ExitCode: what `fleet run` exited with; Owner: the serve profile that
    created it, absent for `fleet run`'s); fields it does not name ride along."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ProcessingInputs: list[Any] | None = None
    ProcessingOutputConfig: dict[str, Any] | None = None
    ProcessingResources: dict[str, Any] | None = None
    StoppingCondition: dict[str, Any] | None = None
    AppSpecification: dict[str, Any] | None = None
    Environment: dict[str, str] | None = None
    NetworkConfig: dict[str, Any] | None = None
    RoleArn: str | None = None
    ExperimentConfig: dict[str, Any] | None = None
    Image: dict[str, Any] | None = None
    Transfers: dict[str, Any] | None = None
    ExitCode: int | None = None

    @property
    def instance_count(self) -> int:
        """ProcessingResources.ClusterConfig.InstanceCount (as the request was validated)."""
        return int((self.ProcessingResources or {})["ClusterConfig"]["InstanceCount"])


# describe.json's fields in the order a run sets them: new_record's, then its updates' (fields
# not named here, an older or newer fleet's, come last, in the order read)
_ORDER = {key: i for i, key in enumerate((
    "ProcessingJobName", "ProcessingJobArn", "ProcessingJobStatus", "CreationTime", "LastModifiedTime", *ECHOED,
    "Hosts", "SecondaryStatus", "Owner", "Image", "ProcessingStartTime", "FailureReason", "ExitMessage",
    "ProcessingEndTime", "Transfers", "ExitCode"))}
