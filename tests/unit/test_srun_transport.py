"""The srun transport without a Slurm: a stand-in `srun` on PATH records its argv and the
environment it was given, then runs the command after `--` (or says what srun says when a
step cannot start). What a real Slurm does with them is tested on the bed
(tests/integration/test_slurm.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_host_scripts import FakeHost

from fleet import host as hostscripts
from fleet.errors import HostError
from fleet.inventory import Host, SrunHost
from fleet.slurm import config_value, seconds, stop_grace
from fleet.transport import transport_for
from fleet.transport.base import drain
from fleet.transport.srun import EXPORTED, node_address

FAKE_SRUN = r"""#!/bin/sh
python3 -c 'import json, os, sys
json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, open(os.environ["SRUN_RECORD"], "w"))' "$@"
if [ -n "$SRUN_FAILS" ]; then echo "srun: error: $SRUN_FAILS" >&2; exit 1; fi
while [ "$1" != -- ]; do shift; done
shift
"$@"
status=$?
if [ "$status" -ne 0 ]; then echo "srun: error: node-7: task 0: Exited with exit code $status" >&2; fi
exit "$status"
"""


@pytest.fixture
def srun(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    record = tmp_path / "srun.json"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SRUN_RECORD", str(record))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "zq-secret-never-on-a-node")
    return record


def node(ip: str | None = "10.9.8.7") -> Host:
    return SrunHost(address="node-7", ip=ip)


async def test_a_command_is_one_task_on_its_node_with_an_allowlisted_environment(srun: Path):
    async with transport_for(node(), "algo-1 (node-7)") as transport:
        result = await transport.run(["sh", "-c", 'cat; echo "[$FLEET_STEP]" >&2', "zq"], stdin=b"bytes \x00\xff")
    assert (result.exit_status, result.stdout, result.stderr) == (0, b"bytes \x00\xff", b"[1]\n")
    seen = json.loads(srun.read_text())
    assert seen["argv"][:4] == ["--overlap", "--nodes=1", "--ntasks=1", "--nodelist=node-7"]
    assert seen["argv"][seen["argv"].index("--"):] == ["--", "sh", "-c", 'cat; echo "[$FLEET_STEP]" >&2', "zq"]
    exported = next(word for word in seen["argv"] if word.startswith("--export="))
    assert exported == "--export=" + ",".join(EXPORTED)  # never ALL: the controller's secrets stay
    assert "AWS_SECRET_ACCESS_KEY" not in exported and "zq-secret" not in " ".join(seen["argv"])
    assert seen["env"]["FLEET_STEP"] == "1"
    assert transport.peer_address == "10.9.8.7"


async def test_the_commands_status_comes_back_and_srun_failing_is_not_a_status(srun: Path, monkeypatch):
    async with transport_for(node(), "algo-1 (node-7)") as transport:
        assert (await transport.run(["sh", "-c", "exit 3"])).exit_status == 3
        monkeypatch.setenv("SRUN_FAILS", "Unable to create step for job 7: Job/step already completing or completed")
        with pytest.raises(HostError, match=r"^algo-1 \(node-7\): srun could not run sh there: Unable to create "
                                            r"step for job 7: Job/step already completing"):
            await transport.run(["sh", "-c", "exit 0"])  # not the command's 1: the step never ran


def test_an_srun_that_ended_before_the_controller_wrote_is_named_not_a_crash(srun: Path, monkeypatch):
    """srun gone before fleet writes to it (here: Slurm's config out of reach, as at a job's
    cleanup): on uvloop, fleet's loop, the write once raised RuntimeError('unable to perform
    operation on <WriteUnixTransport closed=True>; the handler is closed') and the job ended
    InternalServerError. The write is dropped; srun's end names the node and srun's words."""
    import uvloop

    monkeypatch.setenv("SRUN_FAILS",
                       "s_p_parse_file: unable to status file /gone/slurm.conf: No such file or directory")

    async def session() -> str:
        async with transport_for(node(), "algo-2 (node-7)") as transport:
            process = await transport.start(["sh", "-c", "cat", "fleet-session"])
            await drain(process.read_stderr)
            try:
                await process.wait()
            except HostError as exc:
                error = exc.message
            await process.write(b"clean\n")  # what cleanup sends a session
            process.close_stdin()
            return error

    assert uvloop.run(session()) == ("algo-2 (node-7): srun could not run fleet-session there: s_p_parse_file: "
                                     "unable to status file /gone/slurm.conf: No such file or directory")


@pytest.mark.skipif(shutil.which("srun") is None, reason="needs Slurm's srun (slurm-client; scripts/setup)")
def test_a_job_whose_srun_cannot_read_slurms_config_names_each_host_and_exits_75(tmp_path: Path):
    """The real srun, with a Slurm config it cannot read (it fails before any network): the
    job ended `InternalServerError: fleet failed unexpectedly: RuntimeError('unable to perform
    operation on <WriteUnixTransport closed=True ...>; the handler is closed')` (its cleanup
    wrote `clean` to a session srun had ended), exit 1. Now: the machine's failure (75), each
    host named with srun's own words, as the Slurm job's exit code would tell a requeue."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=zq\nSlurmctldHost=zq(127.0.0.1)\nNodeName=node-[1-2]\n"
                    "PartitionName=zq Nodes=ALL\nNotASlurmKey=1\n")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n- {address: node-1, transport: srun, ip: 127.0.0.1}\n"
                         "- {address: node-2, transport: srun, ip: 127.0.0.1}\n")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "ProcessingJobName": "zq-srun-conf",
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge",
                                                  "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "127.0.0.1:9/zq:latest", "ContainerEntrypoint": ["true"]}}))
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_CONF": str(conf), "FLEET_HOME": str(tmp_path / "home"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run([sys.executable, "-m", "fleet", "run", "--inventory", str(inventory), str(job)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 75, result.stderr
    record = json.loads((tmp_path / "home" / "jobs" / "zq-srun-conf" / "describe.json").read_text())
    assert record["ExitCode"] == 75 and record["ProcessingJobStatus"] == "Failed"
    for k in (1, 2):
        assert (f"algo-{k} (node-{k}): srun could not run fleet-session there: _parse_next_key: Parsing error "
                f"at unrecognized key: NotASlurmKey; Unable to process configuration file") in record["FailureReason"]
    assert "InternalServerError" not in result.stderr and "Traceback" not in result.stderr


