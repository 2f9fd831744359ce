"""The job's record: a DescribeProcessingJob response, plus fleet's `Hosts`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
