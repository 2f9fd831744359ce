"""Job + inventory → ClusterPlan: everything that will happen on each host, decided up front.

Pure code: no network, no files. `fleet run --dry-run` prints a ClusterPlan; the executor
carries one out. "What will happen on algo-2" is `plan.hosts[1]`.

This module is the one place that knows the job's names: algo-1..N, how a host is named in
messages, the job's ARN, container names and labels, and the layout of a job directory on
a host. Everything else asks it.

    WORKDIR/NAME/                 job_parent (0755, the SSH user's; removed with its last algo-k)
      algo-k/                     job_dir, 0711 (removed when the job ends, unless --keep)
        .fleet-run                run_file (0644): the run id, then the controller
        ml/                       private_dir, 0700: every mount source, the env file
          env                     env_file (0600): the Environment docker's env file carries, from
                                  create's start to its end
          env.1, env.2, ...       env_value_file(i) (0600): each value it cannot carry (a newline), for
                                  docker's own environment; as long as the env file
          config/                 → /opt/ml/config (read-only), 0755; its files 0644
          output/                 → /opt/ml/output, 0755, the container's user's; output/message
                                  is the ExitMessage
          inputs/                 0755
            N/, N.partial/        ProcessingInputs[N-1], 0755: staged as N.partial, renamed on go
          outputs/                0755
            N/                    ProcessingOutputs[N-1], 0755, the container's user's

Other local users of a host must neither read the job (processingjobconfig.json holds the
Environment) nor write into it (a directory planted in inputs/ would make `tar -x` write
wherever its links point). Permissions keep them out, not secret names: any path fleet uses
shows up in some process's argv (`docker create --volume`, `tar -C`). `ml/` is 0700 (a bind
mount does not need its source's ancestors to be traversable by the container's user), and
no mount source is writable by others either: a local user whose uid some process of the
container has reaches the mounts through /proc/PID/root. The directories the container
writes are given to the uid its image's User names once the container is created (the
session's give_dirs), the inputs and config are the SSH user's, 0755, for any USER to read.
`algo-k/` stays 0711 so that another SSH user's `fleet gc` can read `.fleet-run` and
leave the directory alone. The session creates every directory with a plain `mkdir` (never
`-p`), so one that exists already (planted) is refused, naming it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from fleet.contract import configfiles, environment as env
from fleet.contract.container import (
    Mount,
    docker_create_argv,
    entrypoint_and_command,
    env_file_content,
    inherited_environment,
)
from fleet.contract.job import ProcessingJob
from fleet.errors import InvalidInput
from fleet.inventory import Host, Inventory

CONFIG_DIR = "/opt/ml/config"
OUTPUT_DIR = "/opt/ml/output"

JOB_LABEL = "fleet.job"
HOST_LABEL = "fleet.host"
RUN_LABEL = "fleet.run"  # one run of a job (its record's RunId)
CONTROLLER_LABEL = "fleet.controller"  # machine:FLEET_HOME of the fleet that ran it
RUN_FILE = ".fleet-run"  # in each job directory: the run id, then the controller
CONTAINER_OWNED = "container"  # a HostPlan.tree mode: 0755, given to the container's user
PRIVATE_DIR = "ml"  # in each job directory: the mount sources, only the SSH user may enter


@dataclass(frozen=True)
class HostPlan:
    """One host's part of the job."""

    algo: str
    host: Host
    address: str  # where the other hosts reach this one (--add-host)
    job_dir: str  # on the host; removed when the job ends unless --keep
    files: dict[str, bytes]  # path relative to private_dir → content (sent on the session's stdin)
    dirs: list[str]  # paths relative to private_dir, created empty (mount sources)
    mounts: list[Mount]
    container: str
    docker_create: list[str]  # after the host's docker command; then `docker start CONTAINER`
    # docker_create[image_at] is the ImageUri: the session puts there the ID of the image the
    # host has for it (pinned, pulled or pushed), so every host creates from exact bytes
    image_at: int = -1
    run_id: str = ""  # this run of the job: labels its containers, marks its job directories
    controller: str = ""  # the controller (machine and FLEET_HOME) that runs it
    # env_file's content (secrets: sent on the session's stdin, never printed nor in a repr)
    environment: bytes = field(default=b"", repr=False)
    # the values the env file cannot carry, by key: docker_create says `--env KEY` and the
    # session gives docker KEY=value from env_value_file(i), the i-th of them (secrets too)
    inherited: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """How messages name this host: `algo-2 (gpu-02, 10.0.0.12)`."""
        return host_label(self.algo, self.host)

    @property
    def workdir(self) -> str:
        """The host's directory of job directories."""
        return self.host.job_root

    @property
    def job_parent(self) -> str:
        """WORKDIR/NAME: removed with its last algo-k directory."""
        return posixpath.dirname(self.job_dir)

    @property
    def job_name(self) -> str:
        return posixpath.basename(self.job_parent)

    @property
    def run_file(self) -> str:
        return posixpath.join(self.job_dir, RUN_FILE)

    @property
    def private_dir(self) -> str:
        """JOB_DIR/ml (0700): the mount sources and the env file, out of other users' reach."""
        return private_dir(self.job_dir)

    @property
    def env_file(self) -> str:
        """Where the session writes `environment` (0600) for `docker create --env-file`;
        removed once the container is created."""
        return posixpath.join(self.private_dir, "env")

    def env_value_file(self, index: int) -> str:
        """Where the session writes the value of the index-th key of `inherited` (from 1;
        0600), which it gives `docker create` in its environment; removed with the env file.
        session.sh names them so too: ENV_FILE.1, ENV_FILE.2, ..."""
        return f"{self.env_file}.{index}"

    @property
    def message_file(self) -> str:
        return posixpath.join(self.private_dir, "output", "message")

    @property
    def inputs_dir(self) -> str:
        return posixpath.join(self.private_dir, "inputs")

    @property
    def input_count(self) -> int:
        """How many inputs the job has: input_dir(1) .. input_dir(input_count)."""
        return sum(1 for directory in self.dirs if posixpath.dirname(directory) == "inputs")

    def input_dir(self, index: int) -> str:
        """Where ProcessingInputs[index - 1] is mounted from."""
        return posixpath.join(self.inputs_dir, str(index))

    def partial_input_dir(self, index: int) -> str:
        """Where that input is staged; it takes input_dir's name on `go`."""
        return self.input_dir(index) + ".partial"

    @property
    def tree(self) -> list[tuple[str, str]]:
        """Every directory the session makes inside private_dir, parents first, with its
        mode: `container` for the directories the container writes (0755, then its user's:
        the session resolves the image's User), 0755 for the rest."""
        made = [("config", "0755"), ("output", CONTAINER_OWNED)]
        inputs = [directory for directory in self.dirs if posixpath.dirname(directory) == "inputs"]
        outputs = [directory for directory in self.dirs if posixpath.dirname(directory) == "outputs"]
        if inputs:
            made.append(("inputs", "0755"))
            made += [(path, "0755") for directory in inputs for path in (directory, directory + ".partial")]
        if outputs:
            made.append(("outputs", "0755"))
            made += [(directory, CONTAINER_OWNED) for directory in outputs]
        return made

    def output_dir(self, index: int) -> str:
        """Where ProcessingOutputs[index - 1] is mounted from."""
        return posixpath.join(self.private_dir, "outputs", str(index))

    @property
    def docker(self) -> list[str]:
        return self.host.docker_command


