"""The commands fleet runs on a host (fleet/host): fixed scripts, user values only as
positional arguments.

The scripts are also run here, locally, with a fake `docker` (a small sh script that
records what it was asked): no host and no Docker, but the real shell quoting and parsing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import host as hostscripts
from fleet.contract.job import parse_job
from fleet.errors import InvalidInput
from fleet.host import SessionReport, Status
from fleet.host.statuses import shell_definitions
from fleet.inventory import SshHost
from fleet.plan import CONTROLLER_LABEL, JOB_LABEL, RUN_FILE, RUN_LABEL, plan_cluster
from fleet.runtime.leftovers import parse_leftovers
from fleet.runtime.preflight import _parse_report, check_row

IMAGE = "registry.lab/zq-image:1.0"
RUN = "zq0run"
CONTROLLER = "zq-controller:/home/zq/.fleet"
NAME = "zq-job-7"
HOSTILE_ENV = {
    "SUBSHELL": "$(touch MARKER)",
    "BACKQUOTES": "`touch MARKER`",
    "QUOTES": "it's \"quoted\"",
    "SEMICOLON": "a; touch MARKER",
    "EQUALS": "a=b=c",
    "PADDED": "  # not a comment\t ",
}


def processing_job(environment=None, count: int = 1):
    document = {
        "ProcessingJobName": NAME,
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": IMAGE, "ContainerEntrypoint": ["python3", "/zq/run.py"],
                             "ContainerArguments": ["--zq-flag", "value with spaces"]},
        "ProcessingInputs": [{"InputName": "raw", "S3Input": {
            "S3Uri": "s3://zq-bucket/raw/", "LocalPath": "/opt/ml/processing/zq-input",
            "S3DataType": "S3Prefix"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "clean", "S3Output": {
            "S3Uri": "s3://zq-bucket/clean/", "LocalPath": "/opt/ml/processing/zq-output",
            "S3UploadMode": "EndOfJob"}}]},
    }
    if environment is not None:
        document["Environment"] = environment
    return parse_job(document, "job.json")


def host_plan(workdir: str = "/srv/zq-work", docker: str = "docker", environment=None, count: int = 1,
              gpus=None):
    hosts = [SshHost(address=f"h{i}.lab", name=f"h{i}", ip=f"10.0.0.{i}", user="ops", workdir=workdir, docker=docker,
                     gpus=gpus)
             for i in range(1, count + 1)]
    job = processing_job(environment, count)
    return plan_cluster(job, hosts, [h.ip for h in hosts], stop_grace=30,
                        region="us-east-1", account="000000000000", run_id=RUN, controller=CONTROLLER).hosts


def fed(*chunks: bytes) -> SessionReport:
    report = SessionReport()
    for chunk in chunks:
        report.feed(chunk)
    return report


def byte_by_byte(data: bytes) -> SessionReport:
    return fed(*(data[i:i + 1] for i in range(len(data))))


# -- the session's stderr -----------------------------------------------------------------------

DAEMON_DOWN = (b"Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
               b"Is the docker daemon running?\n")
NO_GPU = (b'docker: Error response from daemon: could not select device driver "" with capabilities: '
          b"[[gpu]].\nRun 'docker run --help' for more information\n")
MESSAGE = b"rows: 10\nbad byte: \xff\xfe\nfleet:exited\nfleet:exit-code:0\nno newline at end"
COMPLETE = (b"fleet:prepared\nfleet:started\nfleet:exit-code:3\n"
            + b"fleet:message:%d\n" % len(MESSAGE) + MESSAGE
            + b"fleet:exited\nfleet:cleaned\n")


def test_docker_error_before_the_job_dir_is_written_is_kept_as_the_reason():
    report = fed(DAEMON_DOWN)
    assert report.events == []
    assert report.exit_code is None and report.message is None
    assert report.errors == DAEMON_DOWN.decode().strip()


def test_docker_error_when_starting_the_container_is_kept_as_the_reason():
    report = fed(b"fleet:prepared\n" + NO_GPU)
    assert report.events == ["prepared"]
    assert "could not select device driver" in report.errors
    assert "fleet:" not in report.errors


def test_exit_code_and_message_bytes_are_read_exactly():
    report = fed(COMPLETE)
    assert report.events == ["prepared", "started", "exited", "cleaned"]
    assert report.exit_code == 3
    # Non-UTF-8 bytes, newlines and text that looks like progress lines stay message bytes.
    assert report.message == MESSAGE
    assert report.errors == ""


def test_stderr_split_anywhere_parses_the_same():
    whole = fed(COMPLETE)
    split = byte_by_byte(COMPLETE)
    assert (split.events, split.exit_code, split.message) == (whole.events, whole.exit_code, whole.message)


def test_feed_returns_the_events_each_chunk_completes():
    report = SessionReport()
    assert report.feed(b"fleet:prep") == []
    assert report.feed(b"ared\nfleet:started\n") == ["prepared", "started"]
    assert report.feed(b"fleet:exit-code:0\nfleet:exited\n") == ["exited"]
    assert report.exit_code == 0


def test_no_message_file_gives_no_message():
    report = fed(b"fleet:prepared\nfleet:started\nfleet:exit-code:0\nfleet:exited\n")
    assert report.exit_code == 0
    assert report.message is None


def test_empty_message_file_gives_an_empty_message():
    report = fed(b"fleet:prepared\nfleet:started\nfleet:exit-code:0\nfleet:message:0\nfleet:exited\n")
    assert report.message == b""
    assert report.events[-1] == "exited"


def test_message_count_with_leading_spaces_is_read():
    # `wc -c` pads its count with spaces on some systems.
    report = fed(b"fleet:exit-code:1\nfleet:message:     5\nhello" + b"fleet:exited\n")
    assert report.message == b"hello"


def test_docker_wait_failure_leaves_no_exit_code_and_keeps_dockers_words():
    report = fed(b"fleet:prepared\nfleet:started\nError response from daemon: No such container: x\n")
    assert report.events == ["prepared", "started"]
    assert report.exit_code is None
    assert "No such container" in report.errors


def test_partial_line_at_the_end_counts_as_dockers_words():
    assert fed(b"docker: permission denied").errors == "docker: permission denied"


# -- user values travel as positional arguments -------------------------------------------------

def test_session_passes_every_user_value_as_a_positional_argument():
    plan = host_plan(environment=HOSTILE_ENV)[0]
    argv = hostscripts.session(plan, docker_timeout=20)
    assert argv[:2] == ["sh", "-c"]
    assert argv[3] == "fleet-session"  # $0
    script, args = argv[2], argv[4:]
    for value in [plan.job_dir, plan.container, IMAGE, plan.message_file, NAME, "zq-",
                  *plan.files, *(c.decode() for c in plan.files.values()), "$(touch", "MARKER"]:
        assert value not in script
    for value in [plan.job_dir, plan.container, IMAGE, plan.message_file, plan.env_file]:
        assert value in args
    assert args[-len(plan.docker_create):] == plan.docker_create


SECRET = "zq-s3cr3t-value"


def test_no_environment_value_nor_file_content_is_in_the_session_argv():
    """Every local user of a host reads every process's argv (/proc/PID/cmdline): the
    Environment (in processingjobconfig.json too) goes on the session's stdin."""
    plan = host_plan(environment={"SECRET": SECRET, **HOSTILE_ENV, "PEM": f"-----\n{SECRET}\n"})[0]
    argv = hostscripts.session(plan, docker_timeout=20)
    assert not any(SECRET in word for word in argv)
    assert not any(content.decode() in word for content in plan.files.values() for word in argv)
    assert not any(value in word for value in HOSTILE_ENV.values() for word in argv)
    assert plan.docker_create[plan.docker_create.index("--env-file") + 1] == plan.env_file
    stdin = hostscripts.session_input(plan)
    assert SECRET.encode() in stdin and b"SECRET=" + SECRET.encode() + b"\n" in plan.environment


