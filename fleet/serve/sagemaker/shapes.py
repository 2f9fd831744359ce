"""SageMaker's input shapes as serve reads them (botocore's sagemaker 2017-07-24
service-2.json: names, types, limits). CreateProcessingJob's is the job contract itself
(fleet/contract/job.py), parsed there."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator

from fleet.contract.job import JOB_NAME_PATTERN
from fleet.serve.errors import ValidationException
from fleet.serve.shapes import EpochSeconds, Shape


class JobNamed(Shape):
    """DescribeProcessingJob's and StopProcessingJob's input: a ProcessingJobName (1-63 of
    [a-zA-Z0-9-], as the name of a job's directory must be)."""

    ProcessingJobName: str

    @field_validator("ProcessingJobName", mode="before")
    @classmethod
    def _name(cls, name: Any) -> str:
        if not isinstance(name, str) or not re.fullmatch(JOB_NAME_PATTERN, name):
            raise ValidationException(f"ProcessingJobName {name!r} does not match {JOB_NAME_PATTERN}")
        return name


class ListProcessingJobs(Shape):
    CreationTimeAfter: EpochSeconds | None = Field(None, description="must be a number")
    CreationTimeBefore: EpochSeconds | None = Field(None, description="must be a number")
    LastModifiedTimeAfter: EpochSeconds | None = Field(None, description="must be a number")
    LastModifiedTimeBefore: EpochSeconds | None = Field(None, description="must be a number")
    NameContains: StrictStr | None = Field(None, description="must be a string")
    StatusEquals: StrictStr | None = Field(None, description="must be a string")
    SortBy: Literal["Name", "CreationTime", "Status"] = Field(
        "CreationTime", description="must be one of Name, CreationTime, Status")
    SortOrder: Literal["Ascending", "Descending"] = Field("Descending", description="must be Ascending or Descending")
    NextToken: StrictStr | None = Field(None, max_length=8192, description="must be a string of at most 8192")
    MaxResults: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        10, description="must be an integer between 1 and 100")
