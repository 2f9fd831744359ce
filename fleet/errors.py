"""fleet's one error hierarchy.

Every error a user can meet is a FleetError. Each kind knows the exit code
`fleet run` returns for it and, when it ends a job, the prefix SageMaker puts
in front of the job's FailureReason. cli.py is the one place that turns them
into exit codes; the executor is the one place that turns them into records.

The exit code and the FailureReason prefix are separate on purpose: the prefix is
SageMaker's word (a host that cannot pull is a `ClientError` there too), the exit code is
for a batch scheduler deciding whether to run the job again. Failures of the machinery
(HostError, HostLost: a host unreachable or lost, SSH refused, docker down or hung, a
registry out of reach, a disk full) exit MACHINERY_EXIT, so that a retry policy (Slurm's
`RequeueExit=75`) can requeue those and only those; the job's own failures
(AlgorithmError), a request that cannot run as asked (ClientError: a registry refusing the
pull for want of credentials, an unknown tag) and fleet's bugs
(InternalError) exit 1, as running them again would fail again. What each status of the
host scripts means is one table: fleet/host/statuses.py.
"""

from __future__ import annotations

MACHINERY_EXIT = 75  # sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry"


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
    """A host cannot be reached or used: SSH, host key, docker, a registry out of its reach,
    its disk (exit 75)."""

    exit_code = MACHINERY_EXIT
    failure_kind = "ClientError"

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostLost(FleetError):
    """A host stayed out of reach (SSH) for longer than --host-timeout while its container
    ran (exit 75; SageMaker's InternalServerError)."""

    exit_code = MACHINERY_EXIT

    def __init__(self, algo: str, address: str, seconds: float) -> None:
        super().__init__(f"lost contact with {algo} ({address}) for {seconds:.0f} s")
        self.host = algo


class HostsFailed(FleetError):
    """Several hosts failed at one step: one line per host; the FailureReason prefix of the
    first host's error. The exit code is MACHINERY_EXIT only when every host's error is the
    machinery's; otherwise the first other error's code (a requeue would meet that one
    again: a host that could not pull beside one whose request is refused exits 1)."""

    def __init__(self, errors: list[FleetError]) -> None:
        super().__init__("\n".join(error.message for error in errors))
        self.errors = errors
        self.exit_code = next((e.exit_code for e in errors if e.exit_code != MACHINERY_EXIT), MACHINERY_EXIT)
        self.failure_kind = errors[0].failure_kind

    @staticmethod
    def of(errors: list[FleetError]) -> FleetError:
        """The one error, or all of them as HostsFailed (one error shared by several hosts,
        e.g. the image's registry refusing the controller, counts once)."""
        errors = list({id(error): error for error in errors}.values())
        return errors[0] if len(errors) == 1 else HostsFailed(errors)


class ClientError(FleetError):
    """The job cannot run as asked: the registry refuses the image, an input matches nothing,
    docker refuses the container, ExitMessage not UTF-8 (exit 1: running it again fails again)."""

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
