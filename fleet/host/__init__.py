"""What fleet runs on a host, as argvs: the session, resume, stop, kill, cleanup, and the
scripts of `fleet check`, `fleet gc` and the data transfers.

The host-side shell lives in this folder as POSIX sh files (checked by shellcheck), shipped
as package data. No file is ever copied to a host: each command is ONE
`sh -c TEXT fleet-SCRIPT ARGS...` (one round trip: each costs ~120 ms or more, sshd forks
and the login shell starts), TEXT being fixed: the script's shared parts (the docker
prelude, the checks, the supervision) then the script itself, put together here. Every
value (paths, names, the image, the docker command's words, the container's argv) travels
only as a positional argument, file contents and the Environment only on stdin: no shell
text is ever built from a value. The
transport then quotes the whole argv once. `$0` names the script (`fleet-session`, ...).

The session is the whole life of the job on the host in one command:

    read the config files, the env file and the values for docker's own environment from
    stdin (their contents, secrets among them, are never in an argv: /proc/PID/cmdline is
    world-readable)
    → write the job directory (the workdir checked: writable, VolumeSizeInGB free)
    → (the controller says how the host gets the image: it is here, or pushed now; or try
    the job's name (present beats pull), and if the host lacks it, pull NAME@DIGEST with
    registry credentials on stdin, for that pull only) → check docker
    (time-bounded) → pull the image if missing → (GPU runtime)
    → `docker create` → report `prepared` → (the controller stages the inputs into
    their partial directories) → wait for `go` on stdin (every host is checked, its
    container created, its inputs complete, before any starts) → move inputs into place
    → `docker start` → stream `docker logs --follow` on stdout → `docker wait`
    → report the exit code and the first 1 KB of /opt/ml/output/message
    → wait for `clean` or `keep` on stdin → remove the container (and the job directory).

Where the controller reaches the host's engine API (fleet.engine), it says `go api`: once the
inputs are in place the session says `placed` and only waits, and the controller starts the
container, follows the log, waits for the exit and removes the container through the API
(no `docker start`, `logs`, `wait` nor `rm` process on the host); it says `ended` once it has
the exit code and the whole log, and the session answers with the message, then removes the
job directory on `clean`.

The container is detached: losing the session never kills it. EOF on stdin before `go`
aborts; EOF later leaves everything in place, for a controller that comes back.

Progress goes on stderr as `fleet:WORD...` lines; docker's own error text around them is
kept to explain a failure. `fleet check` runs the session's very checks (checks.sh) and
reports each as a KEY=VALUE line.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from fleet.errors import InvalidInput
from fleet.host.statuses import (  # the statuses and what each means to a user, for the callers
    Status as Status,
    host_failure as host_failure,
    shell_definitions,
)
from fleet.inventory import Host
from fleet.plan import RUN_LABEL, HostPlan

log = logging.getLogger(__name__)


GO = b"go\n"
GO_API = b"go api\n"  # go; the controller follows the container through the engine's API
ENDED = b"ended\n"  # (API) the container has ended and its log is all in: the message, please
ABORT = b"abort\n"
CLEAN = b"clean\n"
KEEP = b"keep\n"
REMOVED = b" removed"  # (API) before CLEAN's or KEEP's newline: the controller removed the container

# Each script's text: these files of this folder, in order (shared functions first).
# Those starting with "docker" take the host's docker command as their first arguments.
_PARTS: dict[str, tuple[str, ...]] = {
    "session": ("docker", "images", "checks", "users", "supervise", "session"),
    "resume": ("docker", "supervise", "resume"),
    "cleanup": ("docker", "cleanup"),
    "check": ("docker", "images", "checks", "check"),
    "gc-list": ("docker", "gc-list"),
    "gc-remove": ("docker", "gc-remove"),
    "image-have": ("docker", "images", "image-have"),
    "load": ("docker", "images", "load"),
    "engine-dial": ("docker", "engine-dial"),
    "engine-id": ("docker", "checks", "engine-id"),
    "extract": ("extract",),
    "archive": ("archive",),
    "changed-files": ("changed-files",),
    "list-files": ("list-files",),
    "fetch": ("http", "fetch"),
    "put": ("http", "put"),
    "reach": ("http", "reach"),
}


@functools.cache
def script_text(script: str) -> str:
    """The fixed text `sh -c` runs for `script`, read from the package once: the statuses'
    definitions (fleet.host.statuses), then its parts."""
    folder = resources.files(__name__)
    parts = (folder.joinpath(f"{part}.sh").read_text(encoding="utf-8") for part in _PARTS[script])
    return shell_definitions() + "".join(parts)


def _argv(script: str, args: list[str]) -> list[str]:
    log.debug("host script %s with %d argument(s)", script, len(args))
    return ["sh", "-c", script_text(script), f"fleet-{script}", *args]


def _docker_args(docker: list[str], docker_timeout: int) -> list[str]:
    """The first arguments of a script that calls docker (docker.sh reads them)."""
    if not docker or any(not word or "\n" in word for word in docker):
        raise InvalidInput(f"the inventory's docker command {docker!r} must be words without newlines")
    return [str(docker_timeout), str(len(docker)), *docker]


def _with_docker(docker: list[str], script: str, args: list[str], docker_timeout: int) -> list[str]:
    if _PARTS[script][0] != "docker":
        raise ValueError(f"the host script {script} does not call docker")
    return _argv(script, [*_docker_args(docker, docker_timeout), *args])


def command(script: str, args: list[str]) -> list[str]:
    """A script that does not call docker (extract, archive, changed-files)."""
    if _PARTS[script][0] == "docker":
        raise ValueError(f"the host script {script} calls docker: use on_host")
    return _argv(script, args)


def on_host(host: Host, script: str, args: list[str], docker_timeout: int) -> list[str]:
    """A script for `host` outside any job (fleet check: "check"; fleet gc: "gc-list",
    "gc-remove"), given the host's docker command."""
    return _with_docker(host.docker_command, script, args, docker_timeout)


