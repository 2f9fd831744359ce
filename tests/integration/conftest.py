"""The test bed: 3 real hosts (network namespaces, each with its own sshd and container
engine), made once per test session by scripts/local-cluster and removed at its end.

FLEET_BED_ENGINES (default docker20) picks the hosts' engines: a comma list cycled over h1..h3
of docker20 (Debian 12's dockerd 20.10), docker28 (dockerd 28.5, overlay2), docker28c (dockerd
28.5 with the containerd image store) and podman (Podman 5.8's Docker-compatible API); see
scripts/local-cluster. scripts/test runs the tests marked `engines` once per engine and those
marked `mixed_engines` on docker20,docker28c,podman.

Tests drive the real CLI (`python -m fleet`) and look at what the container, the user and
the hosts show: stdout, exit codes, describe.json, logs, `docker ps` on each host.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from registries import (  # noqa: F401  (fixtures: registries, ECR)
    auth_registry,
    controller_docker,
    fake_ecr,
    forget_registry,
    spawn_registry,
)

from s3server import bucket, s3  # noqa: F401  (fixtures: a real S3 server, SeaweedFS)

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = ROOT / "scripts" / "local-cluster"
IMAGE = "fleet-test:busybox"
CLUSTER_LOCK = "/var/tmp/fleet-cluster.lock"  # held by whoever has the test bed up (tests, bench-*, demo)
BED_ENGINES = os.environ.get("FLEET_BED_ENGINES", "") or "docker20"  # scripts/local-cluster up --engines


def pytest_collection_modifyitems(config, items):
    # A test marked `mixed_engines` alone needs hosts of different engines: skipped on a bed of
    # one engine (the main session's). Marked `engines` too, it runs on any bed.
    mixed = len(set(BED_ENGINES.split(","))) > 1
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if not mixed and item.get_closest_marker("mixed_engines") and not item.get_closest_marker("engines"):
                item.add_marker(pytest.mark.skip(reason=f"needs hosts of different engines (FLEET_BED_ENGINES="
                                                        f"{BED_ENGINES}; scripts/test runs it on docker20,docker28c,podman)"))


@dataclass
class TestHost:
    name: str
    address: str
    docker_host: str
    workdir: Path
    dir: Path  # the host's state dir: pidfiles, keys
    engine: str = "docker20"  # docker20 | docker28 | docker28c | podman (scripts/local-cluster --engines)

    def docker(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["docker", "-H", self.docker_host, *args], capture_output=True,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {self.name}: {result.stderr}")
        return result.stdout

    def containers(self, job: str) -> list[str]:
        """Every container of `job` on this host, running or not."""
        out = self.docker("ps", "-a", "--filter", f"label=fleet.job={job}", "--format", "{{.Names}}")
        return out.split()

    def engine_pid(self) -> int:
        """The pid of this host's engine daemon (dockerd; podman's `system service`): SIGSTOP it
        to make the engine hang. docker20's dockerd has its own containerd, which lives on."""
        pidfile = self.dir / ("dockerd.pid" if self.engine == "docker20" else "engine.pid")
        return int(pidfile.read_text())

    @property
    def index(self) -> int:
        """The host's number in scripts/local-cluster (N of its name `hN`)."""
        return int(self.name.removeprefix("h"))

    def _fault(self, *args: str) -> None:
        subprocess.run([str(LOCAL_CLUSTER), *args], check=True, timeout=60)

    def stop_sshd(self) -> None:
        """Kill this host's sshd and every SSH session on it (SIGKILL, by pid): new
        connections are refused, open ones are closed. Its containers live on."""
        self._fault("sshd-stop", str(self.index))

    def start_sshd(self) -> None:
        """Start this host's sshd again as `up` did; returns once it accepts connections."""
        self._fault("sshd-start", str(self.index))

    def link(self, up: bool) -> None:
        """Unplug (False) or plug back (True) the host's network link. Unplugged, its
        packets vanish silently: new connections fail (time out, or "No route to host"
        once ARP gives up), open ones stall (nothing is reset) and resume once it is back,
        at their next retransmission: data from the host within ~0.5 s, data to it backed
        off (16 s after a 40 s cut, up to 2 min)."""
        self._fault("link", str(self.index), "up" if up else "down")


