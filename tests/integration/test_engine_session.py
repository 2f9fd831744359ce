"""The session through the engine's API (fleet/runtime/instance.py, supervise.sh's
await_end): once the inputs are in place, the controller starts the container, follows its
log, waits for its exit and removes it through the API over the host's SSH connection; the
host runs no `docker start`, `logs`, `wait` nor `rm`. Seen by a docker command that writes down each
call it is asked to make (the inventory's `docker`), on every engine of the bed, against the
same job with the API turned off (FLEET_ENGINE_API=0: the host scripts make those calls)."""

from __future__ import annotations

import shlex

import pytest

from conftest import make_job

pytestmark = pytest.mark.engines

# algo-2 fails with a message; every host ends on a line without a newline (the one Docker
# 20.10's follow can miss).
SCRIPT = ("printf 'one\\ntwo\\n'; printf 'last-of-%s' \"$(hostname)\"; "
          "if [ \"$(hostname)\" = algo-2 ]; then echo 'failed here' > /opt/ml/output/message; exit 3; fi")


def _logged_docker(cluster, tmp_path, calls, doc=None):
    """The bed's inventory (or `doc`), each host's docker command wrapped in a script that
    appends its first word (the docker verb) to `calls` (a path, or a list: one per host),
    then runs it."""
    doc = doc or cluster.inventory_doc()
    for index, entry in enumerate(doc["hosts"]):
        log = calls[index] if isinstance(calls, list) else calls
        words = shlex.split(str(entry.get("docker") or doc["defaults"].get("docker") or "docker"))
        # named `docker`, as the bed's own: a plain docker command, whose engine the session tells
        (tmp_path / f"bin-{index}").mkdir(exist_ok=True)
        wrapper = tmp_path / f"bin-{index}" / "docker"
        wrapper.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {shlex.quote(str(log))}\n"
                           f"exec {shlex.join(words)} \"$@\"\n")
        wrapper.chmod(0o755)
        entry["docker"] = str(wrapper)
    return cluster.write_inventory(tmp_path / "logged.yaml", doc)


@pytest.mark.parametrize("api", [True, False], ids=["api", "scripts"])
def test_the_container_is_followed_through_the_api_with_no_docker_process_for_it(cluster, fleet, tmp_path,
                                                                                   api):
    calls = tmp_path / "calls"
    inventory = _logged_docker(cluster, tmp_path, calls)
    job = make_job(SCRIPT, count=3)
    name = job["ProcessingJobName"]
    env = fleet.env() if api else fleet.env(FLEET_ENGINE_API="0")
    ran = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), timeout=180, env=env)
    assert ran.returncode == 1, ran.stderr

    record = fleet.record(name)
    assert {algo: host["ExitCode"] for algo, host in record["Hosts"].items()} == {
        "algo-1": 0, "algo-2": 3, "algo-3": 0}
    assert record["ExitMessage"] == "failed here\n", record
    for k in (1, 2, 3):  # the container's bytes exactly, the last unterminated line too
        assert fleet.log(name, f"algo-{k}") == f"one\ntwo\nlast-of-algo-{k}"
    verbs = calls.read_text().split() if calls.exists() else []
    if api:  # created, started, followed, removed through the API: no docker process at all
        assert verbs == [], verbs
    else:  # the same job, supervised by the host scripts: the test sees those calls
        assert verbs.count("create") == 3, verbs
        assert {"start", "logs", "wait", "rm"} <= set(verbs), verbs


def test_docker_args_the_api_request_cannot_carry_are_the_hosts_docker_creates(cluster, fleet, tmp_path):
    """A host whose docker_args hold an option fleet does not translate (--shm-size) gets its
    container from its own `docker create`, with that option's meaning; the others' are
    created through the API. Each container is still followed through the API."""
    doc = cluster.inventory_doc()
    doc["hosts"][0]["docker_args"] = ["--shm-size", "48m"]
    calls = [tmp_path / f"calls-{k}" for k in (1, 2, 3)]
    inventory = _logged_docker(cluster, tmp_path, calls, doc)
    job = make_job("df -k /dev/shm | tail -n 1 | awk '{print \"shm=\" $2}'", count=2)
    name = job["ProcessingJobName"]
    ran = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), timeout=180)
    assert ran.returncode == 0, ran.stderr
    assert fleet.log(name, "algo-1") == "shm=49152\n"
    assert "shm=49152" not in fleet.log(name, "algo-2")
    first = calls[0].read_text().split()
    assert first.count("create") == 1 and "start" not in first, first
    assert not calls[1].exists(), calls[1].read_text()


def test_where_the_socket_is_another_engine_the_host_scripts_supervise(cluster, fleet, tmp_path):
    """h1's engine_socket names h2's engine, while h1's docker command talks to h1's: the API
    there shows no container of this run (the session's check), so h1's scripts supervise;
    h2 and h3 go through the API. The job is whole, and nothing is left on either engine."""
    doc = cluster.inventory_doc()
    doc["hosts"][0]["engine_socket"] = str(cluster.hosts[1].dir / "docker.sock")
    calls = [tmp_path / f"calls-{k}" for k in (1, 2, 3)]
    inventory = _logged_docker(cluster, tmp_path, calls, doc)
    job = make_job(SCRIPT, count=3)
    name = job["ProcessingJobName"]
    ran = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), timeout=180)
    assert ran.returncode == 1, ran.stderr
    record = fleet.record(name)
    assert {algo: host["ExitCode"] for algo, host in record["Hosts"].items()} == {
        "algo-1": 0, "algo-2": 3, "algo-3": 0}
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == f"one\ntwo\nlast-of-algo-{k}"
    verbs = [path.read_text().split() if path.exists() else [] for path in calls]
    assert {"create", "start", "logs", "wait", "rm"} <= set(verbs[0]), verbs[0]
    assert verbs[1:] == [[], []], verbs  # created and followed through the API: no docker process


@pytest.mark.parametrize("api", [True, False], ids=["api", "scripts"])
def test_a_container_the_engine_cannot_start_fails_the_job_as_the_users_error(cluster, fleet, tmp_path, api):
    """An entrypoint the image lacks: the engine refuses the start (the OCI runtime cannot
    exec it). Through the API as through `docker start`: ClientError, exit 1 (running the job
    again would fail again), the engine's words kept, and nothing left on any host."""
    job = make_job(count=3)
    job["AppSpecification"]["ContainerEntrypoint"] = ["/no/such/program"]
    env = fleet.env() if api else fleet.env(FLEET_ENGINE_API="0")
    ran = fleet("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)), timeout=180, env=env)
    assert ran.returncode == 1, ran.stderr
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError:"), reason
    assert "docker could not start the container" in reason and "/no/such/program" in reason, reason
