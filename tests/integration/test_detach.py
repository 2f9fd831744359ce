"""`fleet run --detach`, `fleet logs -f`, `fleet wait`, and the exit codes a batch scheduler
acts on (75: the machinery failed, worth a retry; 1: the job did), on the test bed."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import make_job
from support.procwatch import argvs_holding


def _running(cluster, name: str) -> list[str]:
    return [h.name for h in cluster.hosts if h.docker("ps", "-q", "--filter", f"label=fleet.job={name}").strip()]


def _detach(fleet, job: dict):
    path = fleet.write_job(job)
    return fleet("run", "--inventory", str(fleet.cluster.inventory), str(path), "--detach", timeout=120)


def test_detach_returns_while_the_containers_run_then_logs_follow_and_wait_tell_the_end(fleet, cluster):
    # Each host prints 30 numbered lines over 3 s; then algo-2 exits 3 (the others are stopped).
    job = make_job('for n in $(seq 1 30); do echo "$(hostname) line $n"; sleep 0.1; done; '
                   '[ $(hostname) = algo-2 ] && exit 3; trap "exit 0" INT; sleep 30 & wait')
    name = job["ProcessingJobName"]
    detached = _detach(fleet, job)
    assert detached.returncode == 0, detached.stderr
    assert _running(cluster, name) == ["h1", "h2", "h3"]  # it returned while they run
    assert detached.stdout.strip().splitlines()[-1] == name
    assert f"fleet logs -f {name}" in detached.stderr and f"fleet wait {name}" in detached.stderr
    assert "Traceback" not in detached.stderr
    owner = json.loads((fleet.home / "jobs" / name / "owner.lock").read_text())["pid"]
    assert os.getsid(owner) == owner  # its own session: the terminal's signals do not reach it

    follow = fleet.start("logs", "-f", name)  # from other processes, as from other terminals
    waiter = fleet.start("wait", name)
    out, err = follow.communicate(timeout=120)
    assert follow.returncode == 0, err
    lines = out.splitlines()
    for k in (1, 2, 3):
        for n in range(1, 31):
            assert lines.count(f"[algo-{k}] algo-{k} line {n}") == 1, f"algo-{k} line {n}:\n{out}"
    assert len(lines) == len(set(lines)) == 90
    _, said = waiter.communicate(timeout=60)
    assert waiter.returncode == 1, said  # the job's code failed: no requeue
    assert f"{name}: Failed: AlgorithmError: algo-2 exited with code 3" in said
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Failed" and record["ExitCode"] == 1
    assert (fleet.home / "jobs" / name / "run.log").stat().st_size > 0  # what the owner said after detaching
    assert fleet("wait", name).returncode == 1  # and again, at once, once ended


def test_a_detached_jobs_owner_killed_is_taken_over_by_attach(fleet, cluster):
    job = make_job('for n in $(seq 1 40); do echo "line $n"; sleep 0.1; done')
    name = job["ProcessingJobName"]
    detached = _detach(fleet, job)
    assert detached.returncode == 0, detached.stderr
    owner = json.loads((fleet.home / "jobs" / name / "owner.lock").read_text())["pid"]
    os.kill(owner, signal.SIGKILL)
    gone = fleet("wait", name, timeout=60)  # says so rather than hang
    assert gone.returncode == 75, gone.stderr
    assert f"fleet attach {name}" in gone.stderr
    assert _running(cluster, name) == ["h1", "h2", "h3"]  # the containers live on meanwhile
    attached = fleet("attach", name, timeout=120)
    assert attached.returncode == 0, attached.stderr
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Completed" and record["ExitCode"] == 0
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == "".join(f"line {n}\n" for n in range(1, 41))
    assert fleet("wait", name).returncode == 0
    assert cluster.leftovers(name) == []


def test_detach_with_bad_input_fails_at_once_naming_the_field_and_starts_nothing(fleet, cluster):
    job = make_job("true")
    job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 101
    started = time.monotonic()
    run = _detach(fleet, job)
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - started < 20
    assert "ProcessingResources.ClusterConfig.InstanceCount" in run.stderr and "Traceback" not in run.stderr
    assert not (fleet.home / "jobs").exists() or list((fleet.home / "jobs").iterdir()) == []
    assert cluster.leftovers(job["ProcessingJobName"]) == []
    assert argvs_holding(str(fleet.tmp / f"{job['ProcessingJobName']}.json").encode()) == []  # no child left


def test_a_host_refusing_ssh_exits_75_and_a_failing_script_exits_1(fleet, cluster):
    cluster.hosts[1].stop_sshd()
    try:
        job = make_job("sleep 30")
        run = fleet.run_job(job)
        detached = _detach(fleet, make_job("sleep 30"))
    finally:
        cluster.hosts[1].start_sshd()
    assert run.returncode == 75, run.stderr
    assert "algo-2 (h2, 10.251.7.12): connection refused on port 22" in run.stderr
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed" and record["ExitCode"] == 75
    assert record["FailureReason"].startswith("ClientError: algo-2 (h2, 10.251.7.12)")  # SageMaker's prefix stays
    assert fleet("wait", job["ProcessingJobName"]).returncode == 75
    # --detach fails as run does: the same code, the same words
    assert detached.returncode == 75, detached.stderr
    assert "algo-2 (h2, 10.251.7.12): connection refused on port 22" in detached.stderr
    for host in cluster.hosts:
        assert host.containers(job["ProcessingJobName"]) == []

    failing = make_job("exit 3")
    run = fleet.run_job(failing)
    assert run.returncode == 1, run.stderr
    assert fleet.record(failing["ProcessingJobName"])["ExitCode"] == 1