async def test_outside_an_allocation_the_host_is_named(srun: Path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(HostError, match=r"algo-2 \(node-7\): transport srun needs a Slurm allocation"):
        async with transport_for(node(), "algo-2 (node-7)"):
            pass


def test_slurms_words_are_read():
    assert node_address("NodeName=bed-2 Arch=x86_64 NodeAddr=10.251.7.12 NodeHostName=bed-2") == "10.251.7.12"
    text = ("Configuration data as of 2026-11-29T21:00:00\n"
            "JobAcctGatherType       = (null)\nKillWait                = 30 sec\n")
    assert seconds(config_value(text, "KillWait")) == 30
    assert seconds(config_value(text, "MissingKey")) is None


@pytest.mark.parametrize(("asked", "kill_wait", "grace"), [
    (30, None, 30),  # outside Slurm: as asked
    (30, 30, 20),  # Slurm's default KillWait: the stop fits in it
    (5, 30, 5),
    (30, 12, 2),
    (30, 5, 1),  # a tiny KillWait: still a grace, however short
    (0, 30, 0),
])
def test_the_containers_grace_fits_in_killwait(asked, kill_wait, grace):
    assert stop_grace(asked, kill_wait) == grace


# -- the session as a job step: SIGTERM (scancel, the time limit) stops and removes ---------------

RUNNING_DOCKER = r"""#!/bin/sh
# The container runs on; `docker stop` makes its trap say its last words, which `docker logs`
# shows from then on (the follower, as the real one, only what came before its end).
case "$1" in
  wait) printf 'wait\n' >> "$FAKE_DIR/calls"; exec sleep 60 ;;
  logs)
    printf 'logs\n' >> "$FAKE_DIR/calls"
    printf 'running\n'
    if [ "$2" = --follow ]; then exec sleep 61; fi
    if [ -e "$FAKE_DIR/stopped" ]; then printf 'got-INT, saving checkpoint\n'; fi
    exit 0 ;;
  stop) printf 'stop %s\n' "$2" >> "$FAKE_DIR/calls"; : > "$FAKE_DIR/stopped"; exit 0 ;;
esac
exec "$FAKE_DIR/bin/docker.fake" "$@"
"""


def session_signalled(tmp_path: Path, step: bool, shell_too: bool = True,
                      follower_first: bool = False) -> tuple[int, FakeHost, bytes]:
    """A session that started its container (which runs on) and streamed its first line,
    then SIGTERM to every process of it, as slurmd signals a step (with `shell_too` False,
    to all but the session's shell: the signal has reached its children, not yet it; with
    `follower_first`, the docker CLI that follows the log has it, and has ended, before the
    rest): its status, the fake host to look at, and the session's whole stdout (the
    container's log as fleet stores it)."""
    fake = FakeHost(tmp_path)
    fake.docker.rename(tmp_path / "bin" / "docker.fake")
    fake.docker.write_text(RUNNING_DOCKER)
    fake.docker.chmod(0o755)
    env = {**fake.env, **({"FLEET_STEP": "1"} if step else {})}
    argv = hostscripts.session(fake.plan, docker_timeout=10)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                               env=env, cwd=tmp_path, start_new_session=True)
    try:
        process.stdin.write(hostscripts.session_input(fake.plan) + hostscripts.image_use("sha256:0123456789abcdef")
                            + b"go\n")
        process.stdin.flush()
        lines = [process.stderr.readline() for _ in range(4)]
        assert lines[-1] == b"fleet:started\n", lines
        first = process.stdout.readline()  # the stream is under way
        assert first == b"running\n"
        deadline = time.monotonic() + 10
        while fake.calls.count("wait") + fake.calls.count("logs") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if follower_first:
            follower = {pid for pid in _group(process.pid) if _cmdline(pid) == b"sleep\x0061\x00"}
            assert len(follower) == 1, follower
            os.kill(follower.pop(), signal.SIGTERM)
            # the shell that waited for it has had time to speak, and the stream's dd its end
            deadline = time.monotonic() + 10
            while len(_group(process.pid)) > 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        if shell_too:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            for pid in _group(process.pid) - {process.pid}:
                with contextlib.suppress(ProcessLookupError):  # a child that ended since the listing
                    os.kill(pid, signal.SIGTERM)
        rest = process.stdout.read()
        return process.wait(timeout=20), fake, first + rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _group(pgid: int) -> set[int]:
    """The processes of process group `pgid`."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.add(int(stat.parent.name))
    return pids


def test_a_step_signalled_stops_then_removes_the_container_and_the_job_dir(tmp_path: Path):
    status, fake, _ = session_signalled(tmp_path, step=True)
    assert status == 143
    calls = (tmp_path / "calls").read_text().splitlines()
    assert f"stop {fake.plan.container}" in calls and calls[-1] == "rm"  # stopped (its grace), then removed
    assert calls.index(f"stop {fake.plan.container}") < len(calls) - 1
    assert not Path(fake.plan.job_dir).exists()


def test_a_step_signalled_sends_what_the_container_said_after_the_stream_was_cut(tmp_path: Path):
    """Slurm's SIGTERM ends `docker logs --follow` with the rest of the step: what the
    container writes on its stop signal (a trap's "saving checkpoint") still reaches the
    controller, after what the stream sent, and nothing twice."""
    status, _, stdout = session_signalled(tmp_path, step=True)
    assert status == 143
    assert stdout == b"running\ngot-INT, saving checkpoint\n"


def test_a_step_whose_children_got_the_signal_first_still_stops_and_removes(tmp_path: Path):
    """slurmstepd signals a step's processes one at a time, children first: the session's
    `docker wait` and log stream may end before its shell has its SIGTERM. The step ends as
    on that signal (nothing left, the last words sent), not with a lost supervision that
    leaves the container running in an allocation where no new step can remove it."""
    status, fake, stdout = session_signalled(tmp_path, step=True, shell_too=False)
    assert status == 143
    calls = (tmp_path / "calls").read_text().splitlines()
    assert f"stop {fake.plan.container}" in calls and calls[-1] == "rm"
    assert not Path(fake.plan.job_dir).exists()
    assert stdout == b"running\ngot-INT, saving checkpoint\n"


def test_over_ssh_a_signalled_session_leaves_the_container_to_the_controller(tmp_path: Path):
    status, fake, _ = session_signalled(tmp_path, step=False)
    assert status != 0
    assert not any(call.startswith("stop") for call in (tmp_path / "calls").read_text().splitlines())
    assert Path(fake.plan.job_dir).exists()  # `fleet attach` / the controller's cleanup take it from here


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_a_log_follower_that_the_signal_ended_first_adds_no_words_of_the_shell(tmp_path: Path):
    """The step's SIGTERM can end the docker CLI that follows the log before the shell that
    waits for it, which then says "Terminated" on its stderr: those words are not the
    container's, and counted as streamed they took the place of its last words (CI:
    b"running\nTerminated\nving checkpoint\n")."""
    status, _, stdout = session_signalled(tmp_path, step=True, shell_too=False, follower_first=True)
    assert status == 143
    assert stdout == b"running\ngot-INT, saving checkpoint\n"
