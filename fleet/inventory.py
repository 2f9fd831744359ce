"""hosts.yaml: the hosts a job may run on, parsed once into Host objects.

`hosts` is a list of hosts, a Slurm hostlist expression (`"gpu-[01-04,07],dgx[1-2]"`), or a
source: `{from: slurm}` (the current allocation), `{from: pbs}` ($PBS_NODEFILE) or
`{from: file, path: FILE}` (a pdsh / MPI hostfile). Each host is the host of its `transport`
(SshHost, the default; LocalHost; SrunHost), which takes its own settings and refuses the
others'. `defaults` holds any host key; each host takes those its transport has, and its own
value wins. Hosts keep inventory order (for a source, the scheduler's order): the first N
become algo-1..algo-N.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from fleet.contract.job import describe_validation_error, read_document
from fleet.errors import InvalidInput
from fleet.home import fleet_home
from fleet.hostlist import expand as expand_hostlist

DEFAULT_SSH_WORKDIR = "/var/lib/fleet"
HOST_KEY_CHECKING = ("strict", "accept-new", "off")
# `--inventory slurm`: this word, never a file, means `{hosts: {from: slurm}}` (load_inventory).
ALLOCATION_WORD = "slurm"
HOST_SOURCES = ("slurm", "pbs", "file")
PRIVILEGE_PROGRAMS = ("sudo", "doas", "pkexec", "su", "run0")
"""Programs that run a host's docker command as another user (`docker: sudo docker`). Two
things follow, and both readers use this one list: the engine's socket may not be the SSH
user's to open, so fleet reaches the engine through the command itself (fleet.engine.connect:
dial-stdio); and docker starts with a fresh environment (sudo, doas, pkexec and run0 reset
it, su resets PATH and HOME), so a value only docker's environment carries cannot reach the
container (fleet.contract.environment)."""


class BaseHost(BaseModel):
    """What every host has, whatever reaches it: its names, GPUs, job directory, docker
    command and data path. Each transport's host (SshHost, LocalHost, SrunHost) adds its own
    settings, and only those: an SSH key given to a local host is refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How the job directory must be written on this kind of host ("" where any form is
    # fine): a remote host's workdir is absolute (~ is the controller's home, not the host's).
    _remote_kind: ClassVar[str] = ""

    address: Annotated[str, Field(min_length=1)]
    name: str | None = None
    ip: str | None = None
    gpus: Literal["all"] | Annotated[int, Field(ge=1, strict=True)] | list[int | str] | None = None
    workdir: str | None = None
    docker: str = "docker"
    docker_args: list[str] = []
    # The engine's API socket on the host (fleet.engine: reached through the SSH connection
    # itself). Unset: from the docker command (DOCKER_HOST=unix://..., -H unix://...), else
    # /var/run/docker.sock (podman: /run/podman/podman.sock). Set it where the host's login
    # environment or a docker context points the CLI elsewhere.
    engine_socket: str | None = None
    # How the host gets the job's image: `pull` from its registry (credentials lent by the
    # controller), `push` from the controller's Docker (or --image-archive) over SSH, or
    # `auto`: push when the controller has the image and the host lacks it, else pull.
    image_source: Literal["auto", "pull", "push"] = "auto"
    # How the job's S3 bytes reach the host: through the controller (its S3 client, then
    # SSH), or `direct`: the host's own curl / wget with URLs the controller presigns
    # (fleet.data.direct); credentials stay on the controller either way.
    data_path: Literal["controller", "direct"] = "controller"

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

    @field_validator("engine_socket")
    @classmethod
    def _engine_socket(cls, socket: str | None) -> str | None:
        if socket is not None and (not socket.startswith("/") or "\n" in socket):
            raise ValueError(f"must be an absolute path on the host, got {socket!r}")
        return socket

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, workdir: str | None) -> str | None:
        if workdir is not None and (not workdir.startswith(("/", "~")) or ":" in workdir):
            raise ValueError(f"must be an absolute path without ':', got {workdir!r}")
        return workdir

    @model_validator(mode="after")
    def _remote_workdir_absolute(self) -> BaseHost:
        if self._remote_kind and self.workdir and not self.workdir.startswith("/"):
            raise ValueError(f"workdir must be absolute on {self._remote_kind}, got {self.workdir!r}")
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
    def privilege_program(self) -> str | None:
        """The word of the docker command (`sudo docker`) that runs docker as another user
        (PRIVILEGE_PROGRAMS), or None."""
        words = self.docker_command
        first = posixpath.basename(words[0]) if words else ""
        return first if first in PRIVILEGE_PROGRAMS else None

    @property
    def job_root(self) -> str:
        """The directory holding job directories on this host."""
        return self.workdir or DEFAULT_SSH_WORKDIR


