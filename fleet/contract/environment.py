"""How each Environment value reaches the container, and which values cannot.

The values are often secrets: never in an argv (every local user of a host reads every
process's /proc/PID/cmdline), never in a file another user can read. Two routes:

- docker's env file (`--env-file`, 0600, removed right after `docker create`): one
  `KEY=VALUE` line each, VALUE taken verbatim. A line cannot hold a newline, and docker's
  line reader drops a carriage return that ends one: those values take the other route,
- docker's own environment: the argv says `--env KEY` (the name alone) and docker takes the
  value from its environment, which the host session sets for that one docker process from
  a private file. /proc/PID/environ is readable by the process's own user only. The program
  behind the host's docker command reads some variables itself (`read_by_docker`): such a
  key would steer docker, not just the container, and is refused on this route.

A later change creates containers through the engine's HTTP API (JSON), where every value is
simply a string; this module then shrinks to the NUL rule.
"""

from __future__ import annotations

import re

# Who reads what, among the variables of the process that runs the docker command: the
# docker CLI (a Go program, maybe behind a script or ssh) or Podman. A name not listed here
# steers neither (the ones that matter, not every variable some library might read).
_READ_BY_DOCKER = [(re.compile(pattern), reader) for pattern, reader in [
    (r"DOCKER_\w*", "the docker CLI reads DOCKER_* (DOCKER_HOST, DOCKER_CONFIG, DOCKER_CONTEXT, ...)"),
    (r"HOME|PATH|TMPDIR",
     "the docker CLI finds its config under HOME, its plugins and credential helpers on PATH"),
    (r"(HTTPS?|ALL|NO)_PROXY|(https?|all|no)_proxy|REQUEST_METHOD",
     "docker's HTTP client reads the proxy variables, in either case"),
    (r"SSL_CERT_(FILE|DIR)", "docker's TLS reads its CA certificates from SSL_CERT_FILE and SSL_CERT_DIR"),
    (r"GO(DEBUG|GC|MAXPROCS|MEMLIMIT|TRACEBACK)", "docker is a Go program, whose runtime reads it"),
    (r"OTEL_\w*", "the docker CLI sends its telemetry where OTEL_* says"),
    (r"LD_\w*", "the dynamic loader reads LD_* before any program runs"),
    (r"(CONTAINERS|_CONTAINERS|CONTAINER|PODMAN|BUILDAH)_\w*|STORAGE_(DRIVER|OPTS)|REGISTRY_AUTH_FILE"
     r"|XDG_\w*|NOTIFY_SOCKET", "Podman (a host's docker command may be Podman) reads it"),
    (r"ENV|BASH_ENV|IFS|SHELLOPTS|BASHOPTS|PS4",
     "a shell reads it (a host's docker command may be a script, as podman-docker's is)"),
    (r"SSH_\w*", "ssh reads it (docker reaches an ssh:// DOCKER_HOST through ssh)"),
]]


def env_file_cannot(value: str) -> str | None:
    """Why docker's env file cannot hold `value` as it is (docker's line reader ends a line
    at a newline and drops a carriage return ending one), or None."""
    if "\n" in value:
        return "contains a newline"
    if value.endswith("\r"):
        return "ends with a carriage return"
    return None


def env_file_carries(value: str) -> bool:
    return env_file_cannot(value) is None


def read_by_docker(key: str) -> str | None:
    """Why the docker command itself reads the variable `key` (so a value for the container
    cannot go through docker's environment under that name), or None."""
    for pattern, reader in _READ_BY_DOCKER:
        if pattern.fullmatch(key):
            return reader
    return None


def value_problem(key: str, value: str) -> str | None:
    """Why the value of `key` cannot reach the container, or None."""
    if "\0" in value:
        return "contains a NUL character, which no process environment can hold"
    if re.search(r"[\ud800-\udfff]", value):
        return "is not valid Unicode (it holds a lone surrogate), which has no bytes to pass on"
    what = env_file_cannot(value)
    if what:
        reader = read_by_docker(key)
        if reader:
            return (f"{what}: docker's env file cannot carry it, so it would go through the environment "
                    f"of the docker command, and {reader}: it would steer docker itself (fleet never puts "
                    f"Environment values on a command line, where every local user could read them)")
    return None


def split(environment: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(the values docker's env file carries, the values that go through docker's own
    environment), each in the request's order."""
    in_file: dict[str, str] = {}
    inherited: dict[str, str] = {}
    for key, value in (environment or {}).items():
        (in_file if env_file_carries(value) else inherited)[key] = value
    return in_file, inherited

