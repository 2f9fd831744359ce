"""The whole life of a job on 32 hosts at once (FLEET_SCALE_HOSTS): its inputs staged from S3,
each host's logs, a failing host stopping all the others, a stop reaching every host, and
nothing left on any host after each end."""

from __future__ import annotations

import signal
import time

from conftest import HOSTS, make_job

ALGOS = [f"algo-{k}" for k in range(1, HOSTS + 1)]


def _lines(out: str, algo: str) -> list[str]:
    prefix = f"[{algo}] "
    return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]


def _input(uri: str, distribution: str) -> dict:
    return {"InputName": "data", "S3Input": {
        "S3Uri": uri, "LocalPath": "/opt/ml/processing/input", "S3DataType": "S3Prefix",
        "S3DataDistributionType": distribution}}


def test_a_job_on_every_host_gets_its_shard_and_its_logs(fleet, cluster, s3, bucket):
    # one object per host (ShardedByS3Key), one every host reads (FullyReplicated)
    shards = {f"shard/part-{i:03d}.txt": f"part {i}\n".encode() for i in range(HOSTS)}
    for key, body in shards.items():
        s3.put(bucket, key, body)
    s3.put(bucket, "common/config.txt", b"shared config\n")
    job = make_job("echo host $(hostname); cat /opt/ml/processing/input/*.txt; "
                   "cat /opt/ml/processing/common/config.txt", count=HOSTS,
                   ProcessingInputs=[_input(f"s3://{bucket}/shard/", "ShardedByS3Key"),
                                     {**_input(f"s3://{bucket}/common/", "FullyReplicated"),
                                      "InputName": "common"}])
    job["ProcessingInputs"][1]["S3Input"]["LocalPath"] = "/opt/ml/processing/common"
    started = time.monotonic()
    path = fleet.write_job(job)
    run = fleet("run", "--inventory", str(cluster.inventory), str(path), env=fleet.env(**s3.env), timeout=300)
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-3000:]
    name = job["ProcessingJobName"]
    seen: list[str] = []
    for algo in ALGOS:
        lines = _lines(run.stdout, algo)
        assert lines[0] == f"host {algo}"
        assert lines[-1] == "shared config"
        seen += lines[1:-1]
        assert f"host {algo}\n" in fleet.log(name, algo)
    assert sorted(seen) == sorted(body.decode().strip() for body in shards.values())  # each shard once
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Completed"
    assert all(record["Hosts"][algo]["ExitCode"] == 0 for algo in ALGOS)
    # the console stays readable: one line per input, not one per host
    assert sum("input data:" in line for line in run.stderr.splitlines()) == 1, run.stderr
    print(f"{HOSTS} hosts, a job with two S3 inputs: {took:.1f} s")


def test_a_failing_host_stops_every_other_host_at_once(fleet, cluster):
    job = make_job(f'if [ $(hostname) = algo-{HOSTS} ]; then sleep 8; exit 3; fi; '
                   'trap "echo got SIGINT; exit 0" INT; echo running; sleep 300 & wait', count=HOSTS)
    started = time.monotonic()
    run = fleet.run_job(job, timeout=300)
    took = time.monotonic() - started
    assert run.returncode == 1, run.stderr[-3000:]
    name = job["ProcessingJobName"]
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"] == (f"AlgorithmError: algo-{HOSTS} exited with code 3. "
                                       "See job logs for more information")
    for algo in ALGOS[:-1]:  # every other host got SIGINT rather than running its 300 s
        assert "got SIGINT" in fleet.log(name, algo), algo
        assert record["Hosts"][algo]["ExitCode"] == 0
    assert took < 120, f"{took:.1f} s"
    print(f"{HOSTS} hosts, one failing: the job ended in {took:.1f} s")


def test_ctrl_c_reaches_every_host_in_parallel(fleet, cluster):
    job = make_job('trap "echo stopping on SIGINT; sleep 2; exit 0" INT; echo started; sleep 300 & wait',
                   count=HOSTS)
    name = job["ProcessingJobName"]
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)))
    _wait_started(fleet, name)
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    took = time.monotonic() - stopped
    assert process.returncode == 130, err[-3000:]
    assert fleet.record(name)["ProcessingJobStatus"] == "Stopped"
    for algo in ALGOS:
        assert "stopping on SIGINT" in _lines(out, algo), algo
    # each container takes 2 s to stop: in parallel, the whole stop is a few seconds, not 2 s per host
    assert took < 2 + 15, f"{took:.1f} s"
    print(f"{HOSTS} hosts stopped by Ctrl-C in {took:.1f} s (each container 2 s)")


def _wait_started(fleet, name: str, timeout: float = 120) -> None:
    """Until every host's log says `started` (the traps are set)."""
    deadline = time.monotonic() + timeout
    logs = fleet.home / "jobs" / name / "logs"
    while time.monotonic() < deadline:
        if all((logs / f"{algo}.log").exists() and "started" in (logs / f"{algo}.log").read_text()
               for algo in ALGOS):
            return
        time.sleep(0.2)
    raise AssertionError(f"the containers of {name} never all started")