def test_cleanup_passes_every_user_value_as_a_positional_argument():
    plan = host_plan()[0]
    for keep in (True, False):
        argv = hostscripts.cleanup(plan, keep, 20)
        assert argv[:2] == ["sh", "-c"] and argv[3] == "fleet-cleanup"
        assert plan.job_dir not in argv[2] and plan.container not in argv[2] and "zq-" not in argv[2]
        assert argv[4:] == ["20", "1", "docker", plan.container, plan.job_dir, plan.job_parent, plan.run_file,
                            RUN_LABEL, RUN, "keep" if keep else "remove", "started"]


def test_stop_and_kill_name_the_container_after_the_hosts_docker_command():
    plan = host_plan(docker="sudo docker")[0]
    assert hostscripts.stop(plan) == ["sudo", "docker", "stop", f"{NAME}-algo-1"]
    assert hostscripts.kill(plan) == ["sudo", "docker", "kill", f"{NAME}-algo-1"]


def test_the_hosts_docker_command_travels_as_arguments_too():
    plan = host_plan(docker="sudo -n '/opt/zq docker/docker'")[0]
    for argv in (hostscripts.session(plan, docker_timeout=7), hostscripts.resume(plan, 0, 7),
                 hostscripts.cleanup(plan, True, 7), hostscripts.on_host(plan.host, "gc-list", ["/x"], 7)):
        assert "/opt/zq" not in argv[2]
        assert argv[4:9] == ["7", "3", "sudo", "-n", "/opt/zq docker/docker"]  # the timeout, the words


def test_a_docker_word_with_a_newline_is_refused():
    plan = host_plan(docker="'zq\ndocker'")[0]
    with pytest.raises(InvalidInput, match="docker command"):
        hostscripts.session(plan, docker_timeout=7)


def test_every_script_is_fixed_text_from_the_package():
    for script in ["session", "resume", "cleanup", "check", "gc-list", "gc-remove", "extract", "archive",
                   "changed-files"]:
        text = hostscripts.script_text(script)
        assert text.startswith(shell_definitions() + "# shellcheck shell=sh\n")
        assert hostscripts.script_text(script) is text  # read once
    assert hostscripts.command("extract", ["/x/1.partial"]) == \
        ["sh", "-c", hostscripts.script_text("extract"), "fleet-extract", "/x/1.partial"]
    with pytest.raises(ValueError):
        hostscripts.command("session", [])


SCRIPTS = sorted(Path(hostscripts.__file__).parent.glob("*.sh"))


def test_the_scripts_name_their_statuses_as_python_does():
    """The scripts exit (or return, or `fail`) with statuses by name, each a Status, and every
    Status is used; no number but 0 and 1 (done, a script's own generic failure) is left:
    the names and numbers cannot drift apart (the numbers are Python's alone)."""
    texts = [path.read_text() for path in SCRIPTS]
    named = {n for text in texts for n in re.findall(r'\b(?:exit|return|fail) "\$([A-Z_]+)"', text)}
    matched = {n for text in texts for n in re.findall(r'^\s*"\$([A-Z_]+)"\)', text, re.MULTILINE)}
    assert named | matched <= {s.name for s in Status}
    assert named == {s.name for s in Status}
    numbers = {int(n) for text in texts for n in re.findall(r"\b(?:exit|return|fail) (\d+)\b", text)}
    assert numbers <= {0, 1}


def test_a_shell_reading_the_definitions_gets_pythons_numbers():
    script = shell_definitions() + "".join(f'echo "{s.name}=${s.name}"\n' for s in Status)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"{s.name}={s.value}" for s in Status]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/setup)")
