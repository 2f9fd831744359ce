"""The errors `fleet serve` answers, one class per AWS error code (as moto's services raise
them): each service's own codes live in its exceptions module (sagemaker/, logs/, sts/);
here the base and the codes of the protocol itself, which any request may meet before its
service sees it. The request pipeline (server.py) renders one in the shape of the request's
protocol: `{"__type": CODE, "message": ...}` for AWS JSON, `<ErrorResponse>` for STS's
Query protocol; botocore raises it as ClientError with that code."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """A request refused: `code` the AWS error code its class stands for, `message` what is
    wrong (naming the field, the job, the stream), `status` the HTTP status."""

    code: ClassVar[str]  # each subclass: its AWS error code
    status: int = 400  # the code's usual status; an instance may carry another (a 413 SerializationException)

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InternalFailure(ServiceError):
    """A bug of fleet's: the client gets a 500, the server goes on."""

    code = "InternalFailure"
    status = 500


class ServiceUnavailable(ServiceError):
    """Descriptors or memory ran out: botocore retries a 503."""

    code = "ServiceUnavailable"
    status = 503


class SerializationException(ServiceError):
    """A body that is not the protocol's (not a JSON object), or larger than serve reads."""

    code = "SerializationException"


class RequestTimeoutException(ServiceError):
    code = "RequestTimeoutException"
    status = 408


class UnknownOperationException(ServiceError):
    code = "UnknownOperationException"


class ValidationException(ServiceError):
    """A field of a request of the wrong type or out of its limits (SageMaker's and CloudWatch
    Logs' code alike)."""

    code = "ValidationException"
