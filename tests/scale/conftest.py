"""The scale test bed: 32 real hosts (FLEET_SCALE_HOSTS), made once for this session by
scripts/local-cluster and removed at its end. Each host keeps its own namespace, address and
sshd; above 32 they share one dockerd (scripts/local-cluster up --shared-docker).

A pytest session of its own (scripts/test runs it after the main one): the test bed is one per
machine, and the main session's 3-host bed holds it (/var/tmp/fleet-cluster.lock) until that
session ends. So these tests are collected only when tests/scale is named on the command line
(`pytest tests` leaves them out).

The bed's helpers (Cluster, TestHost, Fleet, make_job) and the S3 server (s3server.py) are the
main suite's, from tests/integration.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = ROOT / "tests" / "integration"
sys.path.insert(0, str(INTEGRATION))

from s3server import bucket, s3  # noqa: E402, F401  (fixtures: a real S3 server, SeaweedFS)


def _bed_module():
    """tests/integration/conftest.py under another name (two modules named `conftest` would clash)."""
    spec = importlib.util.spec_from_file_location("fleet_test_bed", INTEGRATION / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


bed = _bed_module()
Cluster, TestHost, Fleet, make_job = bed.Cluster, bed.TestHost, bed.Fleet, bed.make_job
HOSTS = int(os.environ.get("FLEET_SCALE_HOSTS", "32"))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave these tests out unless the session was started for them (see the module's docstring)."""
    here = Path(__file__).parent
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    if any(path == here or here in path.parents for path in named):
        return None
    return True


def _bed_usable() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("dockerd")) and bool(shutil.which("sshd", path="/usr/sbin"))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]  # (the hook sees all)
    for item in ours:
        item.add_marker(pytest.mark.integration)
    if ours and _bed_usable():
        # Waiting for the bed (a CI run or a benchmark may hold it for a quarter of an hour)
        # is no test's time: the lock is taken here, before pytest-timeout times the first test.
        config.stash[_LOCK] = _take_lock()


_LOCK = pytest.StashKey[object]()


def _take_lock():
    lock = open(bed.CLUSTER_LOCK, "w")  # noqa: SIM115 (held for the whole session)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, pytestconfig) -> Cluster:
    if not _bed_usable():
        pytest.skip("the test bed needs root, dockerd and sshd (run scripts/setup)")
    inventory = tmp_path_factory.mktemp("cluster") / "hosts.yaml"
    lock = pytestconfig.stash.get(_LOCK, None) or _take_lock()
    subprocess.run([str(bed.LOCAL_CLUSTER), "up", "--hosts", str(HOSTS), "--inventory", str(inventory)],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    env = dict(line.split("=", 1) for line in
               (Path(os.environ.get("FLEET_CLUSTER_DIR", "/var/tmp/fleet-cluster")) / "hosts.env")
               .read_text().splitlines() if "=" in line)
    state = Path(env["FLEET_CLUSTER_DIR"])
    hosts = [TestHost(env[f"FLEET_H{i}_NAME"], env[f"FLEET_H{i}_ADDR"], env[f"FLEET_H{i}_DOCKER_HOST"],
                      Path(env[f"FLEET_H{i}_WORKDIR"]), state / f"h{i}") for i in range(1, HOSTS + 1)]
    try:
        yield Cluster(state, inventory, hosts, Path(env["FLEET_SSH_KEY"]), Path(env["FLEET_KNOWN_HOSTS"]),
                      env["FLEET_CONTROLLER_DOCKER_HOST"], env["FLEET_ECR_HOST"])
    finally:
        subprocess.run([str(bed.LOCAL_CLUSTER), "down"], timeout=600, stdout=subprocess.DEVNULL)
        lock.close()


@pytest.fixture
def fleet_home(tmp_path) -> Path:
    home = tmp_path / "fleet-home"
    home.mkdir()
    return home


@pytest.fixture
def fleet(fleet_home, tmp_path, cluster) -> Fleet:
    """The CLI; after the test, no job it ran may have left a container or a job directory
    on any of the hosts."""
    runner = Fleet(fleet_home, tmp_path, cluster)
    yield runner
    jobs = fleet_home / "jobs"
    for path in jobs.iterdir() if jobs.exists() else []:
        assert cluster.leftovers(path.name) == [], f"job {path.name} left things behind"
