"""The `docker create` argv of one host: entrypoint rules, environment, mounts, GPUs, names.

Pure: the same job, host and addresses give the same argv, which `--dry-run` prints.

The Environment's values (often secrets) are never in the argv: every process's argv is
readable by every local user (/proc/PID/cmdline). They travel to the host on the session's
stdin. Those docker's env file carries become one there (`env_file_content`, 0600, removed
right after `docker create`) and the argv says `--env-file PATH`; the others (a newline, a
trailing carriage return) go through the docker process's own environment, and the argv
says `--env KEY`, the name alone (fleet/contract/environment.py). Docker keeps them in the
container's config, which only users of the docker socket can read.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.contract import environment as env
from fleet.contract.job import ProcessingJob
from fleet.errors import InvalidInput


@dataclass(frozen=True)
class Mount:
    """A host directory bind-mounted into the container."""

    source: str
    target: str
    read_only: bool = False

    def volume_arg(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


def gpus_arg(gpus: str | int | list[int | str] | None) -> str | None:
    """Docker's --gpus value: all → all; a count → that count; ids → "device=0,1" (quotes included)."""
    if gpus is None:
        return None
    if gpus == "all":
        return "all"
    if isinstance(gpus, int):
        return str(gpus)
    return '"device=' + ",".join(str(g) for g in gpus) + '"'


def entrypoint_and_command(job: ProcessingJob) -> tuple[str | None, list[str]]:
    """(--entrypoint value, words after the image), following the contract's four rules.

    Docker's --entrypoint takes one word, so the other entrypoint words go before the
    arguments. With --entrypoint Docker also drops the image's CMD, as the contract asks.
    """
    app = job.AppSpecification
    entrypoint = list(app.ContainerEntrypoint or [])
    arguments = list(app.ContainerArguments or [])
    if not entrypoint:
        return None, arguments  # image ENTRYPOINT; arguments (if any) replace its CMD
    return entrypoint[0], entrypoint[1:] + arguments


def env_file_content(environment: dict[str, str] | None) -> bytes:
    """Docker's env file for the values it carries (`environment.env_file_carries`): one
    `KEY=VALUE` line each, VALUE verbatim (docker reads everything after the first `=` as it
    is: no quoting, no escapes). The other values are not in it: see `inherited_environment`."""
    lines = []
    for key, value in env.split(environment)[0].items():
        problem = env.value_problem(key, value)
        if problem:
            raise InvalidInput(f"Environment: the value of {key} {problem}")
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode()


def inherited_environment(environment: dict[str, str] | None) -> dict[str, str]:
    """The values the container gets from the docker process's own environment (`--env KEY`):
    those docker's env file cannot carry, in the request's order."""
    inherited = env.split(environment)[1]
    for key, value in inherited.items():
        problem = env.value_problem(key, value)
        if problem:
            raise InvalidInput(f"Environment: the value of {key} {problem}")
    return inherited


def docker_create_argv(
    job: ProcessingJob,
    *,
    name: str,
    algo: str,
    peers: list[tuple[str, str]],
    mounts: list[Mount],
    stop_grace: int,
    labels: dict[str, str],
    env_file: str,
    gpus: str | int | list[int | str] | None = None,
    docker_args: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """`docker create` options and words (after the host's docker command) for one host.

    The container is created while the host is prepared (so a bad option fails before any
    container starts anywhere) and started detached once every host is ready.

    `env_file` is where the host has the env file (`env_file_content`) when `docker create`
    runs; the other values are named by `--env KEY`, for docker to take from its own
    environment (`inherited_environment`): the argv never holds a value.

    `name` is the container's name, `labels` its labels (empty values are left out), `gpus`
    and `docker_args` the host's inventory values. `peers` is (algo name, address) for every
    host of the job, this one included: with host networking, each algo-i resolves through
    /etc/hosts to where that host is reached.
    """
    argv = [
        "create",
        "--name", name,
        *[word for key, value in labels.items() if value for word in ("--label", f"{key}={value}")],
        "--hostname", algo,
        # SageMaker stops a job with SIGINT, then SIGKILL: `docker stop` does exactly that.
        "--stop-signal", "SIGINT",
        "--stop-timeout", str(stop_grace),
    ]
    if job.network_isolation:
        argv += ["--network", "none"]
    else:
        argv += ["--network", "host"]
        for peer, address in peers:
            argv += ["--add-host", f"{peer}:{address}"]
    for mount in mounts:
        argv += ["--volume", mount.volume_arg()]
    in_file, inherited = env.split(job.Environment)
    if in_file:
        argv += ["--env-file", env_file]
    for key in inherited:
        argv += ["--env", key]
    gpus_value = gpus_arg(gpus)
    if gpus_value is not None:
        argv += ["--gpus", gpus_value]
    argv += list(docker_args)
    entrypoint, command = entrypoint_and_command(job)
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint]
    argv.append(job.AppSpecification.ImageUri)
    argv += command
    return argv
