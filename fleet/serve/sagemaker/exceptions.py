"""SageMaker's error codes, a class each (botocore's sagemaker service-2.json names them)."""

from __future__ import annotations

from fleet.serve.errors import ServiceError, ValidationException

__all__ = ["ResourceInUse", "ResourceLimitExceeded", "ResourceNotFound", "ValidationException"]


class ResourceNotFound(ServiceError):
    """No such job, or one the caller may not see (the same answer)."""

    code = "ResourceNotFound"


class ResourceInUse(ServiceError):
    """A create of a name any principal's job already has."""

    code = "ResourceInUse"


class ResourceLimitExceeded(ServiceError):
    """More jobs waiting for hosts than `fleet serve --max-queued`."""

    code = "ResourceLimitExceeded"
