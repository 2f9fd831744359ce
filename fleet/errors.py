"""fleet's one error hierarchy.

Every error a user can meet is a FleetError. Each kind knows the exit code
`fleet run` returns for it and, when it ends a job, the prefix SageMaker puts
in front of the job's FailureReason. cli.py is the one place that turns them
into exit codes; the executor is the one place that turns them into records.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleet reports to a user (never with a traceback)."""

    exit_code = 1
    failure_kind = "InternalServerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def failure_reason(self) -> str:
        """The DescribeProcessingJob FailureReason text, cut to the API's 1024 characters."""
        return f"{self.failure_kind}: {self.message}"[:1024]


class InvalidInput(FleetError):
    """job.json, hosts.yaml or the command line is wrong; nothing was started (exit 2)."""

    exit_code = 2
    failure_kind = "ValidationException"


class ResourceInUse(InvalidInput):
    """A job of that name already has a record (SageMaker's ResourceInUse; exit 2)."""

    failure_kind = "ResourceInUse"


class HostError(FleetError):
    """A host cannot be reached or used: SSH, host key, docker (exit 1)."""

    failure_kind = "ClientError"

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostLost(FleetError):
    """A host stayed out of reach (SSH) for longer than --host-timeout while its container
    ran (exit 1; SageMaker's InternalServerError)."""

    def __init__(self, algo: str, address: str, seconds: float) -> None:
        super().__init__(f"lost contact with {algo} ({address}) for {seconds:.0f} s")
        self.host = algo


class HostsFailed(FleetError):
    """Several hosts failed at one step: one line per host; the kind (exit code, FailureReason
    prefix) of the first host's error."""

    def __init__(self, errors: list[FleetError]) -> None:
        super().__init__("\n".join(error.message for error in errors))
        self.errors = errors
        self.exit_code = errors[0].exit_code
        self.failure_kind = errors[0].failure_kind

    @staticmethod
    def of(errors: list[FleetError]) -> FleetError:
        """The one error, or all of them as HostsFailed (one error shared by several hosts,
        e.g. the image's registry refusing the controller, counts once)."""
        errors = list({id(error): error for error in errors}.values())
        return errors[0] if len(errors) == 1 else HostsFailed(errors)


class ClientError(FleetError):
    """The job cannot run as asked: image pull, GPU, ExitMessage not UTF-8 (exit 1)."""

    failure_kind = "ClientError"


class AlgorithmError(FleetError):
    """A container exited non-zero (exit 1)."""

    failure_kind = "AlgorithmError"


class MaxRuntimeExceeded(FleetError):
    """StoppingCondition.MaxRuntimeInSeconds elapsed (exit 124)."""

    exit_code = 124
    failure_kind = "MaxRuntimeExceeded"


class InternalError(FleetError):
    """A bug of fleet's: the job still ends Failed (InternalServerError) and its hosts are
    cleaned; `fleet --debug` shows the traceback (exit 1)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"fleet failed unexpectedly: {exc!r}")


class JobStopped(FleetError):
    """The user stopped the job (Ctrl-C, SIGTERM): status Stopped (exit 130)."""

    exit_code = 130
    failure_kind = "Stopped"
