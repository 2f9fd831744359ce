"""The test bed of tests/integration and tests/scale: real hosts (network namespaces, each with
its own sshd and container engine) that scripts/local-cluster brings up and takes down, one
bed per machine (CLUSTER_LOCK); and the real CLI (`python -m fleet`) run against it as a user
would. The conftests of both suites take from here their `cluster` fixture's bed (bed_up) and
the `fleet_home` and `fleet` fixtures (imported there: pytest refuses `pytest_plugins` in a
conftest below the rootdir)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = ROOT / "scripts" / "local-cluster"
IMAGE = "fleet-test:busybox"
CLUSTER_LOCK = "/var/tmp/fleet-cluster.lock"  # held by whoever has the test bed up (tests, bench-*, demo)


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


def bed_usable() -> bool:
    """Whether this machine can bring a bed up: root, dockerd and sshd."""
    return os.geteuid() == 0 and bool(shutil.which("dockerd")) and bool(shutil.which("sshd", path="/usr/sbin"))


def take_lock() -> IO[str]:
    """The machine's one bed: waits while another test session or benchmark has it; held until
    the file returned is closed."""
    lock = open(CLUSTER_LOCK, "w")  # noqa: SIM115 (held for the whole session)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


_LOCK = pytest.StashKey[IO[str]]()


def lock_at_collection(config: pytest.Config, needing: list[pytest.Item]) -> None:
    """Wait for the bed now, at collection, if a test `needing` it will run: waiting (a CI run
    or a benchmark may hold it for a quarter of an hour) is no test's time, and pytest-timeout
    times a test's fixtures with it. --collect-only runs none: it does not wait."""
    if needing and bed_usable() and not config.option.collectonly and _LOCK not in config.stash:
        config.stash[_LOCK] = take_lock()


def session_lock(config: pytest.Config) -> IO[str]:
    """The lock lock_at_collection took, else taken now."""
    return config.stash.get(_LOCK, None) or take_lock()


@contextlib.contextmanager
def bed_up(count: int, inventory: Path, *options: str, lock: IO[str], timeout: float) -> Iterator[Cluster]:
    """A bed of `count` hosts (scripts/local-cluster up, with `options`), its inventory written
    to `inventory`; taken down at the end, then `lock` released."""
    subprocess.run([str(LOCAL_CLUSTER), "up", "--hosts", str(count), "--inventory", str(inventory), *options],
                   check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    env = dict(line.split("=", 1) for line in
               (Path(os.environ.get("FLEET_CLUSTER_DIR", "/var/tmp/fleet-cluster")) / "hosts.env")
               .read_text().splitlines() if "=" in line)
    state = Path(env["FLEET_CLUSTER_DIR"])
    hosts = [TestHost(env[f"FLEET_H{i}_NAME"], env[f"FLEET_H{i}_ADDR"], env[f"FLEET_H{i}_DOCKER_HOST"],
                      Path(env[f"FLEET_H{i}_WORKDIR"]), state / f"h{i}", env.get(f"FLEET_H{i}_ENGINE", "docker20"))
             for i in range(1, count + 1)]
    try:
        yield Cluster(state, inventory, hosts, Path(env["FLEET_SSH_KEY"]), Path(env["FLEET_KNOWN_HOSTS"]),
                      env["FLEET_CONTROLLER_DOCKER_HOST"], env["FLEET_ECR_HOST"], [h.engine for h in hosts])
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "down"], timeout=timeout, stdout=subprocess.DEVNULL)
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