@dataclass(frozen=True)
class ClusterPlan:
    job: ProcessingJob
    arn: str
    hosts: list[HostPlan]
    stop_grace: int
    notices: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.job.ProcessingJobName


def select_hosts(job: ProcessingJob, inventory: Inventory, where: str | None = None) -> list[Host]:
    """The first InstanceCount hosts, in inventory order; refused when there are too few
    (or when one cannot pass the Environment on: `check_environment_reaches`). `where`
    says, for that message, where the inventory came from (its file, or that fleet runs on
    this machine alone)."""
    wanted = job.instance_count
    if wanted > len(inventory.hosts):
        raise InvalidInput(
            f"ProcessingResources.ClusterConfig.InstanceCount is {wanted} but the inventory "
            f"has {len(inventory.hosts)} host(s)" + (f": {where}" if where else ""))
    hosts = list(inventory.hosts[:wanted])
    check_environment_reaches(job, hosts)
    return hosts


def check_environment_reaches(job: ProcessingJob, hosts: list[Host]) -> None:
    """Refuse a host whose docker command (`sudo docker`) would drop docker's environment
    when the job has a value only that environment carries (a newline: see
    fleet/contract/environment.py), naming the host and the key."""
    inherited = env.split(job.Environment)[1]
    if not inherited:
        return
    keys = ", ".join(inherited)
    for algo, host in zip(algo_names(len(hosts)), hosts):
        word = host.privilege_program
        if word:
            raise InvalidInput(
                f"{host_label(algo, host)}: Environment {keys}: a value with a newline (or a carriage return at "
                f"its end) reaches the container only through docker's own environment (docker's env file "
                f"cannot carry it), but this host's docker command ({host.docker!r}) starts with {word}, which "
                f"gives docker a fresh environment: give the host a docker command without {word} (the SSH "
                f"user in the docker group), or the job values docker's env file carries")


