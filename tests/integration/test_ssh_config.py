"""fleet's SSH connections obey the user's ~/.ssh/config where the inventory is silent (as
`ssh` does), and never what would hurt: an agent or X11 forwarded to the hosts, a TTY on the
data streams. Each test runs fleet with HOME set to a directory of its own (.ssh/config,
.ssh/known_hosts), against the 3 real test hosts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_job, wait_running

CONTROLLER = "10.251.7.1"  # where fleet's SSH sessions come from (scripts/local-cluster)


@pytest.fixture
def home(tmp_path) -> Path:
    """A HOME of the test's own: ~/.ssh/config and ~/.ssh/known_hosts are what it writes."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True, mode=0o700)
    return path


def ssh_config(home: Path, text: str) -> None:
    config = home / ".ssh" / "config"
    config.write_text(text)
    config.chmod(0o600)


def inventory_without_host_keys(cluster, path: Path, **defaults) -> Path:
    """The test bed's inventory with no known_hosts nor host_key_checking: the config decides."""
    doc = cluster.inventory_doc()
    doc["defaults"].pop("known_hosts")
    doc["defaults"].pop("host_key_checking")
    doc["defaults"].update(defaults)
    return cluster.write_inventory(path, doc)


def sessions_from_fleet() -> dict[int, tuple[bytes, int]]:
    """Every process on the test hosts serving an SSH session from the controller: pid →
    (its environment, its controlling tty number; 0 for none). The hosts are network
    namespaces of this machine: their processes are in this /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or a kernel thread
            continue
        if f"SSH_CONNECTION={CONTROLLER} ".encode() in environ:
            tty = int(stat.rpartition(")")[2].split()[4])
            found[int(entry.name)] = (environ, tty)
    return found


@pytest.fixture
def agent(tmp_path):
    """A running ssh-agent holding the test bed's key (stopped by its pid)."""
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        yield sock
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_config_forwards_no_agent_and_forces_no_tty_and_the_tar_streams_stay_whole(
        fleet, cluster, home, agent, tmp_path):
    subprocess.run(["ssh-add", "-q", str(cluster.key)], env={**os.environ, "SSH_AUTH_SOCK": str(agent)},
                   check=True, capture_output=True)
    ssh_config(home, "Host *\n  ForwardAgent yes\n  ForwardX11Trusted yes\n  RequestTTY force\n")
    source = tmp_path / "in"
    (source / "d").mkdir(parents=True)
    # What a TTY would mangle: CR/LF, ^C ^D ^Z ^S, and plenty of arbitrary bytes.
    data = {"d/binary.bin": os.urandom(2 * 1024 * 1024), "ctrl.txt": b"a\r\nb\nc\x03\x04\x1a\x13\x11\n\r"}
    for name, body in data.items():
        (source / name).write_bytes(body)
    target = tmp_path / "out"
    job = make_job("cp -R /opt/ml/processing/input/. /opt/ml/processing/output/$(hostname); sleep 6",
                   ProcessingInputs=[{"InputName": "data", "S3Input": {
                       "S3Uri": f"file://{source}", "LocalPath": "/opt/ml/processing/input",
                       "S3DataType": "S3Prefix"}}],
                   ProcessingOutputConfig={"Outputs": [{"OutputName": "out", "S3Output": {
                       "S3Uri": f"file://{target}", "LocalPath": "/opt/ml/processing/output",
                       "S3UploadMode": "EndOfJob"}}]})
    env = fleet.env(HOME=str(home), SSH_AUTH_SOCK=str(agent))
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)), env=env)
    try:
        wait_running(cluster, job["ProcessingJobName"])
        sessions = sessions_from_fleet()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert sessions, "no SSH session of fleet's found on the hosts while the job ran"
    for pid, (environ, tty) in sessions.items():
        assert b"SSH_AUTH_SOCK=" not in environ, f"pid {pid}: the agent was forwarded"
        assert b"DISPLAY=" not in environ, f"pid {pid}: X11 was forwarded"
        assert tty == 0, f"pid {pid}: the session has a TTY"
    assert process.returncode == 0, err
    for algo in ("algo-1", "algo-2", "algo-3"):
        for name, body in data.items():
            got = (target / algo / name).read_bytes()
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest(), f"{algo}: {name} differs"