@dataclass
class Cluster:
    state: Path
    inventory: Path
    hosts: list[TestHost]
    key: Path
    known_hosts: Path
    controller_docker_host: str = ""  # the controller's own dockerd (root netns): unix://...
    ecr_host: str = ""  # the fake ECR registry host; resolves to 10.251.7.1 (/etc/hosts)
    engines: list[str] = field(default_factory=list)  # each host's engine, in the order of hosts

    def inventory_doc(self) -> dict:
        return yaml.safe_load(self.inventory.read_text())

    def write_inventory(self, path: Path, doc: dict) -> Path:
        path.write_text(yaml.safe_dump(doc))
        return path

    def leftovers(self, job: str) -> list[str]:
        """What `job` left on any host: containers, and job directories."""
        found = []
        for host in self.hosts:
            found += [f"{host.name}: container {c}" for c in host.containers(job)]
            if (host.workdir / job).exists():
                found.append(f"{host.name}: directory {host.workdir / job}")
        return found


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("sshd", path="/usr/sbin"):
        pytest.skip("the test bed needs root, dockerd and sshd (run scripts/setup)")
    inventory = tmp_path_factory.mktemp("cluster") / "hosts.yaml"
    # One test bed per machine: another test session or benchmark using it is waited for.
    lock = open(CLUSTER_LOCK, "w")  # noqa: SIM115 (held for the whole session)
    fcntl.flock(lock, fcntl.LOCK_EX)
    subprocess.run([str(LOCAL_CLUSTER), "up", "--hosts", "3", "--inventory", str(inventory),
                    "--engines", BED_ENGINES], check=True, timeout=300, stdout=subprocess.DEVNULL)
    env = dict(line.split("=", 1) for line in
               (Path(os.environ.get("FLEET_CLUSTER_DIR", "/var/tmp/fleet-cluster")) / "hosts.env")
               .read_text().splitlines() if "=" in line)
    state = Path(env["FLEET_CLUSTER_DIR"])
    hosts = [TestHost(env[f"FLEET_H{i}_NAME"], env[f"FLEET_H{i}_ADDR"], env[f"FLEET_H{i}_DOCKER_HOST"],
                      Path(env[f"FLEET_H{i}_WORKDIR"]), state / f"h{i}", env.get(f"FLEET_H{i}_ENGINE", "docker20"))
             for i in (1, 2, 3)]
    try:
        yield Cluster(state, inventory, hosts, Path(env["FLEET_SSH_KEY"]), Path(env["FLEET_KNOWN_HOSTS"]),
                      env["FLEET_CONTROLLER_DOCKER_HOST"], env["FLEET_ECR_HOST"], [h.engine for h in hosts])
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "down"], timeout=300, stdout=subprocess.DEVNULL)
        lock.close()


@pytest.fixture
def fleet_home(tmp_path) -> Path:
    home = tmp_path / "fleet-home"
    home.mkdir()
    return home


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


class Fleet:
    """The real CLI, run as a user would run it."""

    def __init__(self, home: Path, tmp: Path, cluster: Cluster) -> None:
        self.home = home
        self.tmp = tmp
        self.cluster = cluster
        self.started: list[subprocess.Popen] = []  # killed after the test if still running

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "FLEET_HOME": str(self.home), "PYTHONUNBUFFERED": "1", **extra}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fleet", *args]

    def __call__(self, *args: str, timeout: float = 120, env: dict | None = None) -> Run:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                                env=env or self.env(), cwd=self.tmp)
        return Run(result.returncode, result.stdout, result.stderr)

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        process = subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env or self.env(), cwd=self.tmp)
        self.started.append(process)
        return process

    def run_job(self, job: dict, *args: str, inventory: Path | None = None, timeout: float = 120) -> Run:
        path = self.write_job(job)
        return self("run", "--inventory", str(inventory or self.cluster.inventory), str(path), *args,
                    timeout=timeout)

    def write_job(self, job: dict, suffix: str = ".json") -> Path:
        path = self.tmp / f"{job['ProcessingJobName']}{suffix}"
        path.write_text(json.dumps(job) if suffix == ".json" else yaml.safe_dump(job))
        return path

    def record(self, name: str) -> dict:
        return json.loads((self.home / "jobs" / name / "describe.json").read_text())

    def log(self, name: str, algo: str) -> str:
        return (self.home / "jobs" / name / "logs" / f"{algo}.log").read_text()


@pytest.fixture
def fleet(fleet_home, tmp_path, cluster) -> Fleet:
    """The CLI; after the test, no job it ran may have left a container or a job
    directory on any host."""
    runner = Fleet(fleet_home, tmp_path, cluster)
    yield runner
    try:
        jobs = fleet_home / "jobs"
        for path in jobs.iterdir() if jobs.exists() else []:
            assert cluster.leftovers(path.name) == [], f"job {path.name} left things behind"
    finally:
        # A test that fails midway must not leave its fleet processes running (they would
        # reconnect to the next test bed).
        while runner.started:
            process = runner.started.pop()
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)


def wait_running(cluster: Cluster, name: str, count: int = 3) -> None:
    """Until `count` containers of the job run (bounded: the test fails past 60 s)."""
    for _ in range(600):
        running = sum(bool(h.docker("ps", "-q", "--filter", f"label=fleet.job={name}").strip())
                      for h in cluster.hosts)
        if running >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the containers of {name} never all ran")


def make_job(script: str | None = None, *, count: int = 3, name: str | None = None, **fields) -> dict:
    """A CreateProcessingJob request for the test image; `script` runs under sh -c."""
    job = {
        "ProcessingJobName": name or f"t-{uuid.uuid4().hex[:10]}",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": IMAGE},
    }
    if script is not None:
        job["AppSpecification"]["ContainerEntrypoint"] = ["sh", "-c", script]
    job.update(fields)
    return job


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
    subprocess.run([str(LOCAL_CLUSTER), "slurm-up"], check=True, timeout=120, stdout=subprocess.DEVNULL)
    env = dict(line.split("=", 1) for line in (cluster.state / "hosts.env").read_text().splitlines()
               if "=" in line)
    try:
        yield Slurm(Path(env["FLEET_SLURM_CONF"]), env["FLEET_SLURM_NODES"].split(","),
                    env["FLEET_SLURM_PARTITION"], int(env["FLEET_SLURM_KILLWAIT"]),
                    Path(env["FLEET_SLURM_KNOWN_HOSTS"]), tmp_path_factory.mktemp("slurm"))
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "slurm-down"], timeout=120, stdout=subprocess.DEVNULL)