def algo_names(count: int) -> list[str]:
    return [f"algo-{k}" for k in range(1, count + 1)]


def host_label(algo: str, host: Host) -> str:
    """`algo-2 (10.0.0.12)`, or `algo-2 (gpu-02, 10.0.0.12)` for a named host."""
    where = host.address if host.label == host.address else f"{host.label}, {host.address}"
    return f"{algo} ({where})"


def host_labels(hosts: list[Host]) -> list[str]:
    """Each host's label as algo-1..N, in order."""
    return [host_label(algo, host) for algo, host in zip(algo_names(len(hosts)), hosts)]


def record_hosts(hosts: list[Host]) -> dict[str, dict[str, str]]:
    """The record's Hosts: algo-k → the inventory's name and address."""
    return {algo: {"Name": host.label, "Address": host.address}
            for algo, host in zip(algo_names(len(hosts)), hosts)}


def job_arn(job: ProcessingJob, region: str, account: str) -> str:
    return configfiles.job_arn(job.ProcessingJobName, region, account)


def container_name(job_name: str, algo: str) -> str:
    return f"{job_name}-{algo}"


def job_dir(host: Host, job_name: str, algo: str) -> str:
    return posixpath.join(host.job_root, job_name, algo)


def private_dir(directory: str) -> str:
    return posixpath.join(directory, PRIVATE_DIR)


def plan_cluster(
    job: ProcessingJob,
    hosts: list[Host],
    addresses: list[str],
    *,
    stop_grace: int,
    region: str,
    account: str,
    run_id: str = "",
    controller: str = "",
) -> ClusterPlan:
    """Decide every host's files, mounts and docker argv.

    `addresses[i]` is where the other hosts reach hosts[i] (the inventory's `ip`, or the
    address its SSH connection resolved to): the executor finds them, the plan only uses them.
    """
    names = algo_names(len(hosts))
    peers = list(zip(names, addresses))
    arn = job_arn(job, region, account)
    job_config = configfiles.encode(configfiles.processing_job_config(job, arn))
    check_environment_reaches(job, hosts)
    environment = env_file_content(job.Environment)
    inherited = inherited_environment(job.Environment)
    plans = []
    for algo, host, address in zip(names, hosts, addresses):
        directory = job_dir(host, job.ProcessingJobName, algo)
        private = private_dir(directory)
        dirs = ["config", "output"]
        mounts = [
            Mount(posixpath.join(private, "config"), CONFIG_DIR, read_only=True),
            Mount(posixpath.join(private, "output"), OUTPUT_DIR),
        ]
        for index, source in enumerate(job.inputs, start=1):
            dirs.append(f"inputs/{index}")
            mounts.append(Mount(posixpath.join(private, "inputs", str(index)), source.S3Input.LocalPath))
        for index, output in enumerate(job.outputs, start=1):
            dirs.append(f"outputs/{index}")
            mounts.append(Mount(posixpath.join(private, "outputs", str(index)), output.S3Output.LocalPath))
        files = {
            "config/resourceconfig.json": configfiles.encode(configfiles.resource_config(algo, names)),
            "config/processingjobconfig.json": job_config,
        }
        container = container_name(job.ProcessingJobName, algo)
        labels = {JOB_LABEL: job.ProcessingJobName, HOST_LABEL: algo, RUN_LABEL: run_id,
                  CONTROLLER_LABEL: controller}
        create = docker_create_argv(job, name=container, algo=algo, peers=peers, mounts=mounts,
                                    stop_grace=stop_grace, labels=labels, env_file=posixpath.join(private, "env"),
                                    gpus=host.gpus, docker_args=host.docker_args)
        plans.append(HostPlan(
            algo=algo,
            host=host,
            address=address,
            job_dir=directory,
            files=files,
            dirs=dirs,
            mounts=mounts,
            container=container,
            docker_create=create,
            image_at=len(create) - len(entrypoint_and_command(job)[1]) - 1,
            run_id=run_id,
            controller=controller,
            environment=environment,
            inherited=inherited,
        ))
    return ClusterPlan(job=job, arn=arn, hosts=plans, stop_grace=stop_grace)
