"""The test bed's hosts are what scripts/local-cluster says they are: each runs the engine
FLEET_BED_ENGINES gave it (docker20: Debian 12's dockerd 20.10; docker28: dockerd 28.5, classic
store; docker28c: dockerd 28.5 with the containerd image store; podman: Podman 5.8's
Docker-compatible API) on overlay storage, and a host's SSH sessions cost what a real host's
do (no rc file of this machine's root runs: here its ~/.bashrc runs pyenv).
No fleet code here: these tests check the bed (scripts/local-cluster, conftest.py)."""

from __future__ import annotations

import json
import subprocess
from itertools import cycle

import pytest

from conftest import BED_ENGINES, IMAGE

pytestmark = [pytest.mark.engines, pytest.mark.mixed_engines]  # on every bed scripts/test brings up


def _ssh(cluster, host, command: str) -> str:
    result = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(cluster.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={cluster.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         f"root@{host.address}", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"ssh {host.name} {command!r}: {result.stderr}"
    return result.stdout


def _storage(cluster) -> str:
    env = dict(line.split("=", 1) for line in (cluster.state / "hosts.env").read_text().splitlines() if "=" in line)
    return env.get("FLEET_STORAGE", "overlay2")


def test_hosts_get_the_engines_asked_for_in_turn(cluster):
    asked = cycle(BED_ENGINES.split(","))
    assert cluster.engines == [next(asked) for _ in cluster.hosts]
    assert cluster.engines == [host.engine for host in cluster.hosts]


def test_each_host_engine_reports_its_version_and_store(cluster):
    storage = _storage(cluster)  # overlay2 where the state dir's filesystem allows it (ext4 here)
    for host in cluster.hosts:
        info = json.loads(host.docker("info", "--format", "{{json .}}"))
        server = json.loads(host.docker("version", "--format", "{{json .Server}}"))
        components = {c["Name"]: c["Version"] for c in server.get("Components") or []}
        driver_status = dict(map(tuple, info.get("DriverStatus") or []))
        where = f"{host.name} ({host.engine}): {info['ServerVersion']} {info['Driver']} {driver_status}"
        if host.engine == "podman":
            assert components.get("Podman Engine", "").startswith("5."), where
            assert info["Driver"] == ("overlay" if storage == "overlay2" else "vfs"), where
            continue
        assert "Podman Engine" not in components, where
        if host.engine == "docker20":
            assert info["ServerVersion"].startswith("20.10."), where
        else:
            assert info["ServerVersion"].startswith("28."), where
        if host.engine == "docker28c":
            assert driver_status.get("driver-type") == "io.containerd.snapshotter.v1", where
            assert info["Driver"] == ("overlayfs" if storage == "overlay2" else "native"), where
        else:
            assert "driver-type" not in driver_status, where
            assert info["Driver"] == storage, where


def test_a_host_session_reads_no_rc_file_and_reaches_its_own_engine(cluster):
    for host in cluster.hosts:
        out = _ssh(cluster, host, 'echo "PATH=$PATH"; echo "PYENV_SHELL=${PYENV_SHELL-}"; '
                                  'docker version --format "SERVER={{.Server.Version}}"')
        lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert "pyenv" not in lines["PATH"] and lines["PYENV_SHELL"] == "", f"{host.name}: {out}"
        assert lines["SERVER"] == host.docker("version", "--format", "{{.Server.Version}}").strip(), host.name


def test_a_host_engine_sees_the_bed_paths_and_runs_the_test_image(cluster):
    """What fleet does on every host: a container with a job directory under the host's workdir
    bind-mounted (the chroot engines see the bed's paths at the same path), on the host's network."""
    for host in cluster.hosts:
        job = host.workdir / "bed-engine-check"
        job.mkdir(parents=True, exist_ok=True)
        try:
            (job / "in").write_text(f"hello {host.name}\n")
            out = _ssh(cluster, host, f"docker run --rm --network host -v {job}:/opt/ml/x --entrypoint sh {IMAGE} "
                                      "-c 'cat /opt/ml/x/in; echo written >/opt/ml/x/out; ip -4 -o addr show eth0'")
            assert f"hello {host.name}" in out and host.address in out, f"{host.name} ({host.engine}): {out}"
            assert (job / "out").read_text() == "written\n"
        finally:
            subprocess.run(["rm", "-rf", str(job)], check=False)