def image_have(docker: list[str], image: str, layers: Sequence[str], docker_timeout: int) -> list[str]:
    """What a host has of `image` (a config digest, with `layers` its RootFS diff IDs in
    order; or a name, without), on stdout: `present ENGINE-ID`, or `layers K` (the longest
    prefix of `layers` some image of the host starts with, where its engine's load skips
    those: 0 elsewhere). `docker` is the host's docker command (see images.sh)."""
    return _with_docker(docker, "image-have", [image, *layers], docker_timeout)


def engine_dial(docker: list[str], socket: str, docker_timeout: int) -> list[str]:
    """The engine's API on stdin/stdout through `docker system dial-stdio`, after one line
    `fleet:socket open|denied|missing|none` saying what is at `socket` ("" for none tried)."""
    return _with_docker(docker, "engine-dial", [socket], docker_timeout)


def engine_id(docker: list[str], docker_timeout: int) -> list[str]:
    """Which engine the docker command talks to: `id=ID root=DIR` on stdout (checks.sh's
    engine_identity)."""
    return _with_docker(docker, "engine-id", [], docker_timeout)


def image_load(docker: list[str], image_id: str, layers: Sequence[str], docker_timeout: int) -> list[str]:
    """`docker load` of the archive the controller writes on stdin, then a check that the
    image of the config digest `image_id` is there with these `layers`: `fleet:loaded
    ENGINE-ID` on stderr, else LOAD_FAILED and docker's words."""
    return _with_docker(docker, "load", [image_id, *layers], docker_timeout)


