"""What fleet runs on a host, as argvs: one session per host, plus stop, kill and cleanup.

The session is the whole life of the job on the host in ONE command, so ONE round trip
(each costs ~120 ms or more: sshd forks and the login shell starts):

    check docker (time-bounded) → pull the image if missing → write the job directory
    → `docker create` → report `prepared` → (the controller stages the inputs into
    inputs/N.partial) → wait for `go` on stdin (every host is checked, its container
    created, its inputs complete, before any starts) → move inputs into place
    → `docker start` → stream `docker logs --follow` on stdout → `docker wait`
    → report the exit code and the first 1 KB of /opt/ml/output/message
    → wait for `clean` or `keep` on stdin → remove the container (and the job directory).

The container is detached: losing the session never kills it. EOF on stdin before `go`
aborts; EOF later leaves everything in place, for a controller that comes back.

Progress goes on stderr as `fleet:WORD...` lines; docker's own error text around them is
kept to explain a failure. Each script is fixed text run as `sh -c SCRIPT fleet ARGS...`:
user values travel only as positional ARGS, never inside the script. The host's docker
command ("docker", "sudo docker") enters as a function body quoted with shlex.join. The
transport then quotes the whole argv once.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from fleet.inventory import Host
from fleet.plan import HostPlan

# Exit statuses of the session script, before the container exists.
DOCKER_TIMEOUT = 20
DOCKER_MISSING = 21
DOCKER_FAILED = 22
PULL_FAILED = 23
WRITE_FAILED = 24
CREATE_FAILED = 25
NO_SPACE = 26
NO_GPU_RUNTIME = 27
IN_USE = 28
START_FAILED = 30
WAIT_FAILED = 31
# ... and of the resume script.
GONE = 32
NOT_STARTED = 33

# Shell functions shared by the session and the preflight check.
_FUNCTIONS = """
free_kb() { df -Pk -- "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
gpu_runtime() {
  d_bounded info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"' && return 0
  grep -qs 'nvidia.com/gpu' /etc/cdi/* /var/run/cdi/*
}
"""

# From the container's start (or a resumed session) to its removal; `offset` bytes of its
# log were already received by the controller: the stream starts after them (head -c reads
# exactly that many from the pipe), so no byte is lost or sent twice.
_SUPERVISE = f"""
# `docker wait` starts now (its start-up overlaps the job); dd passes the log through
# unchanged and counts it (its last words on stderr). Temporary files are this process's
# own: an older session on this host may still be winding down.
d wait "$name" > "$job_dir/.code.$$" &
waiter=$!
d logs --follow "$name" 2>&1 | {{ head -c "$offset" >/dev/null; dd bs=65536 2> "$job_dir/.logged.$$"; }}
wait "$waiter" || exit {WAIT_FAILED}
code=$(cat "$job_dir/.code.$$")
# `docker logs --follow` can miss the last, unterminated line of a container that exits
# (seen with Docker 20.10 in half the runs): send what it did not.
logged=$(sed -n 's/^\\([0-9][0-9]*\\) bytes.*/\\1/p' "$job_dir/.logged.$$" 2>/dev/null)
rm -f -- "$job_dir/.logged.$$" "$job_dir/.code.$$"
d logs "$name" 2>&1 | tail -c +$((offset + ${{logged:-0}} + 1))
printf 'fleet:exit-code:%s\\n' "$code" >&2
# A regular file only: a symlink planted by the container is never followed.
if [ -f "$message" ] && [ ! -L "$message" ]; then
  printf 'fleet:message:%s\\n' "$(head -c 1024 -- "$message" | wc -c)" >&2
  head -c 1024 -- "$message" >&2
fi
printf 'fleet:exited\\n' >&2
IFS= read -r then || exit 0
d_bounded rm --force "$name" >/dev/null
if [ "$then" = clean ]; then
  rm -rf -- "$job_dir" && rmdir -- "${{job_dir%/*}}" 2>/dev/null
fi
printf 'fleet:cleaned\\n' >&2
"""

_SESSION = f"""
job_dir=$1 image=$2 name=$3 message=$4 run=$5 need_kb=$6 gpus=$7 ndirs=$8 nfiles=$9
shift 9
# The job directory first: the controller streams the inputs in (`written`) while docker is
# checked, the image pulled and the container created.
mkdir -p -- "${{job_dir%/*/*}}" || exit {WRITE_FAILED}
free=$(free_kb "${{job_dir%/*/*}}")
if [ -n "$free" ] && [ "$free" -lt "$need_kb" ]; then printf '%s\\n' "$free" >&2; exit {NO_SPACE}; fi
mkdir -p -- "${{job_dir%/*}}" || exit {WRITE_FAILED}
# The job directory is this run's alone: another job of the same name (another controller,
# or leftovers) is never written into, nor removed.
if ! mkdir -- "$job_dir" 2>/dev/null; then
  owner=$(head -n 1 -- "$job_dir/.fleet-run" 2>/dev/null)
  if [ "$owner" != "${{run%%:*}}" ]; then printf '%s\\n' "${{owner:-unknown}}" >&2; exit {IN_USE}; fi
fi
printf '%s\\n' "${{run%%:*}}" "${{run#*:}}" > "$job_dir/.fleet-run" || exit {WRITE_FAILED}
while [ "$ndirs" -gt 0 ]; do
  mkdir -p -m 0777 -- "$job_dir/$1" || exit {WRITE_FAILED}
  shift; ndirs=$((ndirs - 1))
done
while [ "$nfiles" -gt 0 ]; do
  printf '%s' "$2" > "$job_dir/$1" || exit {WRITE_FAILED}
  shift 2; nfiles=$((nfiles - 1))
done
mkdir -p -m 0777 -- "$job_dir/inputs" || exit {WRITE_FAILED}
printf 'fleet:written\\n' >&2
out=$(d_bounded image inspect --format '{{{{.Id}}}}' "$image" 2>&1)
rc=$?
if [ $rc -eq 124 ]; then exit {DOCKER_TIMEOUT}; fi
if [ $rc -eq 127 ]; then printf '%s\\n' "$out" >&2; exit {DOCKER_MISSING}; fi
if [ $rc -ne 0 ]; then
  case $out in
    *"o such image"*) d pull --quiet "$image" >/dev/null || exit {PULL_FAILED} ;;
    *) printf '%s\\n' "$out" >&2; exit {DOCKER_FAILED} ;;
  esac
