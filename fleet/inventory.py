"""hosts.yaml: the hosts a job may run on, parsed once into Host objects.

`defaults` holds any host key; a host's own value wins. Hosts keep inventory order:
the first N become algo-1..algo-N.
"""

from __future__ import annotations

import getpass
import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.contract.job import describe_validation_error, read_document
from fleet.errors import InvalidInput
from fleet.home import fleet_home

DEFAULT_SSH_WORKDIR = "/var/lib/fleet"
HOST_KEY_CHECKING = ("strict", "accept-new", "off")


class Host(BaseModel):
    """One machine of the inventory, with defaults already applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[str, Field(min_length=1)]
    name: str | None = None
    ip: str | None = None
    gpus: Literal["all"] | Annotated[int, Field(ge=1, strict=True)] | list[int | str] | None = None
    transport: Literal["ssh", "local"] = "ssh"
    user: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    identity_file: str | None = None
    # None: not set; the SSH config decides (UserKnownHostsFile, StrictHostKeyChecking),
    # else OpenSSH's defaults (~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts, strict).
    known_hosts: str | None = None
    host_key_checking: Literal["strict", "accept-new", "off"] | None = None
    workdir: str | None = None
    docker: str = "docker"
    docker_args: list[str] = []
    # How the host gets the job's image: `pull` from its registry (credentials lent by the
    # controller), `push` from the controller's Docker (or --image-archive) over SSH, or
    # `auto`: push when the controller has the image and the host lacks it, else pull.
    image_source: Literal["auto", "pull", "push"] = "auto"
    connect_timeout: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("host_key_checking", mode="before")
    @classmethod
    def _host_key_checking(cls, value: Any) -> Any:
        # YAML reads an unquoted off/no/false as false and on/yes/true as true: the README's
        # `host_key_checking: off` must mean off, and true means checking (OpenSSH's "yes").
        if isinstance(value, bool):
            return "strict" if value else "off"
        if value is not None and value not in HOST_KEY_CHECKING:
            raise ValueError(f"must be strict, accept-new or off (unquoted on/yes/true: strict; "
                             f"off/no/false: off); got {value!r}")
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, gpus: Any) -> Any:
        if isinstance(gpus, bool):
            raise ValueError("must be all, a count, or a list of device ids")
        if isinstance(gpus, list):
            if not gpus:
                raise ValueError("an empty list; leave `gpus` out for a host without GPUs")
            for gpu in gpus:
                if not str(gpu) or any(c in str(gpu) for c in ',"= '):
                    raise ValueError(f"device id {gpu!r} must not be empty or hold , \" = or a space")
        return gpus

    @field_validator("docker")
    @classmethod
    def _docker_words(cls, docker: str) -> str:
        if not shlex.split(docker):
            raise ValueError("must name the docker command, e.g. 'docker' or 'sudo docker'")
        return docker

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, workdir: str | None) -> str | None:
        if workdir is not None and (not workdir.startswith(("/", "~")) or ":" in workdir):
            raise ValueError(f"must be an absolute path without ':', got {workdir!r}")
        return workdir

    @model_validator(mode="after")
    def _remote_workdir_absolute(self) -> Host:
        if self.transport == "ssh" and self.workdir and not self.workdir.startswith("/"):
            raise ValueError(f"workdir must be absolute on an SSH host, got {self.workdir!r}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def title(self) -> str:
        """How fleet check and fleet gc name the host: `name (address)`, or the address."""
        return f"{self.label} ({self.address})" if self.label != self.address else self.label

    @property
    def docker_command(self) -> list[str]:
        return shlex.split(self.docker)

    @property
    def ssh_user(self) -> str:
        return self.user or getpass.getuser()

    @property
    def job_root(self) -> str:
        """The directory holding job directories on this host."""
        if self.workdir:
            return os.path.expanduser(self.workdir) if self.transport == "local" else self.workdir
        if self.transport == "local":
            return str(fleet_home() / "work")
        return DEFAULT_SSH_WORKDIR


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: Annotated[list[Host], Field(min_length=1)]
    # Registries the controller reaches over plain HTTP to resolve a tag (as dockerd's option
    # of that name; those on loopback always): host or host:port.
    insecure_registries: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+$")]] = []

    @model_validator(mode="after")
    def _distinct(self) -> Inventory:
        labels = [h.label for h in self.hosts]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ValueError(f"two hosts share the name {dup[0]!r}; give each a distinct `name`")
        return self


def parse_inventory(document: Any, source: str) -> Inventory:
    """Validate a hosts.yaml document: apply `defaults`, then check every host."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{source}: must be a mapping with `hosts:` (and optional `defaults:`)")
    unknown = sorted(set(document) - {"defaults", "hosts", "insecure_registries"})
    if unknown:
        raise InvalidInput(f"{source}: {unknown[0]}: unknown field "
                           f"(expected `defaults`, `hosts` and `insecure_registries`)")
    defaults = document.get("defaults") or {}
    hosts = document.get("hosts")
    if not isinstance(defaults, dict):
        raise InvalidInput(f"{source}: defaults: must be a mapping of host keys")
    if not isinstance(hosts, list) or not hosts:
        raise InvalidInput(f"{source}: hosts: must be a non-empty list of hosts")
    merged = []
    for i, host in enumerate(hosts):
        if not isinstance(host, dict):
            raise InvalidInput(f"{source}: hosts[{i}]: must be a mapping with at least `address`")
        merged.append({**defaults, **host})
    def written_at(loc: tuple) -> tuple:
        """Where a merged host's value was written: `defaults.KEY` unless the host has its own."""
        if len(loc) >= 3 and loc[0] == "hosts" and isinstance(loc[1], int) and loc[2] in defaults \
                and loc[2] not in hosts[loc[1]]:
            return ("defaults", *loc[2:])
        return loc

    try:
        inventory = Inventory.model_validate({"hosts": merged, "insecure_registries":
                                              document.get("insecure_registries") or []})
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(source, exc, relocate=written_at)) from exc
    for i, host in enumerate(inventory.hosts):
        if host.identity_file and host.transport == "ssh":
            path = Path(host.identity_file).expanduser()
            if not path.is_file():
                if written_at(("hosts", i, "identity_file")) == ("defaults", "identity_file"):
                    raise InvalidInput(f"{source}: defaults.identity_file {path} does not exist "
                                       f"(first needed by {host.label})")
                raise InvalidInput(f"{source}: hosts[{i}] ({host.label}): identity_file {path} does not exist")
    return inventory


def load_inventory(path: Path | None) -> Inventory:
    """hosts.yaml, or, without one, this machine alone (one local host)."""
    if path is None:
        return Inventory(hosts=[Host(address="localhost", name="localhost", transport="local")])
    return parse_inventory(read_document(path, "inventory", yaml_only=True), str(path))