class SshHost(BaseHost):
    """A host fleet reaches over SSH (fleet.transport.ssh), the default. Its settings are
    `ssh -l USER -p PORT -i FILE -o UserKnownHostsFile=... -o StrictHostKeyChecking=... -o
    ConnectTimeout=...`'s; left unset, the SSH config decides, as for `ssh`."""

    _remote_kind: ClassVar[str] = "an SSH host"

    transport: Literal["ssh"] = "ssh"
    user: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    identity_file: str | None = None
    # None: not set; the SSH config decides (UserKnownHostsFile, StrictHostKeyChecking),
    # else OpenSSH's defaults (~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts, strict).
    known_hosts: str | None = None
    host_key_checking: Literal["strict", "accept-new", "off"] | None = None
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

    @property
    def ssh_user(self) -> str:
        return self.user or getpass.getuser()


class LocalHost(BaseHost):
    """This machine, commands run as subprocesses (fleet.transport.local): nothing to log
    in to, so no settings of its own; `workdir` may start with ~ (this user's home)."""

    transport: Literal["local"] = "local"

    @property
    def job_root(self) -> str:
        if self.workdir:
            return os.path.expanduser(self.workdir)
        return str(fleet_home() / "work")


class SrunHost(BaseHost):
    """A node of the current Slurm allocation, each command a job step on it
    (fleet.transport.srun): no SSH keys, no settings of its own; the node's paths follow
    the SSH rules (workdir absolute)."""

    _remote_kind: ClassVar[str] = "an srun host (a Slurm node)"

    transport: Literal["srun"] = "srun"


HOST_KINDS: dict[str, type[BaseHost]] = {"ssh": SshHost, "local": LocalHost, "srun": SrunHost}
DEFAULT_TRANSPORT = "ssh"  # a host that names no transport
# Every key some kind of host takes: a key outside it is unknown; one inside it that the
# host's own kind lacks belongs to another transport (refused naming that transport).
HOST_KEYS = frozenset(key for kind in HOST_KINDS.values() for key in kind.model_fields)


def _transport_of(host: Any) -> str | None:
    """The union's tag: a host's `transport`, DEFAULT_TRANSPORT when it names none."""
    transport = host.get("transport", DEFAULT_TRANSPORT) if isinstance(host, dict) else \
        getattr(host, "transport", DEFAULT_TRANSPORT)
    return transport if isinstance(transport, str) else None


Host = Annotated[Annotated[SshHost, Tag("ssh")] | Annotated[LocalHost, Tag("local")]
                 | Annotated[SrunHost, Tag("srun")], Discriminator(_transport_of)]
"""One machine of the inventory, with defaults already applied: the host of its transport
(a union tagged by `transport`, pyinfra's connectors' way: each declares its settings)."""


def transport_keys(transport: str) -> frozenset[str]:
    """The keys a host of this transport takes."""
    return frozenset(HOST_KINDS[transport].model_fields)


def stored_host(host: Any) -> Any:
    """A host as run.json holds it, read back. An older fleet gave every host the SSH
    settings (at their defaults on a local or srun host): those its transport does not take
    are dropped, so a job it started can still be attached to and stopped."""
    if isinstance(host, dict) and _transport_of(host) in HOST_KINDS:
        keys = transport_keys(host.get("transport", DEFAULT_TRANSPORT))
        return {key: value for key, value in host.items() if key in keys or key not in HOST_KEYS}
    return host


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