fi
if [ "$gpus" = 1 ] && ! gpu_runtime; then exit {NO_GPU_RUNTIME}; fi
d "$@" >/dev/null || exit {CREATE_FAILED}
printf 'fleet:prepared\\n' >&2
IFS= read -r go || go=abort
if [ "$go" != go ]; then
  d_bounded rm --force "$name" >/dev/null
  rm -rf -- "$job_dir"; rmdir -- "${{job_dir%/*}}" 2>/dev/null
  exit 0
fi
# Inputs were staged into inputs/N.partial: complete now, they take their final names.
for partial in "$job_dir"/inputs/*.partial; do
  [ -d "$partial" ] || continue
  rm -rf -- "${{partial%.partial}}" && mv -- "$partial" "${{partial%.partial}}" || exit {WRITE_FAILED}
done
d start "$name" >/dev/null || exit {START_FAILED}
printf 'fleet:started\\n' >&2
offset=0
""" + _SUPERVISE

# A new session for a container already started (after a lost connection, or by
# `fleet attach`): the container must be this run's.
_RESUME = f"""
name=$1 job_dir=$2 message=$3 run=$4 offset=$5
state=$(d_bounded inspect --format '{{{{index .Config.Labels "fleet.run"}}}} {{{{.State.Status}}}}' "$name" 2>&1)
if [ $? -ne 0 ]; then printf '%s\\n' "$state" >&2; exit {GONE}; fi
case $state in
  "$run created") exit {NOT_STARTED} ;;
  "$run "*) ;;
  *) printf 'the container %s is not this job run'"'"'s\\n' "$name" >&2; exit {GONE} ;;
esac
printf 'fleet:started\\n' >&2
""" + _SUPERVISE

# Remove the container and the job directory, but only this run's.
_CLEANUP = """
name=$1 job_dir=$2 keep=$3 run=$4
owner=$(d_bounded inspect --format '{{index .Config.Labels "fleet.run"}}' "$name" 2>/dev/null)
if [ "$owner" = "$run" ]; then d_bounded rm --force "$name" >/dev/null 2>&1; fi
if [ "$keep" != keep ]; then
  if [ -d "$job_dir" ]; then
    [ "$(head -n 1 -- "$job_dir/.fleet-run" 2>/dev/null)" = "$run" ] || exit 0
    rm -rf -- "$job_dir" || exit 1
  fi
  rmdir -- "${job_dir%/*}" 2>/dev/null
fi
exit 0
"""


def script(docker: list[str], body: str, args: list[str], *, docker_timeout: int = 0) -> list[str]:
    prelude = f'd() {{ {shlex.join(docker)} "$@"; }}\n'
    if docker_timeout:
        prelude += f'd_bounded() {{ {shlex.join(["timeout", str(docker_timeout), *docker])} "$@"; }}\n'
        prelude += _FUNCTIONS
    return ["sh", "-c", prelude + body, "fleet", *args]


def on_host(host: Host, body: str, args: list[str], docker_timeout: int) -> list[str]:
    """A fixed script for `host` outside any job (fleet check, fleet gc)."""
    return script(host.docker_command, body, args, docker_timeout=docker_timeout)


def session(plan: HostPlan, image: str, docker_timeout: int, volume_gb: int = 0) -> list[str]:
    """The job's whole life on one host (see the module's docstring). The host's workdir
    must have `volume_gb` GB free (the job's VolumeSizeInGB)."""
    files = [word for path, content in plan.files.items() for word in (path, content.decode())]
    args = [plan.job_dir, image, plan.container, plan.message_file, f"{plan.run_id}:{plan.controller}",
            str(volume_gb * 1024 * 1024), "1" if plan.host.gpus else "0",
            str(len(plan.dirs)), str(len(plan.files)), *plan.dirs, *files, *plan.docker_create]
    return script(plan.docker, _SESSION, args, docker_timeout=docker_timeout)


def resume(plan: HostPlan, offset: int, docker_timeout: int) -> list[str]:
    """A session for this run's container, already started: its log from byte `offset` on,
    its exit, then clean / keep as in `session`."""
    args = [plan.container, plan.job_dir, plan.message_file, plan.run_id, str(offset)]
    return script(plan.docker, _RESUME, args, docker_timeout=docker_timeout)


GO = b"go\n"
ABORT = b"abort\n"
CLEAN = b"clean\n"
KEEP = b"keep\n"


def stop(plan: HostPlan) -> list[str]:
    """SIGINT, then SIGKILL after the grace: the container was created with both."""
    return [*plan.docker, "stop", plan.container]


def kill(plan: HostPlan) -> list[str]:
    return [*plan.docker, "kill", plan.container]


def cleanup(plan: HostPlan, keep: bool, docker_timeout: int) -> list[str]:
    """Remove this run's container and (unless `keep`) its job directory; idempotent. For
    hosts whose session did not get to clean up itself."""
    return script(plan.docker, _CLEANUP,
                   [plan.container, plan.job_dir, "keep" if keep else "remove", plan.run_id],
                   docker_timeout=docker_timeout)


@dataclass
class SessionReport:
    """What a session has said on stderr so far, parsed as it arrives."""

    events: list[str] = field(default_factory=list)  # written, prepared, started, exited, cleaned
    exit_code: int | None = None
    message: bytes | None = None
    said: bytearray = field(default_factory=bytearray)  # docker's own words, for errors
    _buffer: bytearray = field(default_factory=bytearray)
    _message_left: int = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Take a chunk of stderr; return the events it completed."""
        self._buffer += chunk
        new = []
        while self._buffer:
            if self._message_left:
                take = bytes(self._buffer[:self._message_left])
                del self._buffer[:len(take)]
                self.message = (self.message or b"") + take
                self._message_left -= len(take)
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if line.startswith(b"fleet:exit-code:"):
                self.exit_code = _int(line.removeprefix(b"fleet:exit-code:"))
            elif line.startswith(b"fleet:message:"):
                self._message_left = _int(line.removeprefix(b"fleet:message:")) or 0
                self.message = b""
            elif line in (b"fleet:written", b"fleet:prepared", b"fleet:started", b"fleet:exited",
                          b"fleet:cleaned"):
                event = line.decode().removeprefix("fleet:")
                self.events.append(event)
                new.append(event)
            else:
                self.said += line + b"\n"
        return new

    def resumed(self) -> None:
        """A new session command follows a lost one: what the old one half-said is dropped."""
        self._buffer.clear()
        self._message_left = 0

    @property
    def errors(self) -> str:
        return (self.said + self._buffer).decode(errors="replace").strip()


def _int(text: bytes) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
