"""fleet under a real Slurm (the bed's: slurmctld on the controller, a slurmd per test host in
its namespace; the `slurm` fixture). Jobs are submitted with sbatch as a user's batch script
would be; what the test looks at is what Slurm, the containers and the hosts show."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_job, wait_running

PYTHON = shlex.quote(sys.executable)
WORKDIR = Path("/var/lib/fleet")  # the default workdir: the nodes share this machine's disk


def nothing_left(cluster, name: str) -> None:
    """No container of the job on any node, and no job directory (the bed hosts' own workdirs,
    and the default one every node of `--inventory slurm` used)."""
    assert cluster.leftovers(name) == []
    assert not (WORKDIR / name).exists()


def job_file(tmp: Path, job: dict) -> Path:
    path = tmp / f"{job['ProcessingJobName']}.json"
    path.write_text(json.dumps(job))
    return path


def submit(slurm, fleet, tmp: Path, job: dict, inventory: str = "slurm", exec_: bool = False,
           home: Path | None = None, check: bool = False, **env: str) -> str:
    """sbatch --nodes=3 of `fleet run --inventory INVENTORY job.json` (after `fleet check`
    with `check`); HOME may be one with no SSH key at all."""
    path = shlex.quote(str(job_file(tmp, job)))
    command = f"{PYTHON} -m fleet run --inventory {shlex.quote(inventory)} {path}"
    if check:
        command = f"{PYTHON} -m fleet check --inventory {shlex.quote(inventory)} {path} && {command}"
    environment = slurm.env(FLEET_HOME=str(fleet.home), PYTHONUNBUFFERED="1", **env)
    if home is not None:
        environment["HOME"] = str(home)
    return slurm.sbatch(wrap=("exec " if exec_ else "") + command, env=environment, cwd=tmp)


@pytest.fixture
def no_ssh_home(tmp_path: Path) -> Path:
    home = tmp_path / "home-without-ssh"
    home.mkdir()
    return home


def test_inventory_slurm_runs_on_the_allocations_nodes_in_order_over_srun(slurm, fleet, cluster, tmp_path,
                                                                          no_ssh_home):
    """`fleet run --inventory slurm` in sbatch: no hosts.yaml, no SSH key anywhere (HOME has
    none): srun is the transport; the containers run on the allocation's nodes, algo-k on
    the k-th node; the Slurm job's exit code is fleet's."""
    script = "tr -d '\\n' < /opt/ml/config/resourceconfig.json; echo; exit 0"
    job = make_job(script)
    job_id = submit(slurm, fleet, tmp_path, job, home=no_ssh_home, check=True)
    state, code = slurm.wait_job(job_id, timeout=180)
    output = slurm.output(job_id, tmp_path)
    assert (state, code) == ("COMPLETED", "0:0"), output
    for node in slurm.nodes:  # fleet check's row for each node, through srun too
        assert any(line.startswith(node) and "present" in line for line in output.splitlines()), output
    allocation = slurm.run("scontrol", "show", "hostnames", slurm.job(job_id)["NodeList"]).stdout.split()
    assert allocation == slurm.nodes
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Completed" and record["ExitCode"] == 0
    run = json.loads((fleet.home / "jobs" / job["ProcessingJobName"] / "run.json").read_text())
    assert [host["address"] for host in run["Hosts"]] == allocation
    assert {host["transport"] for host in run["Hosts"]} == {"srun"}
    for index in range(3):
        seen = json.loads(fleet.log(job["ProcessingJobName"], f"algo-{index + 1}").splitlines()[0])
        assert seen["current_host"] == f"algo-{index + 1}"
    nothing_left(cluster, job["ProcessingJobName"])


def test_the_same_allocation_over_ssh_when_the_inventory_says_so(slurm, fleet, cluster, tmp_path):
    """`hosts: {from: slurm}` with SSH defaults: the same nodes, reached over SSH."""
    inventory = tmp_path / "slurm-ssh.yaml"
    inventory.write_text(yaml.safe_dump({
        "defaults": {"transport": "ssh", "user": "root", "identity_file": str(cluster.key),
                     "known_hosts": str(slurm.known_hosts)},
        "hosts": {"from": "slurm"}}))
    job = make_job("hostname; exit 0")
    job_id = submit(slurm, fleet, tmp_path, job, inventory=str(inventory))
    state, code = slurm.wait_job(job_id, timeout=180)
    assert (state, code) == ("COMPLETED", "0:0"), slurm.output(job_id, tmp_path)
    run = json.loads((fleet.home / "jobs" / job["ProcessingJobName"] / "run.json").read_text())
    assert [host["address"] for host in run["Hosts"]] == slurm.nodes
    assert {host["transport"] for host in run["Hosts"]} == {"ssh"}
    assert fleet.record(job["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"
    nothing_left(cluster, job["ProcessingJobName"])


def test_a_failing_script_gives_1_and_a_node_whose_docker_is_down_gives_75(slurm, fleet, cluster, tmp_path):
    """The Slurm job's exit code tells the two apart: the user's code failed (1: requeueing
    will not help) or the machinery did (75: RequeueExit=75 retries it)."""
    failing = make_job("echo failing on purpose; exit 3")
    first = submit(slurm, fleet, tmp_path, failing)
    assert slurm.wait_job(first, timeout=180) == ("FAILED", "1:0"), slurm.output(first, tmp_path)
    assert fleet.record(failing["ProcessingJobName"])["FailureReason"].startswith("AlgorithmError")

    # h2's docker is down as fleet sees it: nothing answers on its socket.
    inventory = tmp_path / "docker-down.yaml"
    inventory.write_text(yaml.safe_dump({"hosts": [
        {"address": slurm.nodes[0], "transport": "srun"},
        {"address": slurm.nodes[1], "transport": "srun",
         "docker": f"docker -H unix://{tmp_path}/dockerd-killed.sock"},
        {"address": slurm.nodes[2], "transport": "srun"}]}))
    broken = make_job("echo should never run")
    second = submit(slurm, fleet, tmp_path, broken, inventory=str(inventory))
    state, code = slurm.wait_job(second, timeout=180)
    output = slurm.output(second, tmp_path)
    assert (state, code) == ("FAILED", "75:0"), output
    assert f"algo-2 ({slurm.nodes[1]}" in output and "docker" in output
    assert "should never run" not in output  # no container started anywhere
    nothing_left(cluster, failing["ProcessingJobName"])
    nothing_left(cluster, broken["ProcessingJobName"])


def test_scancel_mid_job_stops_it_and_leaves_nothing_on_any_node(slurm, fleet, cluster, tmp_path):
    """scancel: Slurm sends SIGTERM to fleet (the batch step) and to every step (the hosts'
    sessions); SIGKILL after KillWait. The job ends Stopped (fleet's 130), each container
    got its stop signal, and no container nor job directory is left on any node, however
    Slurm's signal reached the processes of each step (slurmstepd signals them one at a
    time: a session's `docker wait` could end before its shell had its SIGTERM, and leave
    the container running: 1 run in 4 before)."""
    script = ("trap 'echo got-INT; echo saving checkpoint; exit 0' INT; echo running; "
              "while :; do sleep 0.2; done")
    job = make_job(script)
    name = job["ProcessingJobName"]
    job_id = submit(slurm, fleet, tmp_path, job, exec_=True)
    wait_running(cluster, name)
    time.sleep(0.5)
    cancelled = time.monotonic()
    slurm.run("scancel", job_id)
    state, _ = slurm.wait_job(job_id, timeout=120)
    ended = time.monotonic() - cancelled
    assert state == "CANCELLED"
    record = fleet.record(name)
    output = slurm.output(job_id, tmp_path)
    assert record["ProcessingJobStatus"] == "Stopped" and record["ExitCode"] == 130, output
    assert ended < slurm.kill_wait, f"fleet's stop took {ended:.1f} s, longer than KillWait"
    nothing_left(cluster, name)
    # Each container got the stop signal (SIGINT, as `fleet stop`), not just SIGKILL, and what
    # it said then is in its stored log and in `fleet logs`, once, after what came before.
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == "running\ngot-INT\nsaving checkpoint\n", output
    shown = fleet("logs", name).stdout
    assert all(f"[algo-{k}] saving checkpoint" in shown for k in (1, 2, 3)), shown
    assert "stop grace 20 s" in output  # fitted in KillWait (30 s on the bed)


def test_the_time_limits_warning_signal_stops_the_job_as_ctrl_c_does(slurm, fleet, cluster, tmp_path):
    """`sbatch --signal=B:TERM@30 -t 1`: Slurm warns fleet (the batch shell, `exec`ed into)
    before the time limit. The allocation still stands, so fleet stops the containers through
    new steps, as Ctrl-C would: Stopped, and the Slurm job ends with fleet's code, 130."""
    job = make_job("trap 'echo stopped by SIGINT; exit 0' INT; echo running; while :; do sleep 0.2; done")
    name = job["ProcessingJobName"]
    command = (f"exec {PYTHON} -m fleet run --inventory slurm "
               f"{shlex.quote(str(job_file(tmp_path, job)))}")
    job_id = slurm.sbatch(None, "--signal=B:TERM@30", "--time=1", wrap=command, cwd=tmp_path,
                          env=slurm.env(FLEET_HOME=str(fleet.home), PYTHONUNBUFFERED="1"))
    state, code = slurm.wait_job(job_id, timeout=150)
    output = slurm.output(job_id, tmp_path)
    assert (state, code) == ("FAILED", "130:0"), output
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Stopped" and record["ExitCode"] == 130
    assert all("stopped by SIGINT" in fleet.log(name, f"algo-{k}") for k in (1, 2, 3))
    nothing_left(cluster, name)