def test_the_scripts_pass_shellcheck_as_posix_sh():
    result = subprocess.run(["shellcheck", "-s", "sh", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_session_argv_survives_shlex_join_and_split():
    for plan in host_plan(environment=HOSTILE_ENV, count=2):
        argv = hostscripts.session(plan, docker_timeout=20)
        assert shlex.split(shlex.join(argv)) == argv


# -- the session run locally against a fake docker ------------------------------------------------

FAKE_DOCKER = r"""#!/bin/sh
if [ "$1" = --config ]; then  # a pull's credentials: kept for the test to look at
  cp "$2/config.json" "$FAKE_DIR/pull.config"; stat -c %a "$2" > "$FAKE_DIR/pull.config.mode"; shift 2
fi
printf '%s\n' "$1" >> "$FAKE_DIR/calls"
if [ -n "$FAKE_HANG" ]; then sleep 5; fi  # a docker daemon that does not answer
# a daemon that is down: every command that needs it says so
if [ -n "$FAKE_DOWN" ]; then echo "Cannot connect to the Docker daemon" >&2; exit 1; fi
case "$1" in
  image)
    if [ -n "$FAKE_DOWN_IMAGE" ]; then echo "permission denied while trying to connect" >&2; exit 1; fi
    if [ -n "$FAKE_NO_IMAGE" ] && [ ! -e "$FAKE_DIR/pulled" ]; then echo "Error: No such image: zq" >&2; exit 1; fi
    echo "sha256:${FAKE_IMAGE_ID:-0123456789abcdef}" ;;
  create)
    printf '%s\0' "$@" > "$FAKE_DIR/create.argv"
    cat /proc/$$/environ > "$FAKE_DIR/create.environ"  # this docker process's own environment, as exec gave it
    find "$FAKE_PRIVATE" -maxdepth 1 -type f -name 'env*' -printf '%f %m\n' | sort > "$FAKE_DIR/create.files"
    previous=
    for word in "$@"; do
      if [ "$previous" = --env-file ]; then
        cp "$word" "$FAKE_DIR/create.env"; stat -c %a "$word" > "$FAKE_DIR/create.env.mode"
      fi
      previous=$word
    done
    echo 0123abcd ;;
  start) cat /proc/$$/environ > "$FAKE_DIR/start.environ" ;;
  logs) printf 'line from the container\n' ;;
  wait)
    if [ -n "$FAKE_LINK" ]; then ln -s "$FAKE_LINK" "$FAKE_MESSAGE_PATH";
    elif [ -n "$FAKE_MESSAGE" ]; then cp "$FAKE_MESSAGE" "$FAKE_MESSAGE_PATH"; fi
    echo "${FAKE_EXIT:-0}" ;;
  rm) exit 0 ;;
  inspect)
    [ -n "$FAKE_GONE" ] && { echo "Error: No such object: $3" >&2; exit 1; }
    case "$3" in
      *Config.User*) echo "${FAKE_USER:-}" ;;
      *State.Status*) echo "${FAKE_RUN:-zq0run} ${FAKE_STATE:-running}" ;;
      *) echo "${FAKE_RUN:-zq0run}" ;;
    esac ;;
  info) echo "${FAKE_RUNTIMES:-{\"runc\":{}\}}" ;;
  version) echo 24.0.7 ;;
  pull)
    [ -n "$FAKE_PULL_FAILS" ] && { echo "pull access denied for $3" >&2; exit 1; }
    : > "$FAKE_DIR/pulled" ;;
  cp)  # the image's /etc/passwd, as a tar on stdout: FAKE_DIR/etc/passwd if there is one
    # Podman's own CLI: no -L (its cp follows a link anyway)
    [ -n "$FAKE_NO_CP_L" ] && [ "$2" = -L ] && { echo "Error: unknown shorthand flag: 'L' in -L" >&2; exit 125; }
    [ -f "$FAKE_DIR/etc/passwd" ] || { echo "Error: Could not find the file /etc/passwd in container $3" >&2; exit 1; }
    tar -C "$FAKE_DIR/etc" -c passwd ;;
  ps) printf 'container\tc1\tzq-job-7-algo-1\tzq-job-7\tzq0run\tzq-controller:/x\n' ;;
  *) echo "fake docker: unexpected $*" >&2; exit 99 ;;
esac
"""


class FakeHost:
    """A job directory under tmp_path and a fake docker that records its calls there."""

    def __init__(self, tmp_path: Path, environment=None, gpus=None) -> None:
        self.dir = tmp_path
        self.docker = tmp_path / "bin" / "docker"
        self.docker.parent.mkdir()
        self.docker.write_text(FAKE_DOCKER)
        self.docker.chmod(0o755)
        self.plan = host_plan(workdir=str(tmp_path / "work"), docker=str(self.docker),
                              environment=environment, gpus=gpus)[0]
        self.env = {**os.environ, "FAKE_DIR": str(tmp_path), "FAKE_MESSAGE_PATH": self.plan.message_file,
                    "FAKE_PRIVATE": self.plan.private_dir}

    def session(self, stdin: bytes, volume_gb: int = 0, files: bytes | None = None,
                image: bytes = hostscripts.image_pull(IMAGE, b""),
                **env: str) -> tuple[subprocess.CompletedProcess, SessionReport]:
        """The session with `stdin` after the job's files (`files`: other bytes instead) and
        the image step (`image`: by default, pull the ImageUri unless present)."""
        first = hostscripts.session_input(self.plan) if files is None else files
        return self._run(hostscripts.session(self.plan, docker_timeout=10, volume_gb=volume_gb),
                         first + image + stdin, env)

    def resume(self, offset: int, stdin: bytes, **env: str) -> tuple[subprocess.CompletedProcess, SessionReport]:
        return self._run(hostscripts.resume(self.plan, offset, docker_timeout=10), stdin, env)

    def _run(self, argv: list[str], stdin: bytes, env: dict) -> tuple[subprocess.CompletedProcess, SessionReport]:
        # As over SSH: the argv joined once, parsed by the remote shell.
        result = subprocess.run(["sh", "-c", shlex.join(argv)], input=stdin, capture_output=True,
                                env={**self.env, **env}, cwd=self.dir, timeout=20)
        report = SessionReport()
        report.feed(result.stderr)
        return result, report

    def on_host(self, script: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
        argv = hostscripts.on_host(self.plan.host, script, args, docker_timeout=10)
        return subprocess.run(["sh", "-c", shlex.join(argv)], capture_output=True, env={**self.env, **env},
                              cwd=self.dir, timeout=20)

    def clean_up(self) -> None:
        """What the controller's cleanup does after a session that did not: each run makes
        its job directory afresh."""
        shutil.rmtree(self.plan.job_parent, ignore_errors=True)

    @property
    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().split() if path.exists() else []

    @property
    def run_argv(self) -> list[str]:
        return (self.dir / "create.argv").read_bytes().decode().split("\0")[:-1]

    def environ(self, call: str = "create") -> dict[bytes, bytes]:
        """The environment the fake docker process had for `call` (create, start), byte for byte."""
        entries = (self.dir / f"{call}.environ").read_bytes().split(b"\0")[:-1]
        return dict(entry.split(b"=", 1) for entry in entries)


def test_session_writes_the_plans_dirs_and_files_before_go(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"")  # EOF before `go`: aborts after preparing
    assert report.events == ["written", "prepared"]
    assert "start" not in fake.calls
    # Aborting removes what it wrote; prepare again and look before answering.
    job_dir = Path(fake.plan.job_dir)
    argv = hostscripts.session(fake.plan, docker_timeout=10)
    process = subprocess.Popen(["sh", "-c", shlex.join(argv)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=fake.env, cwd=tmp_path)
    private = Path(fake.plan.private_dir)
    try:
        process.stdin.write(hostscripts.session_input(fake.plan))
        process.stdin.flush()
        assert process.stderr.readline().startswith(b"fleet:written")  # inputs may stream in from now
        for directory in [*fake.plan.dirs, "inputs", "outputs", "inputs/1.partial"]:
            assert (private / directory).is_dir()
        process.stdin.write(hostscripts.image_use("sha256:0123456789abcdef"))
        process.stdin.flush()
        assert process.stderr.readline() == b"fleet:image sha256:0123456789abcdef present\n"
        assert process.stderr.readline() == b"fleet:prepared\n"
        for directory in fake.plan.dirs:
            assert (private / directory).is_dir()
        for path, content in fake.plan.files.items():
            assert (private / path).read_bytes() == content
        assert sorted(str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_file()) == \
            sorted([*(f"ml/{path}" for path in fake.plan.files), ".fleet-run"])  # the env file is gone
        assert (job_dir / ".fleet-run").read_text() == f"{RUN}\n{CONTROLLER}\n"
    finally:
        process.communicate(b"abort\n", timeout=20)


def test_a_container_the_controller_made_through_the_api_costs_the_session_no_docker_call(tmp_path: Path):
    fake = FakeHost(tmp_path, environment={"SECRET": "s3cr3t", "MULTI": "a\nb"})
    result, report = fake.session(b"", image=hostscripts.image_made("sha256:" + "cd" * 32, "0"))
    assert report.events == ["written", "prepared"], result.stderr
    assert report.image == "sha256:" + "cd" * 32 and report.image_how == "present"
    # No create, no image or container inspect: only the abort's removal (EOF before go).
    assert fake.calls == ["rm"]
    assert not Path(fake.plan.job_dir).exists()


def test_the_env_files_go_at_once_when_the_controller_made_the_container(tmp_path: Path):
    fake = FakeHost(tmp_path, environment={"SECRET": "s3cr3t", "MULTI": "a\nb"})
    argv = hostscripts.session(fake.plan, docker_timeout=10)
    process = subprocess.Popen(["sh", "-c", shlex.join(argv)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=fake.env, cwd=tmp_path)
    try:
        process.stdin.write(hostscripts.session_input(fake.plan) + hostscripts.image_made("sha256:" + "cd" * 32, "0"))
        process.stdin.flush()
        assert process.stderr.readline().startswith(b"fleet:written")
        assert process.stderr.readline().startswith(b"fleet:image ")
        assert process.stderr.readline() == b"fleet:prepared\n"
        private = Path(fake.plan.private_dir)
        assert sorted(p.name for p in private.iterdir() if p.is_file()) == []  # no env file, no value, no stash
    finally:
        process.communicate(b"abort\n", timeout=20)


def test_a_made_containers_uid_gets_the_directories_it_writes(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    fake = FakeHost(tmp_path)
    argv = hostscripts.session(fake.plan, docker_timeout=10)
    process = subprocess.Popen(["sh", "-c", shlex.join(argv)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=fake.env, cwd=tmp_path)
    try:
        process.stdin.write(hostscripts.session_input(fake.plan) + hostscripts.image_made("sha256:" + "cd" * 32,
                                                                                           "4321"))
        process.stdin.flush()
        for _ in range(3):
            line = process.stderr.readline()
        assert line == b"fleet:prepared\n"
        private = Path(fake.plan.private_dir)
        assert (private / "output").stat().st_uid == 4321
        assert (private / "config").stat().st_uid == 0  # read-only for the container: root's
        assert "inspect" not in fake.calls and "cp" not in fake.calls
    finally:
        process.communicate(b"abort\n", timeout=20)


def test_a_made_container_of_a_user_name_is_looked_up_in_its_passwd(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"", image=hostscripts.image_made("sha256:" + "cd" * 32, "-"), FAKE_USER="root")
    assert report.events == ["written", "prepared"], result.stderr
    assert "inspect" in fake.calls and "create" not in fake.calls


@pytest.mark.parametrize("made", [b"made sha256:cd x1\n", b"made sha256:cd\n"])
def test_a_made_step_without_a_uid_is_refused_and_nothing_is_left(tmp_path: Path, made: bytes):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"", image=made)
    assert "prepared" not in report.events
    assert "create" not in fake.calls
    assert not Path(fake.plan.job_dir).exists()


@pytest.mark.parametrize("setting, engine", [
    ({}, "unix:///var/run/docker.sock"),
    ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, "unix:///run/user/1000/docker.sock"),
    ({"DOCKER_HOST": "tcp://10.0.0.5:2376"}, None),
    ({"DOCKER_CONTEXT": "remote"}, None),
    ({"config": '{\n\t"auths": {}\n}\n'}, "unix:///var/run/docker.sock"),
    ({"config": '{\n\t"auths": {},\n\t"currentContext": "remote"\n}'}, None),
])
def test_the_session_says_which_engine_its_docker_cli_talks_to_where_the_login_tells(tmp_path: Path, setting,
                                                                                     engine):
    fake = FakeHost(tmp_path)
    env = {"DOCKER_CONFIG": str(tmp_path / "dockerconfig")}
    if "config" in setting:
        (tmp_path / "dockerconfig").mkdir()
        (tmp_path / "dockerconfig" / "config.json").write_text(setting.pop("config"))
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT"):
        fake.env.pop(key, None)
    result, report = fake.session(b"", **env, **setting)
    assert report.events[0] == "written", result.stderr
    assert report.cli_engine == engine


def test_a_docker_command_that_is_not_there_tells_no_engine(tmp_path: Path):
    fake = FakeHost(tmp_path)
    fake.docker.unlink()  # the controller creates nothing then: the session's docker fails, as ever
    result, report = fake.session(b"", image=hostscripts.image_try(IMAGE))
    assert report.events[0] == "written" and report.cli_engine is None
    assert result.returncode == Status.DOCKER_MISSING, result.stderr


def test_abort_starts_nothing_and_removes_the_job_dir(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"abort\n")
    assert result.returncode == 0
    assert "start" not in fake.calls
    assert not Path(fake.plan.job_dir).exists()
    assert not Path(fake.plan.job_dir).parent.exists()  # WORKDIR/NAME goes too


def test_docker_receives_the_create_argv_word_for_word(tmp_path: Path):
    marker = tmp_path / "MARKER"
    fake = FakeHost(tmp_path, environment=HOSTILE_ENV)
    result, report = fake.session(b"go\nclean\n", FAKE_EXIT="0")
    assert report.events == ["written", "prepared", "started", "exited", "cleaned"], report.errors
    # Word for word, but for the image: the ID the host has for it (the same bytes everywhere)
    expected = list(fake.plan.docker_create)
    assert expected[fake.plan.image_at] == IMAGE
    expected[fake.plan.image_at] = "sha256:0123456789abcdef"
    assert fake.run_argv == expected and report.image == "sha256:0123456789abcdef"
    assert not marker.exists()  # no value was ever run by a shell
    assert result.stdout == b"line from the container\n"


def test_exit_code_and_message_come_back_from_the_host(tmp_path: Path):
    fake = FakeHost(tmp_path)
    message = tmp_path / "message-src"
    message.write_bytes(b"failed: \xff\nsee logs" + b"x" * 2000)
    result, report = fake.session(b"go\nkeep\n", FAKE_EXIT="137", FAKE_MESSAGE=str(message))
    assert report.exit_code == 137
    assert report.message == message.read_bytes()[:1024]  # the first 1 KB only


def test_clean_removes_the_job_dir_and_keep_keeps_it(tmp_path: Path):
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nkeep\n")
    assert report.events[-1] == "cleaned"
    assert Path(fake.plan.private_dir, "config", "resourceconfig.json").is_file()
    fake.clean_up()
    _, report = fake.session(b"go\nclean\n")
    assert report.events[-1] == "cleaned"
    assert not Path(fake.plan.job_dir).exists()


def test_message_symlink_planted_by_the_container_is_not_followed(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nclean\n", FAKE_LINK=str(secret))
    assert report.exit_code == 0
    assert report.message is None


@pytest.mark.parametrize("keep, kept", [(True, True), (False, False)])
def test_cleanup_removes_the_job_dir_unless_kept(tmp_path: Path, keep, kept):
    fake = FakeHost(tmp_path)
    job_dir = Path(fake.plan.job_dir)
    Path(fake.plan.message_file).parent.mkdir(parents=True)
    (job_dir / ".fleet-run").write_text(f"{RUN}\n{CONTROLLER}\n")
    result = subprocess.run(["sh", "-c", shlex.join(hostscripts.cleanup(fake.plan, keep, 20))],
                            env=fake.env, capture_output=True, timeout=20)
    assert result.returncode == 0
    assert job_dir.exists() is kept
    assert "rm" in fake.calls


@pytest.mark.parametrize("started, status, kept", [(True, 3, True), (False, 0, False)])
def test_cleanup_with_a_silent_docker_leaves_a_started_container_and_its_dir_for_gc(
        tmp_path: Path, started, status, kept):
    fake = FakeHost(tmp_path)
    job_dir = Path(fake.plan.job_dir)
    Path(fake.plan.message_file).parent.mkdir(parents=True)
    (job_dir / ".fleet-run").write_text(f"{RUN}\n{CONTROLLER}\n")
    argv = hostscripts.cleanup(fake.plan, False, 1, started=started)
    result = subprocess.run(["sh", "-c", shlex.join(argv)], env={**fake.env, "FAKE_HANG": "1"},
                            capture_output=True, timeout=20)
    assert result.returncode == status
    assert job_dir.exists() is kept


# -- resuming a session; runs and their job directories --------------------------------------------

def test_resume_sends_the_log_from_the_offset_on_then_exits_and_cleans(tmp_path: Path):
    fake = FakeHost(tmp_path)
    Path(fake.plan.job_dir).mkdir(parents=True)
    (Path(fake.plan.job_dir) / ".fleet-run").write_text(f"{RUN}\n{CONTROLLER}\n")
    result, report = fake.resume(5, b"clean\n", FAKE_EXIT="3")
    assert result.stdout == b"line from the container\n"[5:]  # not a byte twice, none lost
    assert report.events == ["started", "exited", "cleaned"], report.errors
    assert report.exit_code == 3
    assert "start" not in fake.calls and "create" not in fake.calls
    assert not Path(fake.plan.job_dir).exists()


def test_resume_refuses_a_container_of_another_run(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.resume(0, b"clean\n", FAKE_RUN="zq9other")
    assert result.returncode == Status.GONE
    assert "not this job run's" in report.errors
    assert result.stdout == b"" and "rm" not in fake.calls and "wait" not in fake.calls


def test_resume_of_a_gone_container_says_so(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.resume(0, b"", FAKE_GONE="1")
    assert result.returncode == Status.GONE
    assert "No such object" in report.errors


def test_resume_of_a_container_never_started_does_not_start_it(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.resume(0, b"", FAKE_STATE="created")
    assert result.returncode == Status.NOT_STARTED
    assert "start" not in fake.calls


def test_session_never_writes_into_another_runs_job_dir(tmp_path: Path):
    fake = FakeHost(tmp_path)
    job_dir = Path(fake.plan.job_dir)
    job_dir.mkdir(parents=True)
    (job_dir / ".fleet-run").write_text("zq9other\nelsewhere:/x\n")
    result, report = fake.session(b"abort\n")
    assert result.returncode == Status.IN_USE
    assert "zq9other" in report.errors
    assert "create" not in fake.calls
    assert (job_dir / ".fleet-run").read_text() == "zq9other\nelsewhere:/x\n"
    assert not (job_dir / "config").exists()


def test_session_refuses_a_workdir_without_the_volume_size_free(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"abort\n", volume_gb=10 ** 9)  # an exabyte
    assert result.returncode == Status.NO_SPACE
    assert int(report.errors.splitlines()[-1]) > 0  # the free KiB, for the message
    assert "create" not in fake.calls


def test_session_on_a_gpu_host_needs_a_gpu_runtime(tmp_path: Path):
    fake = FakeHost(tmp_path, gpus="all")
    result, _ = fake.session(b"abort\n")  # the fake daemon has runc only
    assert result.returncode == Status.NO_GPU_RUNTIME
    assert "create" not in fake.calls
    fake.clean_up()
    result, report = fake.session(b"abort\n", FAKE_RUNTIMES='{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}')
    assert result.returncode == 0 and report.events == ["written", "prepared"], report.errors


def test_cleanup_leaves_another_runs_container_and_directory(tmp_path: Path):
    fake = FakeHost(tmp_path)
    job_dir = Path(fake.plan.job_dir)
    job_dir.mkdir(parents=True)
    (job_dir / ".fleet-run").write_text("zq9other\n")
    result = subprocess.run(["sh", "-c", shlex.join(hostscripts.cleanup(fake.plan, False, 20))],
                            env={**fake.env, "FAKE_RUN": "zq9other"}, capture_output=True, timeout=20)
    assert result.returncode == 0
    assert job_dir.is_dir()
    assert "rm" not in fake.calls


def test_a_resumed_report_drops_what_the_lost_session_half_said():
    report = fed(b"fleet:prepared\nfleet:started\nfleet:mess")
    report.resumed()
    report.feed(b"fleet:started\nfleet:exit-code:0\nfleet:exited\n")
    assert report.exit_code == 0
    assert report.events == ["prepared", "started", "started", "exited"]
    assert "mess" not in report.errors


# -- fleet check and fleet gc, run locally against the fake docker ---------------------------------

def check_args(fake: FakeHost, image: str, need_kb: int, gpus: bool = False) -> list[str]:
    return [image, fake.plan.workdir, str(need_kb), "1" if gpus else "0"]


def test_check_reports_what_the_sessions_checks_found(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result = fake.on_host("check", check_args(fake, IMAGE, 1))
    report = _parse_report(result.stdout.decode())
    assert report["docker"] == "ok 24.0.7" and report["image"] == "present sha256:0123456789abcdef"
    assert report["writable"] == "yes"
    assert int(report["free_kb"]) > 0 and "gpus" not in report
    assert check_row("h1", report, need_kb=1, image=IMAGE, gpus=False).ok
    assert Path(fake.plan.workdir).is_dir() and list(Path(fake.plan.workdir).iterdir()) == []  # no probe left


def test_check_looks_for_the_image_without_pulling_it_and_names_every_problem(tmp_path: Path):
    fake = FakeHost(tmp_path)
    report = _parse_report(fake.on_host("check", check_args(fake, IMAGE, 1), FAKE_NO_IMAGE="1").stdout.decode())
    assert report["image"] == "missing" and "pull" not in fake.calls
    report = _parse_report(fake.on_host("check", check_args(fake, IMAGE, 10 ** 18, gpus=True),
                                        FAKE_DOWN_IMAGE="1").stdout.decode())
    row = check_row("h1", report, need_kb=10 ** 18, image=IMAGE, gpus=True)
    assert row.problems[0] == f"image {IMAGE}: permission denied while trying to connect"
    assert "VolumeSizeInGB needs" in row.problems[1]
    assert row.problems[2] == "GPUs: no NVIDIA runtime or CDI devices"


def test_check_of_a_docker_that_does_not_answer_ends_there(tmp_path: Path):
    fake = FakeHost(tmp_path)
    report = _parse_report(fake.on_host("check", check_args(fake, "", 0), FAKE_DOWN="1").stdout.decode())
    assert report == {"docker": "Cannot connect to the Docker daemon"}
    assert "image" not in fake.calls


def test_check_and_session_fail_alike_on_an_unwritable_workdir(tmp_path: Path):
    fake = FakeHost(tmp_path)
    Path(fake.plan.workdir).write_text("a file, not a directory")
    report = _parse_report(fake.on_host("check", check_args(fake, "", 0)).stdout.decode())
    assert report["writable"] == "no"
    result, report = fake.session(b"abort\n")
    assert result.returncode == Status.WRITE_FAILED
    assert "File exists" in report.errors or "Not a directory" in report.errors, report.errors


def test_a_session_whose_docker_is_down_says_so(tmp_path: Path):
    fake = FakeHost(tmp_path)
    result, report = fake.session(b"abort\n", FAKE_DOWN="1")
    assert result.returncode == Status.DOCKER_FAILED
    assert report.events == ["written"] and "Cannot connect" in report.errors
    fake.clean_up()
    result, report = fake.session(b"abort\n", FAKE_NO_IMAGE="1", FAKE_PULL_FAILS="1")
    assert result.returncode == Status.PULL_FAILED and "pull access denied" in report.errors


def test_a_multi_word_docker_command_with_spaces_runs(tmp_path: Path):
    fake = FakeHost(tmp_path)
    spaced = tmp_path / "zq docker dir"
    spaced.mkdir()
    (spaced / "docker").symlink_to(fake.docker)
    fake.plan = host_plan(workdir=str(tmp_path / "work"), docker=f"env ZQ_VIA=env '{spaced}/docker'")[0]
    result, report = fake.session(b"go\nclean\n")
    assert report.events == ["written", "prepared", "started", "exited", "cleaned"], report.errors
    assert fake.run_argv == [word if i != fake.plan.image_at else report.image
                             for i, word in enumerate(fake.plan.docker_create)]


def test_gc_lists_containers_and_job_dirs_then_removes_them(tmp_path: Path):
    fake = FakeHost(tmp_path)
    job_dir = Path(fake.plan.job_dir)
    (job_dir / "output").mkdir(parents=True)
    (job_dir / RUN_FILE).write_text(f"{RUN}\n{CONTROLLER}\n")
    listed = fake.on_host("gc-list", [fake.plan.workdir, RUN_FILE, JOB_LABEL, RUN_LABEL, CONTROLLER_LABEL])
    assert listed.returncode == 0, listed.stderr
    found = parse_leftovers(listed.stdout.decode(), fake.plan.workdir)
    assert [(f.kind, f.ref, f.job, f.run, f.controller) for f in found] == [
        ("container", "c1", NAME, RUN, "zq-controller:/x"), ("dir", fake.plan.job_dir, NAME, RUN, CONTROLLER)]
    removed = fake.on_host("gc-remove", ["container", "c1", "dir", fake.plan.job_dir, "parent", fake.plan.job_parent])
    assert removed.returncode == 0 and removed.stdout == b""
    assert not Path(fake.plan.job_parent).exists()
    assert fake.calls[-1] == "rm"


# -- secrets and other local users ------------------------------------------------------------------

def mode(path: Path | str) -> int:
    return os.lstat(path).st_mode & 0o7777


def test_the_env_file_is_private_holds_each_value_verbatim_and_goes_after_create(tmp_path: Path):
    environment = {"SECRET": SECRET, **HOSTILE_ENV}
    fake = FakeHost(tmp_path, environment=environment)
    _, report = fake.session(b"go\nclean\n")
    assert report.events[-1] == "cleaned", report.errors
    assert (tmp_path / "create.env").read_text() == "".join(f"{k}={v}\n" for k, v in environment.items())
    assert (tmp_path / "create.env.mode").read_text().strip() == "600"
    after = fake.plan.image_at + 1
    assert fake.run_argv[after:] == fake.plan.docker_create[after:] and "--env" not in fake.run_argv


# Values docker's env file cannot carry (a newline; a carriage return at the end), and one
# with non-ASCII characters: byte for byte into docker's own environment.
MULTILINE = {"LINES": "line1\nline2", "TRAILING": "trailing\n\n", "CR_END": "ends with CR\r", "ONLY_NL": "\n",
             "CRLF": "a\r\nb\r\n", "WIDE": "h\u00e9llo\nw\u00f6rld \u2713 $(touch MARKER)\n"}


def test_a_value_with_newlines_reaches_dockers_environment_byte_exact_and_never_an_argv(tmp_path: Path):
    """The argv says `--env KEY`; docker create alone has KEY=value in its environment
    (/proc/PID/environ: its own user's only), from a 0600 file that goes right after."""
    environment = {"SECRET": SECRET, **HOSTILE_ENV, **MULTILINE}
    fake = FakeHost(tmp_path, environment=environment)
    argv = hostscripts.session(fake.plan, docker_timeout=10)
    _, report = fake.session(b"go\nkeep\n")
    assert report.events == ["written", "prepared", "started", "exited", "cleaned"], report.errors
    seen = fake.environ("create")
    for key, value in MULTILINE.items():
        assert seen[key.encode()] == value.encode()
    assert not any(key.encode() in fake.environ("start") for key in MULTILINE)  # that one docker process only
    assert not any(key.encode() in seen for key in [*HOSTILE_ENV, "SECRET"])  # those: in the env file
    assert (tmp_path / "create.env").read_text() == \
        "".join(f"{key}={value}\n" for key, value in {"SECRET": SECRET, **HOSTILE_ENV}.items())
    docker_argv = fake.run_argv
    assert [docker_argv[i + 1] for i, word in enumerate(docker_argv) if word == "--env"] == list(MULTILINE)
    for words in (docker_argv, argv):  # neither docker's argv nor the session's holds a value
        for value in MULTILINE.values():
            assert not any(line and line in word for line in value.split("\n") for word in words)
    # At create: the env file and one file per value, 0600, in the 0700 private dir; gone after.
    assert (tmp_path / "create.files").read_text().split("\n")[:-1] == \
        ["env 600", *(f"env.{i} 600" for i in range(1, len(MULTILINE) + 1))]
    assert Path(fake.plan.env_value_file(1)) == Path(fake.plan.private_dir, "env.1")
    assert sorted(p.name for p in Path(fake.plan.private_dir).iterdir()) == ["config", "inputs", "output", "outputs"]
    assert not (tmp_path / "MARKER").exists()  # no value was ever run by a shell


def test_the_env_file_goes_when_create_fails_too(tmp_path: Path):
    fake = FakeHost(tmp_path, environment={"SECRET": SECRET, **MULTILINE})
    failing = tmp_path / "bin" / "docker"
    failing.write_text(FAKE_DOCKER.replace("echo 0123abcd ;;", "exit 1 ;;"))
    result, _ = fake.session(b"abort\n")
    assert result.returncode == Status.CREATE_FAILED
    assert (tmp_path / "create.env").read_text() == f"SECRET={SECRET}\n"
    assert fake.environ("create")[b"LINES"] == b"line1\nline2"
    assert not Path(fake.plan.env_file).exists()
    assert not any(Path(fake.plan.env_value_file(i)).exists() for i in range(1, len(MULTILINE) + 1))


def test_only_the_ssh_user_can_enter_the_job_directorys_mount_sources(tmp_path: Path):
    fake = FakeHost(tmp_path, environment={"SECRET": SECRET})
    _, report = fake.session(b"go\nkeep\n")
    assert report.events[-1] == "cleaned", report.errors
    private = Path(fake.plan.private_dir)
    assert mode(fake.plan.job_parent) == 0o755
    assert mode(fake.plan.job_dir) == 0o711  # others: the run file by name, nothing else
    assert mode(fake.plan.run_file) == 0o644
    assert mode(private) == 0o700
    expected = {"config": 0o755, "output": 0o755, "inputs": 0o755, "inputs/1": 0o755, "outputs": 0o755,
                "outputs/1": 0o755}
    assert {str(p.relative_to(private)): mode(p) for p in private.rglob("*") if p.is_dir()} == expected
    for path in fake.plan.files:
        assert mode(private / path) == 0o644  # the container's USER may be anyone
    assert sorted(p.name for p in Path(fake.plan.job_dir).iterdir()) == [".fleet-run", "ml"]


@pytest.mark.parametrize("user, uid", [("", 0), ("1000", 1000), ("1000:50", 1000), ("alice", 1234),
                                       ("alice:staff", 1234), ("0", 0), ("root", 0)])
def test_the_directories_the_container_writes_are_its_users_alone(tmp_path: Path, user, uid):
    """output/ and outputs/N become the uid the image's User names (a name: from the image's
    /etc/passwd, never the host's), 0755: writable by that user alone (issue 19, 11)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1234:50::/home/alice:/bin/sh\n")
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nkeep\n", FAKE_USER=user)
    assert report.events[-1] == "cleaned", report.errors
    private = Path(fake.plan.private_dir)
    owners = {str(p.relative_to(private)): (os.lstat(p).st_uid, mode(p)) for p in private.rglob("*") if p.is_dir()}
    assert owners == {"config": (0, 0o755), "output": (uid, 0o755), "inputs": (0, 0o755), "inputs/1": (0, 0o755),
                      "outputs": (0, 0o755), "outputs/1": (uid, 0o755)}
    assert ("cp" in fake.calls) == (user.startswith("alice") or user == "root")
    assert not (private / ".passwd").exists()


def test_a_user_the_images_passwd_lacks_gets_nothing_and_dockers_start_says_so(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nkeep\n", FAKE_USER="mallory")
    assert report.events[-1] == "cleaned", report.errors
    assert os.lstat(Path(fake.plan.private_dir) / "output").st_uid == 0


def test_a_non_root_ssh_user_cannot_give_the_outputs_away_and_is_refused_naming_the_uid(tmp_path: Path):
    """Only root may chown: rather than make them writable by everyone, the session fails
    (WRITE_FAILED) naming the image's uid and the SSH user, and removes the container."""
    fake_id = tmp_path / "bin" / "id"
    fake = FakeHost(tmp_path)
    fake_id.write_text('#!/bin/sh\ncase $1 in -u) echo 4242 ;; -un) echo bob ;; *) exec /usr/bin/id "$@" ;; esac\n')
    fake_id.chmod(0o755)
    result, report = fake.session(b"go\nkeep\n", FAKE_USER="1000", PATH=f"{fake_id.parent}:{os.environ['PATH']}")
    assert result.returncode == Status.WRITE_FAILED
    assert "uid 1000" in report.errors and "bob" in report.errors and "chown" in report.errors
    assert "start" not in fake.calls and fake.calls[-1] == "rm"
    assert mode(Path(fake.plan.private_dir) / "output") == 0o755


def test_an_engine_whose_cp_has_no_follow_flag_still_gives_a_named_user_the_outputs(tmp_path: Path):
    """Podman's own CLI has no `cp -L`: the user is looked up with a plain cp (review of
    issue 19, 11: the outputs stayed the SSH user's and the container could not write)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nworker:x:2345:50::/w:/bin/sh\n")
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nkeep\n", FAKE_USER="worker", FAKE_NO_CP_L="1")
    assert report.events[-1] == "cleaned", report.errors
    assert os.lstat(Path(fake.plan.private_dir) / "output").st_uid == 2345


def test_an_images_passwd_past_4_mib_is_not_read(tmp_path: Path):
    """The image chooses its /etc/passwd: one past 4 MiB is not copied whole onto the host
    (the user is then unknown, and the engine's start says so)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(b"#" * (6 << 20) + b"\nworker:x:2345:50::/w:/bin/sh\n")
    fake = FakeHost(tmp_path)
    _, report = fake.session(b"go\nkeep\n", FAKE_USER="worker")
    assert report.events[-1] == "cleaned", report.errors
    assert os.lstat(Path(fake.plan.private_dir) / "output").st_uid == 0


def test_a_non_root_ssh_user_running_an_image_of_its_own_uid_is_not_refused(tmp_path: Path):
    """A uid-1000 user of the docker group and an image of USER 1000: the directories are
    its already (review of issue 19, 11)."""
    fake_id = tmp_path / "bin" / "id"
    fake = FakeHost(tmp_path)
    fake_id.write_text('#!/bin/sh\ncase $1 in -u) echo 1000 ;; -un) echo bob ;; *) exec /usr/bin/id "$@" ;; esac\n')
    fake_id.chmod(0o755)
    result, report = fake.session(b"go\nkeep\n", FAKE_USER="1000", PATH=f"{fake_id.parent}:{os.environ['PATH']}")
    assert report.events[-1] == "cleaned", report.errors
    assert "start" in fake.calls


def test_a_job_directory_that_exists_already_is_never_used(tmp_path: Path):
    fake = FakeHost(tmp_path)
    planted = Path(fake.plan.job_dir)
    (planted / "ml" / "inputs" / "1.partial").mkdir(parents=True)
    result, report = fake.session(b"go\nclean\n")
    assert result.returncode == Status.IN_USE and report.errors == "unknown"
    assert "create" not in fake.calls and not (planted / ".fleet-run").exists()
    (planted / ".fleet-run").write_text(f"{RUN}\n{CONTROLLER}\n")  # even one naming this run
    result, report = fake.session(b"go\nclean\n")
    assert result.returncode == Status.WRITE_FAILED and f"{planted} exists already" in report.errors


@pytest.mark.parametrize("which", ["workdir", "job_parent"])
def test_a_directory_other_users_can_change_is_refused(tmp_path: Path, which):
    fake = FakeHost(tmp_path)
    shared = Path(fake.plan.workdir if which == "workdir" else fake.plan.job_parent)
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    result, report = fake.session(b"go\nclean\n")
    assert result.returncode == Status.WRITE_FAILED and str(shared) in report.errors
    assert not Path(fake.plan.job_dir).exists() and "create" not in fake.calls
    if which == "workdir":  # sticky, as /tmp: others cannot rename what fleet makes there
        shared.chmod(0o1777)
        _, report = fake.session(b"go\nclean\n")
        assert report.events[-1] == "cleaned", report.errors


@pytest.mark.parametrize("cut", [1, 10])  # 1: the pieces whole, the newline after them missing
def test_job_files_cut_short_on_stdin_write_nothing_and_start_nothing(tmp_path: Path, cut: int):
    fake = FakeHost(tmp_path)
    whole = hostscripts.session_input(fake.plan)
    result, report = fake.session(b"", files=whole[:-cut], image=b"")
    assert result.returncode == Status.WRITE_FAILED and "cut short" in report.errors
    assert "create" not in fake.calls and not Path(fake.plan.private_dir, "config").exists()


def test_session_input_is_a_line_of_byte_counts_then_the_files_then_the_env_file_then_the_values():
    plan = host_plan(environment={"SECRET": SECRET, **MULTILINE})[0]
    header, _, rest = hostscripts.session_input(plan).partition(b"\n")
    pieces = [*plan.files.values(), plan.environment, *(value.encode() for value in MULTILINE.values())]
    assert header.split() == [str(len(piece)).encode() for piece in pieces]
    assert rest == b"".join(pieces) + b"\n"  # the newline that tells a stdin cut short


# -- a hostile host's stderr: memory stays bounded --------------------------------------------------

def test_a_hostile_hosts_stderr_is_kept_bounded():
    from fleet.host import EVENTS_LIMIT, LINE_LIMIT, MESSAGE_LIMIT, SAID_LIMIT
    report = SessionReport()
    for _ in range(64):  # 64 MiB without a newline, in 1 MiB chunks
        report.feed(b"x" * 2**20)
        assert len(report._buffer) <= 2**20 + LINE_LIMIT and len(report.said) <= SAID_LIMIT
    for _ in range(1000):  # many lines of words, and the same event again and again
        report.feed(b"w" * 1000 + b"\nfleet:written\n")
    assert len(report.said) <= SAID_LIMIT and report.events == ["written"] * EVENTS_LIMIT
    # a message count far above what the script sends, then negative: never more than 1 KB kept
    report.feed(b"fleet:message:999999999\n" + b"m" * 5000 + b"\n")
    assert report.message == b"m" * MESSAGE_LIMIT
    report.feed(b"fleet:message:-5\nfleet:exited\n")
    assert report.message == b""
    assert report.feed(b"fleet:cleaned\n") == ["cleaned"]  # still told, though no longer listed
    # an image line of 60 KB: the ID and how, cut to 100 characters, undecodable bytes replaced
    report.feed(b"fleet:image sha256:" + b"a" * 60000 + b"\xff present\n")
    assert report.image is not None and len(report.image) + len(report.image_how) <= 100
    report.feed(b"fleet:image sha256:abc pulled\n")
    assert (report.image, report.image_how) == ("sha256:abc", "pulled")


# -- what the session costs the host: the job directory in a few processes -----------------------

COUNTED = ("mkdir", "chmod", "dd", "head", "tail", "cat", "wc", "rm", "awk", "df", "find", "rmdir")


def _counting_path(tmp_path: Path) -> str:
    """A PATH whose first folder has a shim per COUNTED command: it logs its name, then runs
    the real one."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in COUNTED:
        real = shutil.which(name)
        assert real, name
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho {name} >> "$FAKE_DIR/counted"\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return f"{shims}:{os.environ['PATH']}"


def _commands_until_prepared(tmp_path: Path, channels: int) -> list[str]:
    """The COUNTED commands a session runs from its start to `prepared` (then it aborts), for
    a job of `channels` inputs and as many outputs."""
    tmp_path.mkdir()
    fake = FakeHost(tmp_path)
    document = {
        "ProcessingJobName": NAME,
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": IMAGE},
        "ProcessingInputs": [{"InputName": f"in{i}", "S3Input": {
            "S3Uri": f"s3://zq-bucket/in{i}/", "LocalPath": f"/opt/ml/processing/in{i}",
            "S3DataType": "S3Prefix"}} for i in range(channels)],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": f"out{i}", "S3Output": {
            "S3Uri": f"s3://zq-bucket/out{i}/", "LocalPath": f"/opt/ml/processing/out{i}",
            "S3UploadMode": "EndOfJob"}} for i in range(channels)]},
    }
    host = fake.plan.host
    fake.plan = plan_cluster(parse_job(document, "job.json"), [host], [host.ip], stop_grace=30, region="us-east-1",
                             account="000000000000", run_id=RUN, controller=CONTROLLER).hosts[0]
    Path(fake.plan.workdir).mkdir()  # as on a host: the workdir is there
    path = _counting_path(tmp_path)
    result, report = fake.session(b"abort\n", image=hostscripts.image_use("sha256:0123456789abcdef"), PATH=path)
    assert report.events == ["written", "prepared"], report.errors
    counted = tmp_path / "counted"
    return counted.read_text().split() if counted.exists() else []


def test_the_job_directory_is_written_by_a_few_processes_however_many_channels(tmp_path: Path):
    """Every process a session starts costs the host CPU (issue 20: a session's host CPU at
    most the baseline `docker run`'s): the directories go in one mkdir, the files' pieces one
    dd each, no chmod, no tail|head pipeline per file."""
    one = _commands_until_prepared(tmp_path / "one", 1)
    eight = _commands_until_prepared(tmp_path / "eight", 8)
    assert sorted(one) == sorted(eight), (one, eight)
    assert "chmod" not in one and "tail" not in one and "awk" not in one
    assert len(one) <= 15, one  # the fake docker's own cat and find among them
