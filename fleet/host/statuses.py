"""The host scripts' exit statuses by name, and what each means to a user: one table.

`Status` is the one source of the names: every script's text starts with their shell
definitions (`shell_definitions`, put in front by fleet.host.script_text), so the .sh files
say `exit "$WRITE_FAILED"`, never a number with a comment.

`FAILURES` is the one place a status becomes an error: its kind (fleet.errors), hence its
exit code, and its message. The kind follows who can fix it. The machine's failures (docker
down or hung, a registry out of reach, a disk full, the job directory unwritable) are
HostError: `fleet run` exits 75 and a scheduler may requeue the job (Slurm's
`RequeueExit=75`), which can help once the machine is mended. The user's (a registry that
refuses the pull for want of credentials, a tag or manifest that does not exist, an image
docker cannot create or start a container of, a job name taken) are ClientError, exit 1: a
requeue would meet them again, forever.

Docker says why a pull failed only in words, so a status may have several rows: the first
whose words (any of them, case-insensitive) occur in what the host said wins; a row
without words matches any. The words are those of the engines fleet runs on (Docker 20.10
to 29, Podman 5), seen on the test bed (tests/integration/test_image_registry.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet.errors import ClientError, FleetError, HostError


class Status(enum.IntEnum):
    """Exit statuses of the host scripts (0: done; 1: a script's own generic failure)."""

    DOCKER_SILENT = 3  # cleanup: docker did not answer in time, the container may run on: all stays for fleet gc
    DOCKER_TIMEOUT = 20
    DOCKER_MISSING = 21
    DOCKER_FAILED = 22
    PULL_FAILED = 23
    WRITE_FAILED = 24
    CREATE_FAILED = 25
    NO_SPACE = 26
    NO_GPU_RUNTIME = 27
    IN_USE = 28
    START_FAILED = 30
    WAIT_FAILED = 31
    GONE = 32  # resume: the container is gone, or not this run's
    NOT_STARTED = 33  # resume: the container was never started
    LOAD_FAILED = 34  # load: docker load failed, or gave no image of the pushed ID
    NO_HTTP_CLIENT = 40  # fetch, put (the direct data path): neither curl nor GNU wget
    # A Slurm job step's SIGTERM (scancel, the time limit; transport srun only): the session
    # stopped the container, removed it and the job directory (step_end in supervise.sh).
    STEP_ENDED = 143


def shell_definitions() -> str:
    """The statuses as shell variables (`WRITE_FAILED=24`), the first lines of every script."""
    return "".join(f"{status.name}={status.value}\n" for status in Status)


@dataclass(frozen=True)
class Failure:
    """One row: a status (and words of the host's, if any) → an error kind and its message.
    The message is a format string over the caller's fields, plus `said` (what the host
    said: docker's words), `last` (its last line) and `status`."""

    status: Status
    kind: type[HostError] | type[ClientError]
    message: str
    words: tuple[str, ...] = ()

    def matches(self, status: int, said: str) -> bool:
        lowered = said.lower()
        return status == self.status and (not self.words or any(word in lowered for word in self.words))

    def error(self, label: str, fields: dict[str, object]) -> FleetError:
        text = self.message.format_map(fields)
        if self.kind is HostError:
            return HostError(label, text)
        return ClientError(f"{label}: {text}")


# Words of a pull the machine failed (checked first: "timeout" or a full disk is never the
# user's, whatever else the words say).
_UNREACHABLE = ("no space left on device", "connection refused", "no such host", "i/o timeout",
                "tls handshake timeout", "network is unreachable", "no route to host", "connection reset")
# Words of a registry refusing the pull, or of an image that is not there or not usable.
_REFUSED = ("no basic auth credentials", "unauthorized", "authentication required", "pull access denied",
            "requested access to the resource is denied", ": denied", "manifest unknown", "not found: manifest",
            "repository does not exist", "name unknown", "invalid reference format", "no matching manifest")

FAILURES: tuple[Failure, ...] = (
    Failure(Status.DOCKER_TIMEOUT, HostError, "docker did not answer within {docker_timeout} s{where}"),
    Failure(Status.DOCKER_MISSING, HostError, "docker command not found ({docker}): {said}"),
    Failure(Status.DOCKER_FAILED, HostError, "docker is not answering{where}: {said}"),
    Failure(Status.PULL_FAILED, HostError, "cannot pull image {image}{how}: {said}", _UNREACHABLE),
    Failure(Status.PULL_FAILED, ClientError, "cannot pull image {image}{how}: {said}", _REFUSED),
    Failure(Status.PULL_FAILED, HostError, "cannot pull image {image}{how}: {said}"),
    Failure(Status.CREATE_FAILED, ClientError, "docker could not create the container: {said}"),
    Failure(Status.NO_SPACE, HostError, "not enough free space in {workdir}: the job's VolumeSizeInGB needs "
                                        "{need}, {free} free"),
    Failure(Status.NO_GPU_RUNTIME, HostError, "the inventory gives this host GPUs but Docker there has no NVIDIA "
                                              "runtime and no CDI GPU devices; install the NVIDIA Container "
                                              "Toolkit on that host, or remove `gpus` from its inventory entry"),
    Failure(Status.IN_USE, ClientError, "the job directory {job_dir} belongs to another run of a job named "
                                        "{job_name} (run {last}); choose another name with --name, or remove "
                                        "leftovers with `fleet gc`"),
    Failure(Status.WRITE_FAILED, HostError, "cannot write the job directory {job_dir}: {said}"),
    # The host's setup, as NO_GPU_RUNTIME: docker there has no GPU driver.
    Failure(Status.START_FAILED, HostError, "Docker there cannot give the container GPUs ({said}); install the "
                                            "NVIDIA Container Toolkit on that host, or remove `gpus` from its "
                                            "inventory entry", ("could not select device driver",)),
    Failure(Status.START_FAILED, ClientError, "docker could not start the container: {said}"),
    Failure(Status.WAIT_FAILED, HostError, "lost track of the container {container} (docker wait failed): {said}"),
    Failure(Status.GONE, HostError, "the container {container} is gone: {said}"),
    Failure(Status.NOT_STARTED, HostError, "the container {container} was never started"),
    Failure(Status.LOAD_FAILED, HostError, "docker load of the image {image} failed: {said}"),
    Failure(Status.NO_HTTP_CLIENT, HostError, "data_path direct needs curl or GNU wget on the host; it has neither"),
    Failure(Status.STEP_ENDED, HostError, "Slurm ended the job step (scancel, or the time limit): the container "
                                          "was stopped and removed there"),
    Failure(Status.DOCKER_SILENT, HostError, "docker did not answer within {docker_timeout} s; container "
                                             "{container} and {job_dir} may remain: `fleet gc` removes them"),
)


class _Fields(dict[str, object]):
    """A field the caller did not give reads as `?` (a message is never lost to a KeyError)."""

    def __missing__(self, key: str) -> str:
        return "?"


def host_failure(status: int | None, label: str, said: str, **fields: object) -> FleetError | None:
    """The error a host script's exit `status` means, naming the host (`label`); `said` is
    what the host said on stderr (docker's words), `fields` the caller's facts its message
    uses (image, how, job_dir, container, docker_timeout, doing, docker, ...). None for a
    status the table lacks (0, 1, a lost channel's -1): the caller knows what that means."""
    if status is None:
        return None
    said = said.strip()
    doing = fields.get("doing")
    values = _Fields(said=said or "no reason given", last=said.splitlines()[-1] if said else "unknown",
                     status=status, where=f" ({doing})" if doing else "")
    values.update(fields)
    values.setdefault("docker", doing or "?")
    for row in FAILURES:
        if row.matches(status, said):
            return row.error(label, values)
    return None