def test_a_detached_jobs_owner_killed_inside_the_allocation_is_taken_over_through_new_steps(
        slurm, fleet, cluster, tmp_path):
    """In one batch script: `fleet run --detach --inventory slurm`, its owner SIGKILLed, then
    `fleet attach`: the sessions are resumed through new srun steps, every line once."""
    job = make_job('for n in $(seq 1 40); do echo "line $n"; sleep 0.1; done')
    name = job["ProcessingJobName"]
    fleet_ = f"{PYTHON} -m fleet"
    script = "\n".join([
        "#!/bin/sh",
        f"{fleet_} run --detach --inventory slurm {shlex.quote(str(job_file(tmp_path, job)))} || exit $?",
        f"kill -KILL \"$({PYTHON} -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"pid\"])' "
        f"{shlex.quote(str(fleet.home / 'jobs' / name / 'owner.lock'))})\"",
        f"exec {fleet_} attach {name}", ""])
    job_id = slurm.sbatch(script, cwd=tmp_path, env=slurm.env(FLEET_HOME=str(fleet.home), PYTHONUNBUFFERED="1"))
    state, code = slurm.wait_job(job_id, timeout=180)
    assert (state, code) == ("COMPLETED", "0:0"), slurm.output(job_id, tmp_path)
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Completed" and record["ExitCode"] == 0
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == "".join(f"line {n}\n" for n in range(1, 41))
    nothing_left(cluster, name)