def parse_inventory(document: Any, source: str, *, base: Path | None = None) -> Inventory:
    """Validate a hosts.yaml document: expand `hosts`, apply `defaults`, then check every host.

    `base` is the directory a `{from: file}` path is relative to: the inventory file's
    (load_inventory passes it), else the current directory.
    """
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
    # What the source says of its hosts (a Slurm node's GPUs, the srun transport): below
    # `defaults`, so what the user wrote wins.
    suggested: dict[str, Any] = {}
    generated = not isinstance(hosts, list)
    if isinstance(hosts, list) and hosts:
        for i, host in enumerate(hosts):
            if not isinstance(host, dict):
                raise InvalidInput(f"{source}: hosts[{i}]: must be a mapping with at least `address`")
    elif isinstance(hosts, str) or (isinstance(hosts, dict) and "from" in hosts):
        names, suggested = _source_hosts(hosts, source, base or Path.cwd())
        hosts = [{"address": name} for name in names]
    else:
        raise InvalidInput(f"{source}: hosts: must be a non-empty list of hosts, a hostlist expression "
                           f"(\"gpu-[01-04,07]\") or a source ({{from: slurm}}, {{from: pbs}}, "
                           f"{{from: file, path: FILE}})")
    merged = [_merged(host, defaults, suggested, source, f"hosts ({host['address']})" if generated else f"hosts[{i}]")
              for i, host in enumerate(hosts)]

    def written_at(loc: tuple) -> tuple:
        """Where a merged host's value was written: `defaults.KEY` unless the host has its own;
        a host the source generated is named by its address. (The union's tag, which pydantic
        puts after the host's index, is no part of what the user wrote.)"""
        if len(loc) >= 2 and loc[0] == "hosts" and isinstance(loc[1], int):
            if len(loc) >= 3 and loc[2] in HOST_KINDS:
                loc = (*loc[:2], *loc[3:])
            if len(loc) >= 3 and loc[2] in defaults and loc[2] not in hosts[loc[1]]:
                return ("defaults", *loc[2:])
            if generated:
                return (f"hosts ({hosts[loc[1]]['address']})", *loc[2:])
        return loc

    try:
        inventory = Inventory.model_validate({"hosts": merged, "insecure_registries":
                                              document.get("insecure_registries") or []})
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(source, exc, relocate=written_at)) from exc
    for i, host in enumerate(inventory.hosts):
        if isinstance(host, SshHost) and host.identity_file:
            path = Path(host.identity_file).expanduser()
            if not path.is_file():
                if written_at(("hosts", i, "identity_file")) == ("defaults", "identity_file"):
                    raise InvalidInput(f"{source}: defaults.identity_file {path} does not exist "
                                       f"(first needed by {host.label})")
                raise InvalidInput(f"{source}: hosts[{i}] ({host.label}): identity_file {path} does not exist")
    return inventory


def load_inventory(path: Path | None) -> Inventory:
    """hosts.yaml; the word `slurm`; or, without either, this machine alone (one local host).

    `--inventory slurm` means `{hosts: {from: slurm}}` with no defaults: the nodes of the
    allocation fleet runs in. The word always means the allocation, even where a file of that
    name exists; such a file must be named by a path that does not reduce to the bare word
    (`$PWD/slurm`, `conf/slurm`: pathlib turns `./slurm` into `slurm`).
    """
    if path is None:
        return Inventory(hosts=[LocalHost(address="localhost", name="localhost")])
    if str(path) == ALLOCATION_WORD:
        return parse_inventory({"hosts": {"from": "slurm"}}, f"--inventory {ALLOCATION_WORD}")
    return parse_inventory(read_document(path, "inventory", yaml_only=True), str(path), base=path.parent)


def _merged(host: dict[str, Any], defaults: dict[str, Any], suggested: dict[str, Any], source: str,
            where: str) -> dict[str, Any]:
    """One host's keys over the inventory's `defaults` over what its source suggests, each of
    those taken only where the host's transport has the key: `defaults: {user: ops}` serves
    the SSH hosts of an inventory that also lists a local one (and a `from: slurm` inventory
    whether its nodes are reached over SSH or srun). A key the host itself gives that its
    transport lacks is refused, naming the host, the key and the transport that takes it."""
    transport = {**suggested, **defaults, **host}.get("transport", DEFAULT_TRANSPORT)
    if not isinstance(transport, str) or transport not in HOST_KINDS:
        at = f"{where}.transport" if "transport" in host else "defaults.transport"
        raise InvalidInput(f"{source}: {at}: must be ssh, local or srun; got {transport!r}")
    keys = transport_keys(transport)
    for key in host:
        if key in HOST_KEYS and key not in keys:
            takers = " or ".join(name for name, kind in HOST_KINDS.items() if key in kind.model_fields)
            name = host.get("name") or host.get("address")
            raise InvalidInput(f"{source}: {where}.{key}: not a setting of a {transport} host ({name}): "
                               f"only {takers} hosts take it")
    inherited = {key: value for key, value in {**suggested, **defaults}.items() if key in keys or key not in HOST_KEYS}
    return {**inherited, **host}


