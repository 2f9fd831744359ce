"""The scale test bed: 32 real hosts (FLEET_SCALE_HOSTS), made once for this session by
scripts/local-cluster and removed at its end. Each host keeps its own namespace, address and
sshd; above 32 they share one dockerd (scripts/local-cluster up --shared-docker).

A pytest session of its own (scripts/test runs it after the main one): the test bed is one per
machine, and the main session's 3-host bed holds it (/var/tmp/fleet-cluster.lock) until that
session ends. So these tests are collected only when tests/scale is named on the command line
(`pytest tests` leaves them out).

The bed's helpers (Cluster, TestHost, Fleet, make_job; the fixtures fleet_home and fleet) and the
S3 server are the main suite's, from tests/support (bed.py, s3server.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import bed
from support.bed import fleet, fleet_home, make_job  # noqa: F401  (fixtures; make_job for the tests)
from support.s3server import bucket, s3  # noqa: F401  (fixtures: a real S3 server, SeaweedFS)

HOSTS = int(os.environ.get("FLEET_SCALE_HOSTS", "32"))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave these tests out unless the session was started for them (see the module's docstring)."""
    here = Path(__file__).parent
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    if any(path == here or here in path.parents for path in named):
        return None
    return True


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]  # (the hook sees all)
    for item in ours:
        item.add_marker(pytest.mark.integration)
    bed.lock_at_collection(config, ours)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, pytestconfig) -> bed.Cluster:
    if not bed.bed_usable():
        pytest.skip("the test bed needs root, dockerd and sshd (run scripts/setup)")
    inventory = tmp_path_factory.mktemp("cluster") / "hosts.yaml"
    with bed.bed_up(HOSTS, inventory, lock=bed.session_lock(pytestconfig), timeout=600) as cluster:
        yield cluster
