"""CloudWatch Logs' error codes, a class each (botocore's logs service-2.json names them)."""

from __future__ import annotations

from fleet.serve.errors import ServiceError, ValidationException

__all__ = ["InvalidParameterException", "ResourceNotFoundException", "ValidationException"]


class ResourceNotFoundException(ServiceError):
    """No such log group or stream, or a stream of a job the caller may not see (the same answer)."""

    code = "ResourceNotFoundException"


class InvalidParameterException(ServiceError):
    """A parameter CloudWatch Logs would take that fleet does not (a regex filterPattern), or a
    combination it refuses (logStreamNames with logStreamNamePrefix)."""

    code = "InvalidParameterException"