def test_hosts_behind_a_jump_host_run_a_job_that_talks_by_algo_name(fleet, cluster, home):
    first, *inner = cluster.hosts
    ssh_config(home, "".join(
        [f"Host algo-host-1-alias\n  HostName {first.address}\n"]
        + [f"Host algo-host-{h.index}-alias\n  HostName {h.address}\n  ProxyJump algo-host-1-alias\n" for h in inner]
        + [f"Host *\n  User root\n  IdentityFile {cluster.key}\n  IdentitiesOnly yes\n"]))
    shutil.copy(cluster.known_hosts, home / ".ssh" / "known_hosts")
    inventory = cluster.write_inventory(home / "hosts.yaml", {"hosts": [
        {"address": f"algo-host-{h.index}-alias", "name": h.name, "workdir": str(h.workdir)} for h in cluster.hosts]})
    job = yaml.safe_load((ROOT / "configs" / "demo-job.yaml").read_text())
    job["ProcessingJobName"] = make_job()["ProcessingJobName"]
    run = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)),
                env=fleet.env(HOME=str(home), FLEET_DEBUG="1"), timeout=180)
    assert run.returncode == 0, run.stderr
    assert "[algo-1] total: 6000" in run.stdout  # 1000 + 2000 + 3000: both shares arrived by name
    assert "through algo-host-1-alias" in run.stderr  # the inner hosts were reached through the jump host
    assert fleet.record(job["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"


def test_the_configs_known_hosts_file_is_trusted_where_the_inventory_is_silent(fleet, cluster, home, tmp_path):
    (home / ".ssh" / "known_hosts").write_text("")  # ~/.ssh/known_hosts does not trust the hosts
    trusted = tmp_path / "trusted_hosts"
    shutil.copy(cluster.known_hosts, trusted)
    ssh_config(home, f"Host *\n  UserKnownHostsFile {trusted}\n")
    inventory = inventory_without_host_keys(cluster, tmp_path / "hosts.yaml")
    run = fleet("check", "--inventory", str(inventory), env=fleet.env(HOME=str(home)))
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_inventorys_known_hosts_wins_over_the_config(fleet, cluster, home, tmp_path):
    trusted = tmp_path / "trusted_hosts"
    shutil.copy(cluster.known_hosts, trusted)
    ssh_config(home, f"Host *\n  UserKnownHostsFile {trusted}\n  StrictHostKeyChecking no\n")
    inventory = inventory_without_host_keys(cluster, tmp_path / "hosts.yaml",
                                            known_hosts=str(tmp_path / "empty"), host_key_checking="strict")
    run = fleet("check", "--inventory", str(inventory), env=fleet.env(HOME=str(home)))
    assert run.returncode == 1
    assert (run.stdout + run.stderr).count("SSH host key not verified") == 3


def test_the_configs_accept_new_records_keys_in_its_known_hosts_file(fleet, cluster, home, tmp_path):
    recorded = tmp_path / "recorded_hosts"
    ssh_config(home, f"Host *\n  UserKnownHostsFile {recorded}\n  StrictHostKeyChecking accept-new\n")
    inventory = inventory_without_host_keys(cluster, tmp_path / "hosts.yaml")
    run = fleet("check", "--inventory", str(inventory), env=fleet.env(HOME=str(home)))
    assert run.returncode == 0, run.stdout + run.stderr
    keys = {line.split()[0]: line.split()[2] for line in recorded.read_text().splitlines()}
    assert keys == {line.split()[0]: line.split()[2] for line in cluster.known_hosts.read_text().splitlines()}
    assert not (home / ".ssh" / "known_hosts").exists()


def test_host_key_checking_off_is_said_once_naming_the_hosts(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["defaults"]["known_hosts"] = str(tmp_path / "none")
    doc["defaults"]["host_key_checking"] = "off"
    inventory = cluster.write_inventory(tmp_path / "hosts.yaml", doc)
    run = fleet.run_job(make_job("true"), inventory=inventory)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "host keys are not checked" in line]
    assert len(warnings) == 1, run.stderr
    assert all(f"({h.name}, {h.address})" in warnings[0] for h in cluster.hosts), warnings[0]