def _source_hosts(hosts: str | dict, source: str, base: Path) -> tuple[list[str], dict[str, Any]]:
    """The names a hostlist expression or a `{from: ...}` source stands for, in its order, and
    the host keys the source suggests for them all."""
    if isinstance(hosts, str):
        try:
            names = expand_hostlist(hosts)
        except ValueError as exc:
            raise InvalidInput(f"{source}: hosts: {exc}") from exc
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise InvalidInput(f"{source}: hosts: hostlist expression {hosts!r} names {twice} twice")
        return names, {}
    kind = hosts["from"]
    if kind not in HOST_SOURCES:
        raise InvalidInput(f"{source}: hosts.from: must be slurm, pbs or file; got {kind!r}")
    allowed = {"from", "path"} if kind == "file" else {"from"}
    extra = sorted(set(hosts) - allowed, key=str)
    if extra:
        raise InvalidInput(f"{source}: hosts.{extra[0]}: unknown field for `from: {kind}` "
                           f"(it takes {' and '.join(f'`{k}`' for k in sorted(allowed))})")
    if kind == "slurm":
        return _slurm_allocation(source)
    if kind == "pbs":
        nodefile = os.environ.get("PBS_NODEFILE")
        if not nodefile:
            raise InvalidInput(f"{source}: hosts: from: pbs needs a PBS allocation (PBS_NODEFILE is not set): "
                               f"run fleet inside qsub")
        return _read_hostfile(Path(nodefile), source, "from: pbs: $PBS_NODEFILE"), {}
    path = hosts.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{source}: hosts.path: `from: file` needs `path: FILE` (one host per line)")
    return _read_hostfile(base / Path(path).expanduser(), source, "from: file:"), {}


def _slurm_allocation(source: str) -> tuple[list[str], dict[str, Any]]:
    """The nodes of the current Slurm allocation in Slurm's order, their GPUs, and `srun` as
    their transport when srun is on PATH (else SSH, as for any host).

    GPUs: Slurm describes the node the batch script runs on. SLURM_JOB_GPUS (else
    SLURM_STEP_GPUS) lists that node's device ids: fleet uses them (`gpus: [0, 1]`) only when
    the allocation is that one node, since another node's ids may differ. Otherwise it takes
    SLURM_GPUS_ON_NODE (a count; else the number of ids) for every node: `gpus: N` gives a
    container the host's first N GPUs, so nodes shared with other jobs or with different
    GPU counts want `defaults: {gpus: ...}` or a list of hosts instead. No variable: no GPUs.
    """
    variable = next((v for v in ("SLURM_JOB_NODELIST", "SLURM_NODELIST") if os.environ.get(v)), None)
    if variable is None:
        raise InvalidInput(f"{source}: hosts: from: slurm needs a Slurm allocation (SLURM_JOB_NODELIST is not set): "
                           f"run fleet inside sbatch/salloc")
    try:
        # A nodelist names each node once; dedupe anyway, as the order is all that matters.
        nodes = list(dict.fromkeys(expand_hostlist(os.environ[variable])))
    except ValueError as exc:
        raise InvalidInput(f"{source}: hosts: from: slurm: ${variable}: {exc}") from exc
    suggested: dict[str, Any] = {}
    gpus = _allocation_gpus(source, single_node=len(nodes) == 1)
    if gpus is not None:
        suggested["gpus"] = gpus
    if shutil.which("srun"):
        suggested["transport"] = "srun"
    return nodes, suggested


def _allocation_gpus(source: str, *, single_node: bool) -> int | list[int | str] | None:
    """`gpus` for the allocation's nodes (see _slurm_allocation for the rule)."""
    ids_variable = next((v for v in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS") if os.environ.get(v, "").strip()), None)
    ids: list[int | str] = []
    if ids_variable:
        words = [w.strip() for w in os.environ[ids_variable].split(",")]
        if not all(words):
            raise InvalidInput(f"{source}: hosts: from: slurm: ${ids_variable}={os.environ[ids_variable]!r} "
                               f"is not a comma-separated list of device ids")
        ids = [int(w) if w.isdigit() else w for w in words]
        if single_node:
            return ids
    count = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if count:
        if not count.isdigit():
            raise InvalidInput(f"{source}: hosts: from: slurm: $SLURM_GPUS_ON_NODE={count!r} is not a count")
        return int(count) or None
    return len(ids) or None


def _read_hostfile(path: Path, source: str, what: str) -> list[str]:
    """A pdsh / MPI hostfile or a PBS nodefile: the first word of each line (`node1 slots=8`
    is node1), blank lines and `#` comments skipped, each host once in first-seen order (a
    nodefile repeats a host once per slot)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidInput(f"{source}: hosts: {what} {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{source}: hosts: {what} {path}: cannot read: {exc}") from exc
    names = [words[0] for line in text.splitlines() if (words := line.split("#", 1)[0].split())]
    if not names:
        raise InvalidInput(f"{source}: hosts: {what} {path} lists no host")
    return list(dict.fromkeys(names))
