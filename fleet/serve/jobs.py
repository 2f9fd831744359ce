"""What serve knows of a job record beyond the record itself: whose it is and who may see
it, shared by the SageMaker and CloudWatch Logs services (a job's log streams are as visible
as the job).

A job belongs to the principal that created it (the record's `Owner`; a record without one
was made by `fleet run`: the controller's). A caller sees and stops only its own jobs unless
it is an admin: another's job is answered exactly as a job that does not exist
(ResourceNotFound, ResourceNotFoundException for its log streams; List leaves it out), as an
IAM-scoped AWS account shows nothing of another account's."""

from __future__ import annotations

from datetime import datetime

from fleet.contract.describe import JobSummary
from fleet.serve.auth import CONTROLLER, Principal

OWNER = "Owner"  # fleet's field of the record: the name of the principal that created the job
SUMMARY = ("ProcessingJobName", "ProcessingJobArn", "CreationTime", "ProcessingEndTime", "LastModifiedTime",
           "ProcessingJobStatus", "FailureReason", "ExitMessage")  # a ProcessingJobSummary's fields


def owner(record: JobSummary) -> str:
    """Whose job it is: a record `fleet run` made names no owner, it is the controller's."""
    return record.Owner or CONTROLLER.name


def sees(caller: Principal, record: JobSummary) -> bool:
    """Whether `caller` may see (and stop) the job: its own, or any for an admin."""
    return caller.admin or owner(record) == caller.name


def epoch(iso: str | None) -> float:
    """An ISO time of the record as epoch seconds (0 for none: a record without it sorts first)."""
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0
