"""Job control and resilience, as the user and the hosts see them: `fleet stop` from another
process or with no `fleet run` left, `fleet attach` after a SIGKILL-ed controller, SSH
connections dropped (sshd killed, a link down), `fleet gc`, `fleet check`, two jobs at once.

Every test checks the end the user sees (status, exit code, complete logs with no line
twice, outputs) and, through the `fleet` fixture, that nothing is left on any host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import make_job, wait_running

LINES = 16  # each container prints this many numbered lines, one every 0.5 s
TICKS = ('trap "echo got SIGINT on $(hostname); exit 0" INT; h=$(hostname); for i in $(seq %d); do '
         'echo "line $i of $h"; sleep .5; done; echo "done on $h" > /opt/ml/output/message; '
         'hostname > /opt/ml/processing/output/$h' % LINES)
LONG = ('trap "echo got SIGINT on $(hostname); exit 0" INT; echo "up on $(hostname)"; '
        'while :; do sleep 0.2; done')


def _ticks_job(tmp_path: Path, **fields) -> tuple[dict, Path]:
    target = tmp_path / "collected"
    job = make_job(TICKS, ProcessingOutputConfig={"Outputs": [{"OutputName": "out", "S3Output": {
        "S3Uri": f"file://{target}", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        **fields)
    return job, target


def _assert_complete(fleet, name: str, target: Path | None = None) -> None:
    """Every host's stored log holds each of its lines exactly once, in order; the outputs
    and the message came back."""
    for k in (1, 2, 3):
        expected = "".join(f"line {i} of algo-{k}\n" for i in range(1, LINES + 1))
        assert fleet.log(name, f"algo-{k}") == expected, f"algo-{k}'s log"
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Completed", record.get("FailureReason")
    assert record["ExitMessage"] == "done on algo-1\ndone on algo-2\ndone on algo-3\n"
    assert {k: v["ExitCode"] for k, v in record["Hosts"].items()} == {"algo-1": 0, "algo-2": 0, "algo-3": 0}
    if target is not None:
        assert sorted(p.name for p in target.iterdir()) == ["algo-1", "algo-2", "algo-3"]


def _wait_for_log(fleet, name: str, algo: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in fleet.log(name, algo):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{algo} never logged {text!r}")


def _start(fleet, cluster, job: dict, *args: str):
    return fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)), *args)


def _start_long(fleet, cluster, *args: str) -> tuple[str, object]:
    """A LONG job, once every container of it is up and says so."""
    job = make_job(LONG)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job, *args)
    wait_running(cluster, name)
    for k in (1, 2, 3):
        _wait_for_log(fleet, name, f"algo-{k}", "up on")
    return name, process


def _sigkill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)


def _containers(cluster, name: str) -> list[str]:
    return [c for h in cluster.hosts for c in h.containers(name)]


# -- fleet stop ----------------------------------------------------------------------------------

def test_fleet_stop_from_a_second_process_stops_the_job_and_run_exits_130(fleet, cluster):
    name, process = _start_long(fleet, cluster)
    stop = fleet("stop", name, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert f"{name}: Stopped" in stop.stderr
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert fleet.record(name)["ProcessingJobStatus"] == "Stopped"
    for k in (1, 2, 3):
        assert f"got SIGINT on algo-{k}" in fleet.log(name, f"algo-{k}")
    assert _containers(cluster, name) == []


def test_fleet_stop_with_no_fleet_run_left_stops_at_the_hosts(fleet, cluster):
    name, process = _start_long(fleet, cluster)
    _sigkill(process)
    assert fleet.record(name)["ProcessingJobStatus"] == "InProgress"
    listed = fleet("list")
    assert f"{name}" in listed.stdout and "InProgress (no fleet process: fleet attach)" in listed.stdout
    stop = fleet("stop", name, timeout=60)
    assert stop.returncode == 0, stop.stderr
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Stopped"
    for k in (1, 2, 3):
        log = fleet.log(name, f"algo-{k}")
        assert log.count(f"up on algo-{k}\n") == 1 and f"got SIGINT on algo-{k}" in log
    assert fleet("stop", name).stderr.strip().endswith("already Stopped; nothing to stop")


# -- fleet attach --------------------------------------------------------------------------------

def test_attach_after_a_sigkilled_controller_finishes_the_job_as_run_would(fleet, cluster, tmp_path):
    job, target = _ticks_job(tmp_path)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job)
    for k in (1, 2, 3):
        _wait_for_log(fleet, name, f"algo-{k}", "line 3 of")
    _sigkill(process)
    time.sleep(1)  # the containers go on printing while nobody listens
    refused = fleet("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)))
    assert refused.returncode == 2  # the name is still the running job's
    attach = fleet("attach", name, timeout=90)
    assert attach.returncode == 0, attach.stderr
    for k in (1, 2, 3):
        assert f"[algo-{k}] line {LINES} of algo-{k}" in attach.stdout
    _assert_complete(fleet, name, target)
    again = fleet("attach", name)
    assert again.returncode == 2 and "it no longer runs" in again.stderr


def test_attach_waits_for_a_host_out_of_reach_for_a_while(fleet, cluster, tmp_path):
    job, target = _ticks_job(tmp_path)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job, "--host-timeout", "60")
    for k in (1, 2, 3):
        _wait_for_log(fleet, name, f"algo-{k}", "line 2 of")
    _sigkill(process)
    cluster.hosts[1].link(up=False)
    attach = fleet.start("attach", name)
    try:
        time.sleep(4)
    finally:
        cluster.hosts[1].link(up=True)
    out, err = attach.communicate(timeout=90)
    assert attach.returncode == 0, err
    _assert_complete(fleet, name, target)


def test_attach_while_fleet_run_lives_is_refused(fleet, cluster):
    job = make_job(LONG)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job)
    wait_running(cluster, name)
    attach = fleet("attach", name)
    assert attach.returncode == 2
    assert f"job {name} is run by another fleet process (pid {process.pid})" in attach.stderr
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130


# -- dropped connections ---------------------------------------------------------------------------

def test_sshd_killed_mid_job_and_restarted_is_survived(fleet, cluster, tmp_path):
    job, target = _ticks_job(tmp_path)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job)
    _wait_for_log(fleet, name, "algo-2", "line 2 of")
    cluster.hosts[1].stop_sshd()
    try:
        time.sleep(3)
    finally:
        cluster.hosts[1].start_sshd()
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    assert "algo-2 (h2, 10.251.7.12): reconnected after" in err
    _assert_complete(fleet, name, target)


def test_a_link_down_for_10_s_is_survived(fleet, cluster, tmp_path):
    job, target = _ticks_job(tmp_path)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job)
    _wait_for_log(fleet, name, "algo-3", "line 2 of")
    cluster.hosts[2].link(up=False)
    try:
        time.sleep(10)
    finally:
        cluster.hosts[2].link(up=True)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    _assert_complete(fleet, name, target)


def test_a_host_out_of_reach_past_host_timeout_fails_the_job_and_gc_clears_it(fleet, cluster):
    name, process = _start_long(fleet, cluster, "--host-timeout", "4", "--docker-timeout", "3")
    cluster.hosts[1].link(up=False)
    try:
        out, err = process.communicate(timeout=120)
    finally:
        cluster.hosts[1].link(up=True)
    assert process.returncode == 75, err
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"].startswith("InternalServerError: lost contact with algo-2 (10.251.7.12) for ")
    for k in (1, 3):
        assert f"got SIGINT on algo-{k}" in fleet.log(name, f"algo-{k}")
    # algo-2's container ran on, out of reach: gc (once the host is back) removes it
    assert cluster.hosts[1].containers(name) != []
    dry = fleet("gc", "--inventory", str(cluster.inventory), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"h2 (10.251.7.12): would remove container {name}-algo-2 (job {name})" in dry.stdout
    assert cluster.hosts[1].containers(name) != []
    gc = fleet("gc", "--inventory", str(cluster.inventory))
    assert gc.returncode == 0, gc.stderr
    assert f"removing container {name}-algo-2" in gc.stdout
    assert cluster.leftovers(name) == []


def test_a_docker_frozen_at_stop_time_is_given_up_and_the_job_still_ends(fleet, cluster):
    # algo-2's dockerd is frozen (SIGSTOP) when the stop comes: `docker stop` there never
    # answers. The stop is bounded (grace 2 + docker timeout 3 + margin 10 s): algo-2 is given
    # up, named, left for fleet gc; the others stop; the job ends Stopped.
    name, process = _start_long(fleet, cluster, "--stop-grace", "2", "--docker-timeout", "3")
    pid = int((cluster.hosts[1].dir / "dockerd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert process.returncode == 130, err
    assert f"algo-2 (h2, 10.251.7.12): the container {name}-algo-2 did not stop within 15 s" in err
    assert "cleanup incomplete: algo-2 (h2, 10.251.7.12): docker did not answer within 3 s" in err
    assert fleet.record(name)["ProcessingJobStatus"] == "Stopped"
    for k in (1, 3):
        assert f"got SIGINT on algo-{k}" in fleet.log(name, f"algo-{k}")
    assert cluster.hosts[0].containers(name) == [] and cluster.hosts[2].containers(name) == []
    # docker answers again: what the job left on algo-2 is fleet gc's
    assert cluster.hosts[1].containers(name) != []
    gc = fleet("gc", "--inventory", str(cluster.inventory))
    assert gc.returncode == 0, gc.stderr
    assert f"removing container {name}-algo-2" in gc.stdout
    assert cluster.leftovers(name) == []


# -- gc, check, two jobs -------------------------------------------------------------------------

def test_gc_removes_what_ended_jobs_left_and_nothing_else(fleet, cluster):
    kept = make_job("true")
    run = fleet.run_job(kept, "--keep")
    assert run.returncode == 0, run.stderr
    kept_name = kept["ProcessingJobName"]
    assert (cluster.hosts[0].workdir / kept_name / "algo-1").is_dir()
    # a running job of this store, and a container another fleet started, stay
    running = make_job(LONG)
    process = _start(fleet, cluster, running)
    wait_running(cluster, running["ProcessingJobName"])
    h3 = cluster.hosts[2]
    h3.docker("create", "--name", "foreign-algo-1", "--label", "fleet.job=foreign",
              "--label", "fleet.controller=elsewhere:/srv/fleet", "fleet-test:busybox", "true")
    try:
        gc = fleet("gc", "--inventory", str(cluster.inventory))
        assert gc.returncode == 0, gc.stderr
        for k in (1, 2, 3):
            assert f"removing directory {cluster.hosts[k - 1].workdir / kept_name / f'algo-{k}'}" in gc.stdout
        assert running["ProcessingJobName"] not in gc.stdout
        assert "left alone: container foreign-algo-1 (belongs to another fleet (elsewhere:/srv/fleet))" in gc.stderr
        assert cluster.leftovers(kept_name) == []
        assert len(_containers(cluster, running["ProcessingJobName"])) == 3
        assert h3.containers("foreign") == ["foreign-algo-1"]
    finally:
        h3.docker("rm", "--force", "foreign-algo-1", check=False)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_check_prints_a_row_per_host_and_names_what_fails(fleet, cluster, tmp_path):
    job = make_job("true")
    ok = fleet("check", "--inventory", str(cluster.inventory), str(fleet.write_job(job)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = ok.stdout.splitlines()
    assert rows[0].split()[:7] == ["HOST", "SSH", "DOCKER", "ENGINE-API", "IMAGE", "DISK", "GPUS"]
    assert len(rows) == 4 and all(row.rstrip().endswith("ok") for row in rows[1:])
    doc = cluster.inventory_doc()
    doc["hosts"][2]["gpus"] = "all"
    inventory = cluster.write_inventory(tmp_path / "gpu.yaml", doc)
    big = make_job("true", name="t-check-big")
    big["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = 16384
    bad = fleet("check", "--inventory", str(inventory), str(fleet.write_job(big)))
    assert bad.returncode == 1
    rows = bad.stdout.splitlines()
    assert all("VolumeSizeInGB needs 16384 GiB" in row for row in rows[1:])
    assert "GPUs: no NVIDIA runtime or CDI devices" in rows[3]
    assert "GPUs" not in rows[1]


def test_preflight_refuses_a_job_larger_than_the_free_space_and_starts_nothing(fleet, cluster):
    job = make_job("echo must not run")
    job["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = 16384
    run = fleet.run_job(job)
    assert run.returncode == 75
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError: algo-1 (h1, 10.251.7.11): not enough free space in ")
    assert "VolumeSizeInGB needs 16384.0 GiB" in reason
    assert reason.count("not enough free space") == 3  # one line per failing host
    assert "must not run" not in run.stdout


def test_two_jobs_on_the_same_hosts_at_once_do_not_collide(fleet, cluster, tmp_path):
    first, first_target = _ticks_job(tmp_path / "a")
    second, second_target = _ticks_job(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    processes = [_start(fleet, cluster, job) for job in (first, second)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    _assert_complete(fleet, first["ProcessingJobName"], first_target)
    _assert_complete(fleet, second["ProcessingJobName"], second_target)


def test_a_job_name_another_fleet_runs_on_the_hosts_is_refused_and_left_alone(fleet, cluster, tmp_path):
    job = make_job(LONG)
    name = job["ProcessingJobName"]
    process = _start(fleet, cluster, job)
    wait_running(cluster, name)
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    try:
        clash = subprocess.run(fleet.command("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job))),
                               capture_output=True, text=True, timeout=60, env=fleet.env(FLEET_HOME=str(other_home)))
        assert clash.returncode == 1
        assert "belongs to another run of a job named" in clash.stderr
        assert len(_containers(cluster, name)) == 3  # the first job's containers are untouched
        assert all((h.workdir / name / f"algo-{k}" / "ml" / "config").is_dir() for k, h in enumerate(cluster.hosts, 1))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130
    assert json.loads((other_home / "jobs" / name / "describe.json").read_text())["ProcessingJobStatus"] == "Failed"