def session(plan: HostPlan, docker_timeout: int, volume_gb: int = 0) -> list[str]:
    """The job's whole life on one host (see the module's docstring). The host's workdir
    must have `volume_gb` GB free (the job's VolumeSizeInGB). Its stdin must start with
    `session_input(plan)`; once it says `written`, `image_use`, `image_pull` or `image_try`
    follows (after a `try`, `image-missing`: then `image_pull`, or abort)."""
    inputs = [word for index in range(1, plan.input_count + 1)
              for word in (plan.partial_input_dir(index), plan.input_dir(index))]
    args = [plan.workdir, plan.job_parent, plan.job_dir, plan.run_file, plan.private_dir, plan.env_file,
            plan.message_file, str(plan.image_at), plan.container, plan.run_id, plan.controller,
            str(volume_gb * 1024 * 1024), "1" if plan.host.gpus else "0",
            str(len(plan.tree)), str(len(plan.files)), str(plan.input_count), str(len(plan.inherited)),
            *(word for directory, mode in plan.tree for word in (mode, directory)),
            *(posixpath.join(plan.private_dir, path) for path in plan.files), *inputs,
            *plan.inherited, *plan.docker_create]
    return _with_docker(plan.docker, "session", args, docker_timeout)


def session_input(plan: HostPlan) -> bytes:
    """What the session reads on stdin before anything else: the config files' contents, the
    env file's and the values docker's own environment takes (processingjobconfig.json holds
    the Environment too), which must not be in an argv: every local user of the host can
    read those (/proc/PID/cmdline). A line of byte counts (each file of `plan.files` in
    order, then the env file, then each value of `plan.inherited`, UTF-8), then the bytes,
    then a newline (the session tells a stdin cut short by its absence: no `wc` to count)."""
    pieces = [*plan.files.values(), plan.environment, *(value.encode() for value in plan.inherited.values())]
    return " ".join(str(len(piece)) for piece in pieces).encode() + b"\n" + b"".join(pieces) + b"\n"


def image_use(image_id: str) -> bytes:
    """The session's image step: the host has the image (present, or pushed): this ID."""
    return f"use {image_id} 0\n".encode()


def image_try(name: str) -> bytes:
    """The session's image step: the host's image `name` if it has one (present beats pull);
    else it says `image-missing` and waits for `image_pull` (or abort)."""
    return f"try {name} 0\n".encode()


def image_made(image_id: str, uid: str) -> bytes:
    """The session's image step: the controller created the container from `image_id`
    through the engine's API; it runs as `uid` (digits; `-`: a user name the session looks up
    in the container's /etc/passwd)."""
    return f"made {image_id} {uid}\n".encode()


def image_pull(reference: str, docker_config: bytes) -> bytes:
    """The session's image step: pull `reference` unless the host has it, with these
    registry credentials (a Docker client config; empty for none) for that pull only."""
    return f"pull {reference} {len(docker_config)}\n".encode() + docker_config


def resume(plan: HostPlan, offset: int, docker_timeout: int, *, api: bool = False) -> list[str]:
    """A session for this run's container, already started: its log from byte `offset` on,
    its exit, then clean / keep as in `session`. `api`: the controller follows the container
    through the engine's API and says ENDED (supervise.sh's await_end)."""
    args = [plan.container, plan.job_dir, plan.job_parent, plan.message_file, RUN_LABEL, plan.run_id, str(offset),
            "api" if api else "script"]
    return _with_docker(plan.docker, "resume", args, docker_timeout)


def stop(plan: HostPlan) -> list[str]:
    """SIGINT, then SIGKILL after the grace: the container was created with both."""
    return [*plan.docker, "stop", plan.container]


def kill(plan: HostPlan) -> list[str]:
    return [*plan.docker, "kill", plan.container]


def cleanup(plan: HostPlan, keep: bool, docker_timeout: int, *, started: bool = True) -> list[str]:
    """Remove this run's container and (unless `keep`) its job directory; idempotent. For
    hosts whose session did not get to clean up itself. When docker does not answer in time
    and the container was `started` (it may run on), everything stays for `fleet gc`
    (status 3)."""
    args = [plan.container, plan.job_dir, plan.job_parent, plan.run_file, RUN_LABEL, plan.run_id,
            "keep" if keep else "remove", "started" if started else "unstarted"]
    return _with_docker(plan.docker, "cleanup", args, docker_timeout)


