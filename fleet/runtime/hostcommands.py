"""The commands fleet runs on a host, as argvs, one per lifecycle phase.

Each phase is one round trip: a fixed POSIX sh script run as `sh -c SCRIPT fleet ARGS...`.
User values (names, paths, the docker argv) travel only as positional ARGS, never inside
the script text; the host's docker command ("docker", "sudo docker") is the one exception
and enters the script as a function body quoted with shlex.join. The transport then
quotes the whole argv once.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from dataclasses import dataclass

from fleet.plan import HostPlan

STARTED = b"fleet:started\n"
EXIT_CODE = b"fleet:exit-code:"

# Exit statuses of the prepare script.
DOCKER_TIMEOUT = 20
DOCKER_MISSING = 21
DOCKER_FAILED = 22
PULL_FAILED = 23
WRITE_FAILED = 24
# ... and of the run script.
START_FAILED = 30
WAIT_FAILED = 31

_PREPARE = f"""
job_dir=$1 image=$2
out=$(d_bounded version --format '{{{{.Server.Version}}}}' 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  printf '%s\\n' "$out" >&2
  [ $rc -eq 124 ] && exit {DOCKER_TIMEOUT}
  [ $rc -eq 127 ] && exit {DOCKER_MISSING}
  exit {DOCKER_FAILED}
fi
if ! d image inspect --format '{{{{.Id}}}}' "$image" >/dev/null 2>&1; then
  d pull --quiet "$image" >/dev/null || exit {PULL_FAILED}
fi
mkdir -p -- "$job_dir" && tar -x -C "$job_dir" || exit {WRITE_FAILED}
"""

_RUN = f"""
name=$1 message=$2
shift 2
d "$@" >/dev/null || exit {START_FAILED}
printf 'fleet:started\\n' >&2
d logs --follow "$name" 2>&1
code=$(d wait "$name") || exit {WAIT_FAILED}
printf 'fleet:exit-code:%s\\n' "$code" >&2
# /opt/ml/output/message: a regular file only; a symlink planted by the container is never followed.
if [ -f "$message" ] && [ ! -L "$message" ]; then head -c 1024 -- "$message" >&2; fi
exit 0
"""

_CLEANUP = """
name=$1 job_dir=$2 keep=$3
d rm --force "$name" >/dev/null 2>&1
if [ "$keep" != keep ]; then
  rm -rf -- "$job_dir" || exit 1
  rmdir -- "${job_dir%/*}" 2>/dev/null
fi
exit 0
"""


def _script(docker: list[str], body: str, args: list[str], *, docker_timeout: int = 0) -> list[str]:
    prelude = f'd() {{ {shlex.join(docker)} "$@"; }}\n'
    if docker_timeout:
        prelude += f'd_bounded() {{ {shlex.join(["timeout", str(docker_timeout), *docker])} "$@"; }}\n'
    return ["sh", "-c", prelude + body, "fleet", *args]


def prepare(plan: HostPlan, image: str, docker_timeout: int) -> list[str]:
    """Check docker answers (bounded), pull the image if missing, write the job directory
    (its tar comes on stdin: see `job_dir_tar`)."""
    return _script(plan.docker, _PREPARE, [plan.job_dir, image], docker_timeout=docker_timeout)


def run(plan: HostPlan) -> list[str]:
    """Start the container detached, stream its logs to stdout, then report on stderr:
    `fleet:started`, `fleet:exit-code:N`, and the first 1 KB of /opt/ml/output/message."""
    return _script(plan.docker, _RUN, [plan.container, plan.message_file, *plan.docker_run])


def stop(plan: HostPlan) -> list[str]:
    """SIGINT, then SIGKILL after the grace: the container was created with both."""
    return [*plan.docker, "stop", plan.container]


def kill(plan: HostPlan) -> list[str]:
    return [*plan.docker, "kill", plan.container]


def cleanup(plan: HostPlan, keep: bool) -> list[str]:
    """Remove the container and (unless `keep`) the job directory; idempotent."""
    return _script(plan.docker, _CLEANUP, [plan.container, plan.job_dir, "keep" if keep else "remove"])


def job_dir_tar(plan: HostPlan) -> bytes:
    """The job directory's skeleton: the mount sources and the config files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in plan.dirs:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            # Output and input directories are writable whatever user the image runs as.
            info.mode = 0o755 if directory == "config" else 0o777
            tar.addfile(info)
        for path, content in plan.files.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@dataclass(frozen=True)
class RunReport:
    """What the run script said on stderr."""

    started: bool
    exit_code: int | None
    message: bytes
    errors: str  # docker's own words, before the container started or around `wait`


def parse_run_stderr(stderr: bytes) -> RunReport:
    started = stderr.startswith(STARTED) or (b"\n" + STARTED) in stderr
    before, sep, after = stderr.partition(EXIT_CODE)
    if not sep:
        return RunReport(started, None, b"", before.replace(STARTED, b"").decode(errors="replace").strip())
    code_text, _, message = after.partition(b"\n")
    try:
        code = int(code_text)
    except ValueError:
        code = None
    return RunReport(started, code, message, before.replace(STARTED, b"").decode(errors="replace").strip())
