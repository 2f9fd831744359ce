"""Running, stopping, the record and cleanup, as the user and the hosts see them."""

from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import make_job, wait_running as _wait_running


def test_logs_are_printed_with_the_host_prefix_and_stored_raw(fleet):
    # stdout and stderr reach Docker's log through two pipes, so their relative order is
    # only kept for writes apart in time: the last, unterminated line comes a moment later.
    # (`docker logs --follow` of Docker 20.10 drops such a last line in half the runs: the
    # session sends what it missed.)
    job = make_job('echo "out of $(hostname)"; echo "err of $(hostname)" >&2; sleep 0.5; printf "no newline"')
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    name = job["ProcessingJobName"]
    for k in (1, 2, 3):
        assert f"[algo-{k}] out of algo-{k}" in run.stdout
        assert f"[algo-{k}] err of algo-{k}" in run.stdout
        assert f"[algo-{k}] no newline" in run.stdout
        stored = fleet.log(name, f"algo-{k}")
        assert f"out of algo-{k}\n" in stored and f"err of algo-{k}\n" in stored
        assert stored.endswith("no newline")
        assert fleet("logs", name, "--host", f"algo-{k}", "--raw").stdout == stored  # a pipe: unchanged
    assert fleet("logs", name).stdout.count("[algo-2] ") == 3


def test_completed_job_record_and_exit_code_zero(fleet):
    job = make_job("true")
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    described = json.loads(fleet("describe", job["ProcessingJobName"], "--json").stdout)
    assert described["ProcessingJobStatus"] == "Completed"
    assert "FailureReason" not in described
    for key in ("CreationTime", "ProcessingStartTime", "ProcessingEndTime", "LastModifiedTime",
                "ProcessingJobArn", "AppSpecification", "ProcessingResources"):
        assert key in described
    assert described["Hosts"] == {
        f"algo-{k}": {"Name": f"h{k}", "Address": f"10.251.7.{10 + k}", "ExitCode": 0} for k in (1, 2, 3)}


@pytest.mark.engines  # stopping, on every engine
def test_a_failing_container_fails_the_job_and_stops_the_others_at_once(fleet, cluster):
    job = make_job('if [ $(hostname) = algo-2 ]; then sleep 1; exit 3; fi; '
                   'trap "echo got SIGINT; exit 0" INT; sleep 300 & wait')
    run = fleet.run_job(job)
    assert run.returncode == 1
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"] == "AlgorithmError: algo-2 exited with code 3. See job logs for more information"
    assert record["Hosts"]["algo-2"]["ExitCode"] == 3
    # the others got SIGINT (the stop signal) rather than running their 300 s
    assert "got SIGINT" in fleet.log(job["ProcessingJobName"], "algo-1")
    assert "got SIGINT" in fleet.log(job["ProcessingJobName"], "algo-3")


def _stop_test(fleet, cluster, sig):
    job = make_job('trap "echo stopping on SIGINT; echo bye > /opt/ml/output/message; exit 0" INT; '
                   'echo started; sleep 300 & wait')
    name = job["ProcessingJobName"]
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)))
    _wait_running(cluster, name)
    time.sleep(0.5)  # let the traps be set
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Stopped"
    assert record["ExitMessage"] == "bye\nbye\nbye\n"
    for k in (1, 2, 3):
        assert f"[algo-{k}] stopping on SIGINT" in out
    return record


@pytest.mark.engines  # stopping, on every engine
def test_ctrl_c_stops_every_container_with_sigint(fleet, cluster):
    _stop_test(fleet, cluster, signal.SIGINT)


@pytest.mark.engines  # stopping, on every engine
def test_sigterm_stops_the_job_like_ctrl_c(fleet, cluster):
    _stop_test(fleet, cluster, signal.SIGTERM)


@pytest.mark.engines  # stopping, on every engine
def test_a_second_ctrl_c_kills_at_once(fleet, cluster):
    # The container ignores SIGINT and the grace is 10 minutes: only a kill ends it.
    job = make_job('trap "echo ignoring SIGINT" INT; while true; do sleep 1; done')
    name = job["ProcessingJobName"]
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                          "--stop-grace", "600")
    _wait_running(cluster, name)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    time.sleep(1.5)
    assert process.poll() is None  # still in its grace
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "ignoring SIGINT" in out
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Stopped"
    assert {h["ExitCode"] for h in record["Hosts"].values()} == {137}


@pytest.mark.engines  # stopping, on every engine
def test_max_runtime_stops_the_job_and_exits_124(fleet):
    job = make_job("sleep 300", StoppingCondition={"MaxRuntimeInSeconds": 2})
    run = fleet.run_job(job, "--stop-grace", "1")
    assert run.returncode == 124, run.stderr
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"].startswith("MaxRuntimeExceeded:")


def test_exit_message_concatenates_hosts_in_order(fleet):
    job = make_job('printf "message of %s;" $(hostname) > /opt/ml/output/message')
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert fleet.record(job["ProcessingJobName"])["ExitMessage"] == \
        "message of algo-1;message of algo-2;message of algo-3;"


def test_exit_message_is_cut_to_1024_bytes_at_a_character_boundary(fleet):
    # 700 bytes of 'é' (2 bytes each) per host: 2100 bytes in all, cut inside a character.
    job = make_job('i=0; while [ $i -lt 350 ]; do printf "\\303\\251"; i=$((i+1)); done > /opt/ml/output/message; '
                   'printf "x" >> /opt/ml/output/message', count=2)
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    message = fleet.record(job["ProcessingJobName"])["ExitMessage"]
    assert message == "é" * 350 + "x" + "é" * 161
    assert len(message.encode()) <= 1024