@dataclass
class SessionReport:
    """What a session has said on stderr so far, parsed as it arrives. The host is less
    trusted than the controller: whatever it sends, memory stays bounded (a line is cut at
    LINE_LIMIT, docker's words keep their last SAID_LIMIT bytes, a message its first
    MESSAGE_LIMIT, the events listed EVENTS_LIMIT)."""

    # written, image-missing, prepared, placed (API: inputs in place, to start), started, exited, cleaned
    events: list[str] = field(default_factory=list)
    image: str | None = None  # the ID of the image the container is created from
    image_how: str = ""  # present | pulled
    exit_code: int | None = None
    message: bytes | None = None
    # the engine the session's docker CLI talks to, where its login tells (`fleet:written
    # cli=unix://PATH`): an engine reached at PATH through the API is that CLI's
    # (fleet/runtime/creator.py); None: unknown
    cli_engine: str | None = None
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
                self.message = ((self.message or b"") + take)[:MESSAGE_LIMIT]
                self._message_left -= len(take)
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > LINE_LIMIT:  # a line without end: docker's words, cut
                    self._say(bytes(self._buffer[:LINE_LIMIT]) + b" [cut]\n")
                    self._buffer.clear()
                break
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if line.startswith(b"fleet:exit-code:"):
                self.exit_code = _int(line.removeprefix(b"fleet:exit-code:"))
            elif line.startswith(b"fleet:image "):
                image, _, how = line.removeprefix(b"fleet:image ")[:100].decode(errors="replace").partition(" ")
                self.image, self.image_how = image, how
            elif line.startswith(b"fleet:message:"):
                # The script sends at most MESSAGE_LIMIT bytes; a bigger or negative count is
                # read (up to the limit) and never trusted beyond it.
                self._message_left = min(max(_int(line.removeprefix(b"fleet:message:")) or 0, 0), MESSAGE_LIMIT)
                self.message = b""
            elif line.startswith(b"fleet:written cli="):  # written; the engine its docker CLI talks to
                self.cli_engine = line.removeprefix(b"fleet:written cli=")[:CLI_ENGINE_LIMIT].decode(errors="replace")
                new += self._event(b"fleet:written")
            elif line in (b"fleet:written", b"fleet:image-missing", b"fleet:prepared", b"fleet:placed",
                          b"fleet:started", b"fleet:exited", b"fleet:cleaned"):
                new += self._event(line)
            else:
                self._say(line[:LINE_LIMIT] + b"\n")
        return new

    def _event(self, line: bytes) -> list[str]:
        event = line.decode().removeprefix("fleet:")
        if len(self.events) < EVENTS_LIMIT:
            self.events.append(event)
        return [event]

    def _say(self, words: bytes) -> None:
        self.said += words
        if len(self.said) > SAID_LIMIT:
            del self.said[:len(self.said) - SAID_LIMIT]

    def resumed(self) -> None:
        """A new session command follows a lost one: what the old one half-said is dropped."""
        self._buffer.clear()
        self._message_left = 0

    @property
    def errors(self) -> str:
        return (self.said + self._buffer).decode(errors="replace").strip()


LINE_LIMIT = 65536  # bytes of one stderr line kept
CLI_ENGINE_LIMIT = 4096  # bytes of the CLI's engine address kept (a socket's path)
SAID_LIMIT = 65536  # bytes of docker's words kept (the last ones: errors come at the end)
MESSAGE_LIMIT = 1024  # /opt/ml/output/message: the script sends its first 1 KB
EVENTS_LIMIT = 100  # a session says a handful (resumed sessions say `started` again)


def _int(text: bytes) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
