"""Secrets and the other users of the same machines (issue points 7 and 8).

Every local user can read every process's argv (/proc/PID/cmdline): the Environment (in
processingjobconfig.json too) must never be in one, on the hosts or on the controller. The
job's files must be out of other users' reach, and nothing another user planted may be
written through. The test hosts share this machine's kernel and file system: one scan of
/proc covers the controller and every host, and the hosts' job directories are paths here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import IMAGE, make_job, wait_running
from support.procwatch import argvs_holding

OTHER_UID = 1000  # another local user of the machine (and the container USER of one test)


def _lines(out: str, algo: str) -> list[str]:
    prefix = f"[{algo}] "
    return [line.removeprefix(prefix) for line in out.splitlines() if line.startswith(prefix)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _as_other_user(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def open_workdir(cluster, tmp_path):
    """(workdir, inventory): the test hosts with a workdir every local user can reach, as a
    host's /var/lib/fleet (the test bed's own is under a 0700 directory). Whatever a job
    leaves there fails the test."""
    workdir = Path(f"/var/tmp/zq-open-work-{secrets.token_hex(4)}")
    workdir.mkdir(mode=0o755)
    doc = cluster.inventory_doc()
    for entry in doc["hosts"]:
        entry["workdir"] = str(workdir)
    try:
        yield workdir, cluster.write_inventory(tmp_path / "open.yaml", doc)
        assert list(workdir.iterdir()) == [], "a job left things behind"
    finally:
        shutil.rmtree(workdir)


def test_an_environment_value_is_in_no_process_argv_and_no_file_others_can_read(fleet, cluster, open_workdir):
    workdir, inventory = open_workdir
    secret = f"zq-{secrets.token_hex(16)}"
    job = make_job('echo "seen:$SECRET"; sleep 6', count=3, Environment={"SECRET": secret, "PLAIN": "x"})
    process = fleet.start("run", "--inventory", str(inventory), str(fleet.write_job(job)))
    try:
        wait_running(cluster, job["ProcessingJobName"])
        # While every container runs: no argv on the machine holds the value.
        assert argvs_holding(secret.encode()) == []
        for k in (1, 2, 3):  # the hosts share this file system: one workdir for all
            job_dir = workdir / job["ProcessingJobName"] / f"algo-{k}"
            private = job_dir / "ml"
            config = private / "config" / "processingjobconfig.json"
            assert secret in config.read_text()  # the container's copy...
            assert _mode(job_dir) == 0o711 and _mode(private) == 0o700
            assert _mode(config) == 0o644  # ...for any USER of the image, in a directory others cannot enter
            assert not (private / "env").exists()  # the env file went once the container was created
            refused = _as_other_user("cat", str(config))
            assert refused.returncode != 0 and "Permission denied" in refused.stderr
            assert _as_other_user("ls", str(job_dir)).returncode != 0  # 0711: not even listed
        # The controller's records: FLEET_HOME 0700, the files holding the request 0600.
        home = fleet.home
        records = home / "jobs" / job["ProcessingJobName"]
        assert _mode(home) == 0o700 and _mode(records) == 0o700
        for name in ("describe.json", "run.json", "owner.lock"):
            assert _mode(records / name) == 0o600, name
        assert secret in (records / "run.json").read_text()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    for k in (1, 2, 3):
        assert _lines(stdout, f"algo-{k}") == [f"seen:{secret}"]
    for algo in ("algo-1", "algo-2", "algo-3"):
        assert _mode(fleet.home / "jobs" / job["ProcessingJobName"] / "logs" / f"{algo}.log") == 0o600
    # On a terminal the values are ***; `describe --json` has them, as DescribeProcessingJob.
    described = fleet("describe", job["ProcessingJobName"])
    assert "SECRET=*** PLAIN=***" in described.stdout and secret not in described.stdout
    assert secret in fleet("describe", job["ProcessingJobName"], "--json").stdout
    dry = fleet("run", "--dry-run", "--inventory", str(cluster.inventory), str(fleet.write_job(
        {**job, "ProcessingJobName": job["ProcessingJobName"] + "-dry"})))
    assert dry.returncode == 0, dry.stderr
    assert "SECRET=***" in dry.stdout and secret not in dry.stdout + dry.stderr


# What docker's env file cannot carry (newlines, a carriage return at the end) and what a
# shell would run: each reaches the container as it is.
VERBATIM = {"LINES": "line1\nline2", "TRAILING": "trailing\n\n", "CR_END": "ends with CR\r",
            "SHELL": "it's \"$(touch /tmp/x)\" `id`"}


@pytest.mark.engines
def test_environment_values_reach_the_container_byte_for_byte_through_no_argv_and_no_file_left(
        fleet, cluster, open_workdir):
    workdir, inventory = open_workdir
    secret = f"zq-{secrets.token_hex(16)}"
    environment = {**VERBATIM, "PEM": f"-----BEGIN-----\n{secret}\n-----END-----\n"}
    # Each value as hex (od), after its key; the shell assignment keeps trailing newlines.
    script = ('for k in ' + ' '.join(environment) + '; do eval "v=\\$$k"; printf "%s:" $k; '
              'printf %s "$v" | od -An -tx1 -v | tr -d " \\n"; echo; done; [ -e /tmp/x ] && echo touched:00; sleep 5')
    assert len(script) <= 256
    job = make_job(script, count=2, Environment=environment)
    name = job["ProcessingJobName"]
    process = fleet.start("run", "--inventory", str(inventory), str(fleet.write_job(job)))
    try:
        wait_running(cluster, name, count=2)
        # While the containers run: no argv on the machine holds a value, no value file is left.
        for value in environment.values():
            assert argvs_holding(value.encode()) == [], value
        assert argvs_holding(secret.encode()) == []
        for k in (1, 2):
            private = workdir / name / f"algo-{k}" / "ml"
            assert sorted(p.name for p in private.iterdir() if p.name.startswith("env")) == []
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    for k in (1, 2):
        seen = dict(line.split(":", 1) for line in _lines(stdout, f"algo-{k}"))
        assert {key: bytes.fromhex(hexed) for key, hexed in seen.items()} == \
            {key: value.encode() for key, value in environment.items()}
    assert secret not in stdout + stderr
    # On a terminal the values stay ***; describe --json has them, byte for byte.
    described = fleet("describe", name)
    assert "LINES=***" in described.stdout and "line1" not in described.stdout and secret not in described.stdout
    assert json.loads(fleet("describe", name, "--json").stdout)["Environment"] == environment


# Keys and values of the API's maximum size; values with what a shell or an env file could
# misread (no newline: refused, docker's env file cannot carry one).
def _big_environment() -> dict[str, str]:
    tricky = "a=b #c $(x) `y` 'q' \"d\" \t;|&<> \\ "
    return {f"K{i:03d}_" + "A" * 251: (f"{i:03d}" + tricky * 10)[:256] for i in range(100)}


def test_a_hundred_largest_variables_and_arguments_reach_the_container(fleet):
    """Before: the job rode in one remote command of ~148 KiB, and exec failed with
    "Argument list too long" (one argument is at most 128 KiB)."""
    environment = _big_environment()
    arguments = [(f"{i:03d}" + "arg with spaces $(x) " * 20)[:256] for i in range(100)]
    job = make_job(count=2, Environment=environment)
    job["AppSpecification"]["ContainerEntrypoint"] = [
        "sh", "-c", 'env | sed -n "/^K[0-9][0-9][0-9]_/p"; printf "<%s>\\n" "$@"', "sh"]
    job["AppSpecification"]["ContainerArguments"] = arguments
    assert all(len(key) == 256 and len(value) == 256 for key, value in environment.items())
    run = fleet.run_job(job, timeout=180)
    assert run.returncode == 0, run.stderr
    for algo in ("algo-1", "algo-2"):
        lines = _lines(run.stdout, algo)
        assert sorted(line for line in lines if not line.startswith("<")) == \
            sorted(f"{key}={value}" for key, value in environment.items())
        assert [line for line in lines if line.startswith("<")] == [f"<{a}>" for a in arguments]


@pytest.fixture
def user_1000_image(cluster):
    """fleet-test:busybox with USER 1000, on every test host: built once, loaded everywhere
    (one image ID: fleet refuses hosts whose images for the ImageUri differ)."""
    tag = "fleet-test:user1000"
    first = cluster.hosts[0]
    name = f"zq-build-{secrets.token_hex(4)}"
    first.docker("create", "--name", name, IMAGE)
    try:
        first.docker("commit", "--change", "USER 1000", name, tag)
    finally:
        first.docker("rm", "--force", name)
    for host in cluster.hosts[1:]:
        saved = subprocess.run(["docker", "-H", first.docker_host, "save", tag], capture_output=True,
                               check=True, timeout=60).stdout
        subprocess.run(["docker", "-H", host.docker_host, "load", "-q"], input=saved, capture_output=True,
                       check=True, timeout=60)
    yield tag
    for host in cluster.hosts:
        host.docker("image", "rm", "--force", tag, check=False)


def test_a_container_running_as_user_1000_reads_its_inputs_and_writes_its_outputs(fleet, tmp_path,
                                                                                     user_1000_image):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.txt").write_text("input data\n")
    target = tmp_path / "target"
    script = ('sed -n /^Uid/p /proc/self/status;cd /opt/ml;cat processing/input/sub/data.txt;h=$(hostname);'
              'cat config/resourceconfig.json >/dev/null&&echo config;'
              'echo "from $h" >processing/output/$h.txt&&echo wrote;echo "done as 1000" >output/message')
    assert len(script) <= 256  # the API's limit for a ContainerEntrypoint word
    job = make_job(script, count=2, ProcessingInputs=[{"InputName": "data", "S3Input": {
        "S3Uri": f"file://{source}", "LocalPath": "/opt/ml/processing/input", "S3DataType": "S3Prefix"}}],
        ProcessingOutputConfig={"Outputs": [{"OutputName": "out", "S3Output": {
            "S3Uri": f"file://{target}", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]})
    job["AppSpecification"]["ImageUri"] = user_1000_image
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stdout + run.stderr
    for algo in ("algo-1", "algo-2"):
        uid, *rest = _lines(run.stdout, algo)
        assert uid.split()[1:] == ["1000"] * 4 and rest == ["input data", "config", "wrote"]
        assert (target / f"{algo}.txt").read_text() == f"from {algo}\n"
    assert fleet.record(job["ProcessingJobName"])["ExitMessage"].startswith("done as 1000")


@pytest.fixture
def shared_workdir(cluster, tmp_path):
    """(workdir, inventory): a sticky, world-writable workdir (as /tmp) on the test hosts."""
    workdir = Path(f"/var/tmp/zq-shared-work-{secrets.token_hex(4)}")  # reachable by the other user
    workdir.mkdir()
    workdir.chmod(0o1777)
    doc = cluster.inventory_doc()
    for entry in doc["hosts"]:
        entry["workdir"] = str(workdir)
    try:
        yield workdir, cluster.write_inventory(tmp_path / "shared.yaml", doc)
    finally:
        shutil.rmtree(workdir)


def test_a_partial_input_planted_by_another_user_is_never_written_through(fleet, shared_workdir, tmp_path):
    """Reproduces the attack: another local user makes WORKDIR/NAME first (a shared workdir),
    waits for fleet's algo-1/inputs, swaps algo-1 for its own with `inputs/1.partial/a ->
    victim`; `tar -x` of an input holding `a/owned.txt` then wrote into victim/. Now a
    WORKDIR/NAME that is not the SSH user's alone is refused, and nothing is written."""
    workdir, inventory = shared_workdir
    source = tmp_path / "source"
    (source / "a").mkdir(parents=True)
    (source / "a" / "owned.txt").write_text("written through the planted link\n")
    victim = tmp_path / "victim"  # root's, out of the other user's reach: fleet's tar could write it
    victim.mkdir()
    job = make_job("ls /opt/ml/processing/input/a", count=1, ProcessingInputs=[{
        "InputName": "data", "S3Input": {"S3Uri": f"file://{source}", "LocalPath": "/opt/ml/processing/input",
                                         "S3DataType": "S3Prefix"}}])
    parent = workdir / job["ProcessingJobName"]
    assert _as_other_user("mkdir", "-m", "0777", str(parent)).returncode == 0
    swap = ('while [ ! -d "$1/algo-1/inputs" ] && [ ! -d "$1/algo-1/ml/inputs" ]; do sleep 0.005; done; '
            'mv "$1/algo-1" "$1/stolen" && mkdir -p "$1/algo-1/inputs/1.partial" "$1/algo-1/ml/inputs/1.partial" && '
            'ln -s "$2" "$1/algo-1/inputs/1.partial/a" && ln -s "$2" "$1/algo-1/ml/inputs/1.partial/a" && echo swapped')
    attacker = subprocess.Popen(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
                                 "sh", "-c", swap, "sh", str(parent), str(victim)],  # killed below
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = fleet.run_job(job, inventory=inventory)
    finally:
        attacker.kill()
        swapped, _ = attacker.communicate()
    assert list(victim.iterdir()) == [], f"written through the planted link ({swapped.strip()})"
    assert run.returncode == 75 and str(parent) in run.stderr, run.stderr
    assert swapped == ""  # fleet never made algo-1 in a directory the other user controls


def test_a_job_parent_another_user_made_in_a_shared_workdir_is_refused_naming_it(fleet, cluster, shared_workdir):
    """A sticky, world-writable workdir (as /tmp): another user made WORKDIR/NAME first. It
    is refused, named, and left as it was (never removed)."""
    workdir, inventory = shared_workdir
    job = make_job("echo should not run", count=1)
    parent = workdir / job["ProcessingJobName"]
    made = _as_other_user("mkdir", "-m", "0777", str(parent))
    assert made.returncode == 0, made.stderr
    run = fleet.run_job(job, inventory=inventory)
    assert run.returncode == 75
    assert str(parent) in run.stderr, run.stderr
    assert "should not run" not in run.stdout
    assert parent.is_dir() and list(parent.iterdir()) == []
    assert cluster.hosts[0].containers(job["ProcessingJobName"]) == []
