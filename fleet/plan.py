"""Job + inventory → ClusterPlan: everything that will happen on each host, decided up front.

Pure code: no network, no files. `fleet run --dry-run` prints a ClusterPlan; the executor
carries one out. "What will happen on algo-2" is `plan.hosts[1]`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from fleet.contract import configfiles
from fleet.contract.container import (CONTROLLER_LABEL, RUN_LABEL, Mount, container_name,
                                      docker_create_argv)
from fleet.contract.job import ProcessingJob
from fleet.errors import InvalidInput
from fleet.inventory import Host, Inventory

CONFIG_DIR = "/opt/ml/config"
OUTPUT_DIR = "/opt/ml/output"


@dataclass(frozen=True)
class HostPlan:
    """One host's part of the job."""

    algo: str
    host: Host
    address: str  # where the other hosts reach this one (--add-host)
    job_dir: str  # on the host; removed when the job ends unless --keep
    files: dict[str, bytes]  # path relative to job_dir → content
    dirs: list[str]  # paths relative to job_dir, created empty (mount sources)
    mounts: list[Mount]
    container: str
    docker_create: list[str]  # after the host's docker command; then `docker start CONTAINER`
    run_id: str = ""  # this run of the job: labels its containers, marks its job directories
    controller: str = ""  # the controller (machine and FLEET_HOME) that runs it

    @property
    def message_file(self) -> str:
        return posixpath.join(self.job_dir, "output", "message")

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


def select_hosts(job: ProcessingJob, inventory: Inventory) -> list[Host]:
    """The first InstanceCount hosts, in inventory order; refused when there are too few."""
    wanted = job.instance_count
    if wanted > len(inventory.hosts):
        raise InvalidInput(
            f"ProcessingResources.ClusterConfig.InstanceCount is {wanted} but the inventory "
            f"has {len(inventory.hosts)} host(s)")
    return list(inventory.hosts[:wanted])


def algo_names(count: int) -> list[str]:
    return [f"algo-{k}" for k in range(1, count + 1)]


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
    arn = configfiles.job_arn(job.ProcessingJobName, region, account)
    job_config = configfiles.encode(configfiles.processing_job_config(job, arn))
    plans = []
    for algo, host, address in zip(names, hosts, addresses):
        job_dir = posixpath.join(host.job_root, job.ProcessingJobName, algo)
        dirs = ["config", "output"]
        mounts = [
            Mount(posixpath.join(job_dir, "config"), CONFIG_DIR, read_only=True),
            Mount(posixpath.join(job_dir, "output"), OUTPUT_DIR),
        ]
        for index, item in enumerate(job.inputs, start=1):
            dirs.append(f"inputs/{index}")
            mounts.append(Mount(posixpath.join(job_dir, "inputs", str(index)), item.S3Input.LocalPath))
        for index, item in enumerate(job.outputs, start=1):
            dirs.append(f"outputs/{index}")
            mounts.append(Mount(posixpath.join(job_dir, "outputs", str(index)), item.S3Output.LocalPath))
        files = {
            "config/resourceconfig.json": configfiles.encode(configfiles.resource_config(algo, names)),
            "config/processingjobconfig.json": job_config,
        }
        plans.append(HostPlan(
            algo=algo,
            host=host,
            address=address,
            job_dir=job_dir,
            files=files,
            dirs=dirs,
            mounts=mounts,
            container=container_name(job.ProcessingJobName, algo),
            docker_create=docker_create_argv(job, host, algo, peers, mounts, stop_grace,
                                             labels={RUN_LABEL: run_id, CONTROLLER_LABEL: controller}),
            run_id=run_id,
            controller=controller,
        ))
    return ClusterPlan(job=job, arn=arn, hosts=plans, stop_grace=stop_grace)
