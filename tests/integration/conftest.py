"""The test bed: 3 real hosts (network namespaces, each with its own sshd and container
engine), made once per test session by scripts/local-cluster and removed at its end.

FLEET_BED_ENGINES (default docker20) picks the hosts' engines: a comma list cycled over h1..h3
of docker20 (Debian 12's dockerd 20.10), docker28 (dockerd 28.5, overlay2), docker28c (dockerd
28.5 with the containerd image store) and podman (Podman 5.8's Docker-compatible API); see
scripts/local-cluster. scripts/test runs the tests marked `engines` once per engine and those
marked `mixed_engines` on docker20,docker28c,podman.

Tests drive the real CLI (`python -m fleet`) and look at what the container, the user and
the hosts show: stdout, exit codes, describe.json, logs, `docker ps` on each host. The bed's
hosts and the CLI's runner are tests/support/bed.py's (shared with tests/scale); the names the
tests import from here (`from conftest import make_job`) are those.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from registries import (  # noqa: F401  (fixtures: registries, ECR)
    auth_registry,
    controller_docker,
    fake_ecr,
    forget_registry,
    spawn_registry,
)

from support import bed
from support.bed import IMAGE, ROOT, fleet, fleet_home, make_job, wait_running  # noqa: F401  (fixtures; the tests)
from support.s3server import bucket, s3  # noqa: F401  (fixtures: a real S3 server, SeaweedFS)

BED_ENGINES = os.environ.get("FLEET_BED_ENGINES", "") or "docker20"  # scripts/local-cluster up --engines


def pytest_collection_modifyitems(config, items):
    # A test marked `mixed_engines` alone needs hosts of different engines: skipped on a bed of
    # one engine (the main session's). Marked `engines` too, it runs on any bed.
    mixed = len(set(BED_ENGINES.split(","))) > 1
    bed.lock_at_collection(config, [item for item in items if "integration" in str(item.fspath)
                                and "cluster" in getattr(item, "fixturenames", ())])
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if not mixed and item.get_closest_marker("mixed_engines") and not item.get_closest_marker("engines"):
                item.add_marker(pytest.mark.skip(reason=f"needs hosts of different engines (FLEET_BED_ENGINES="
                                                        f"{BED_ENGINES}; scripts/test runs it on docker20,docker28c,podman)"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, pytestconfig) -> bed.Cluster:
    if not bed.bed_usable():
        pytest.skip("the test bed needs root, dockerd and sshd (run scripts/setup)")
    inventory = tmp_path_factory.mktemp("cluster") / "hosts.yaml"
    # One test bed per machine: another test session or benchmark using it is waited for.
    lock = bed.session_lock(pytestconfig)
    with bed.bed_up(3, inventory, "--engines", BED_ENGINES, lock=lock, timeout=300) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def registry(cluster, tmp_path_factory):
    """A plain-HTTP registry on the bridge (10.251.7.1:5000), which the test daemons trust:
    the only way to see a real pull here. Stopped by its pid."""
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry is not installed (run scripts/setup)")
    root = tmp_path_factory.mktemp("registry")
    process = spawn_registry(cluster.state, "plain", {
        "version": 0.1, "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": "10.251.7.1:5000"}}, root / "registry.log")
    try:
        import socket
        import time
        for _ in range(100):
            try:
                socket.create_connection(("10.251.7.1", 5000), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield "10.251.7.1:5000"
    finally:
        process.terminate()
        process.wait(timeout=20)
        forget_registry(cluster.state, "plain")


# ---------------------------------------------------------------- a real Slurm on the bed
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
              "BOOT_FAIL", "DEADLINE", "REVOKED"}


@dataclass
class Slurm:
    """The bed's Slurm (scripts/local-cluster slurm-up): slurmctld on the controller, one slurmd
    per test host in its namespace, node names = the hosts' names (h1..h3), which resolve inside
    jobs. Jobs run as root on the machine's filesystem; every task (batch script and steps) has
    DOCKER_HOST set to its node's own dockerd. No accounting (no sacct): a finished job stays
    readable with `scontrol show job` for MinJobAge (600 s)."""
    conf: Path
    nodes: list[str]
    partition: str
    kill_wait: int  # seconds: Slurm's grace between a cancelled job's SIGTERM and SIGKILL
    known_hosts: Path  # the hosts' SSH keys under their node names and addresses
    dir: Path  # default working directory and output place of sbatch

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A Slurm command (scontrol, squeue, scancel, ...) with SLURM_CONF set."""
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                                env=kw.pop("env", None) or self.env(), **kw)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr}")
        return result

    def sbatch(self, script: str | None = None, *args: str, wrap: str | None = None, nodes: int = 3,
               env: dict | None = None, cwd: Path | None = None) -> str:
        """Submit `script` (its text; `#!/bin/sh` is added if it has no #! line) or `--wrap`
        a command, on `nodes` nodes, with extra sbatch `args`; returns the job id. Output goes
        to slurm-JOBID.out in `cwd` (default: self.dir); see output()."""
        if (script is None) == (wrap is None):
            raise ValueError("sbatch: give a script or wrap=, not both")
        cwd = cwd or self.dir
        command = ["sbatch", "--parsable", f"--nodes={nodes}", f"--chdir={cwd}",
                   f"--output={cwd}/slurm-%j.out", *args]
        if wrap is not None:
            command.append(f"--wrap={wrap}")
        elif not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        result = self.run(*command, input=script, env=env or self.env(), cwd=cwd)
        return result.stdout.strip().split(";")[0]

    def output(self, job_id: str, cwd: Path | None = None) -> str:
        return ((cwd or self.dir) / f"slurm-{job_id}.out").read_text()

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o JOB` as a dict (JobState, ExitCode, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait_job(self, job_id: str, timeout: float = 120) -> tuple[str, str]:
        """Until the job has ended (and its nodes are released): (JobState, ExitCode), e.g.
        ("COMPLETED", "0:0"), ("FAILED", "3:0"); after scancel ("CANCELLED", "0:0") if the
        script ended on the SIGTERM, ("CANCELLED", "0:9") if KillWait ran out (SIGKILL)."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if fields.get("JobState") in SLURM_DONE:
                return fields["JobState"], fields.get("ExitCode", "")
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm job {job_id} still {fields.get('JobState')} after {timeout} s")
            time.sleep(0.2)

    def cancel_all(self, timeout: float = 120) -> None:
        """Cancel every job and wait until none is left (a cancelled job's tasks get KillWait)."""
        self.run("scancel", "--full", f"--partition={self.partition}", check=False)
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i").stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError("Slurm jobs still there after scancel")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm(cluster, tmp_path_factory) -> Slurm:
    """A real Slurm on the already-up bed (scripts/local-cluster slurm-up, ~1 s), removed at the
    session's end (slurm-down). The cluster fixture's lock is held meanwhile."""
    if not all(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
               for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        pytest.skip("the bed's Slurm needs slurmctld, slurmd, munge and slurm-client (run scripts/setup)")
    subprocess.run([str(bed.LOCAL_CLUSTER), "slurm-up"], check=True, timeout=120, stdout=subprocess.DEVNULL)
    env = dict(line.split("=", 1) for line in (cluster.state / "hosts.env").read_text().splitlines()
               if "=" in line)
    try:
        yield Slurm(Path(env["FLEET_SLURM_CONF"]), env["FLEET_SLURM_NODES"].split(","),
                    env["FLEET_SLURM_PARTITION"], int(env["FLEET_SLURM_KILLWAIT"]),
                    Path(env["FLEET_SLURM_KNOWN_HOSTS"]), tmp_path_factory.mktemp("slurm"))
    finally:
        subprocess.run([str(bed.LOCAL_CLUSTER), "slurm-down"], timeout=120, stdout=subprocess.DEVNULL)