def test_exit_message_that_is_not_utf8_fails_the_job_naming_the_host(fleet):
    job = make_job('[ $(hostname) = algo-3 ] && printf "\\377\\376 bad" > /opt/ml/output/message; true')
    run = fleet.run_job(job)
    assert run.returncode == 1
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"].startswith("ClientError:")
    assert "algo-3" in record["FailureReason"]


def test_a_symlinked_message_is_not_followed(fleet):
    job = make_job("ln -s /etc/hostname /opt/ml/output/message", count=1)
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert "ExitMessage" not in fleet.record(job["ProcessingJobName"])


def test_nothing_remains_on_any_host_after_each_kind_of_end(fleet, cluster):
    # Each run must really have run its containers to the end it asks for: a fleet that
    # refused every job would leave nothing behind as well.
    for script, returncode, status in (("true", 0, "Completed"), ("exit 4", 1, "Failed")):
        job = make_job(script)
        run = fleet.run_job(job)
        assert run.returncode == returncode, run.stderr
        record = fleet.record(job["ProcessingJobName"])
        assert record["ProcessingJobStatus"] == status
        codes = [record["Hosts"][f"algo-{k}"].get("ExitCode") for k in (1, 2, 3)]
        if status == "Completed":
            assert "FailureReason" not in record
            assert codes == [0, 0, 0]
        else:  # the first to exit fails the job; the others may be stopped before their `exit 4`
            assert record["FailureReason"].startswith("AlgorithmError: algo-")
            assert record["FailureReason"].endswith(" exited with code 4. See job logs for more information")
            assert 4 in codes
        assert cluster.leftovers(job["ProcessingJobName"]) == []


def test_keep_leaves_the_job_directories_but_no_container(fleet, cluster):
    job = make_job("echo kept > /opt/ml/output/data")
    run = fleet.run_job(job, "--keep")
    assert run.returncode == 0, run.stderr
    name = job["ProcessingJobName"]
    for k, host in enumerate(cluster.hosts, start=1):
        assert host.containers(name) == []
        assert (host.workdir / name / f"algo-{k}" / "ml" / "output" / "data").read_text() == "kept\n"
        import shutil
        shutil.rmtree(host.workdir / name)


def test_name_override_and_reuse_is_refused_keeping_the_old_record(fleet, cluster):
    job = make_job("true", count=1)
    path = fleet.write_job(job)
    first = fleet("run", "--inventory", str(cluster.inventory), "--name", "renamed-job", str(path))
    assert first.returncode == 0, first.stderr
    before = fleet.record("renamed-job")
    again = fleet("run", "--inventory", str(cluster.inventory), "--name", "renamed-job", str(path))
    assert again.returncode == 2
    assert "renamed-job already exists" in again.stderr
    assert fleet.record("renamed-job") == before
    assert not (fleet.home / "jobs" / job["ProcessingJobName"]).exists()


def test_a_yaml_job_file_runs(fleet, cluster):
    job = make_job("echo from yaml", count=1)
    path = fleet.write_job(job, suffix=".yaml")
    run = fleet("run", "--inventory", str(cluster.inventory), str(path))
    assert run.returncode == 0, run.stderr
    assert "[algo-1] from yaml" in run.stdout


def test_ignored_fields_get_a_one_line_notice(fleet):
    job = make_job("true", count=1, RoleArn="arn:aws:iam::123456789012:role/Processing",
                   Tags=[{"Key": "team", "Value": "ml"}])
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert "fleet: RoleArn: ignored" in run.stderr
    assert "fleet: Tags: ignored" in run.stderr


def test_without_an_inventory_the_job_runs_on_this_machine(fleet, cluster):
    # The local transport runs docker here; DOCKER_HOST points it at a test host's daemon.
    job = make_job("hostname; cat /opt/ml/config/resourceconfig.json", count=1)
    path = fleet.write_job(job)
    run = fleet("run", str(path), env=fleet.env(DOCKER_HOST=cluster.hosts[0].docker_host))
    assert run.returncode == 0, run.stderr
    assert "[algo-1] algo-1" in run.stdout
    assert '"current_host": "algo-1"' in run.stdout
    assert cluster.hosts[0].containers(job["ProcessingJobName"]) == []
    assert list((fleet.home / "work").iterdir()) == []


def test_a_local_host_and_ssh_hosts_run_one_job(fleet, cluster, tmp_path):
    # algo-1 is `transport: local` (docker on the controller; DOCKER_HOST points it at h1's
    # daemon here, so its containers live at h1's address, given as `ip`).
    doc = cluster.inventory_doc()
    doc["hosts"][0] = {"address": "localhost", "name": "controller", "transport": "local",
                       "ip": cluster.hosts[0].address, "workdir": str(tmp_path / "local-work")}
    inventory = cluster.write_inventory(tmp_path / "mixed.yaml", doc)
    job = make_job('if [ $(hostname) = algo-1 ]; then printf "#!/bin/sh\\ncat>&2" >/r; chmod +x /r; nc -l -p 9124 -e /r; else '
                   'for i in $(seq 50); do echo "hi from $(hostname)" | nc -w 2 algo-1 9124 && exit 0; '
                   'sleep 0.2; done; exit 1; fi', count=2)
    path = fleet.write_job(job)
    run = fleet("run", "--inventory", str(inventory), str(path),
                env=fleet.env(DOCKER_HOST=cluster.hosts[0].docker_host))
    assert run.returncode == 0, run.stderr + run.stdout
    assert "[algo-1] hi from algo-2" in run.stdout
    assert fleet.record(job["ProcessingJobName"])["Hosts"]["algo-1"]["Name"] == "controller"
    assert list((tmp_path / "local-work").iterdir()) == []
