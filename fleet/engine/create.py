"""A host's `docker create` argv (fleet.contract.container) as the engine API's request:
the controller creates the container itself, with no docker CLI on the host (issue 20:
the CLI's start is most of a session's host CPU).

Pure. It knows the options fleet's own argv uses (and their short and `--opt=value`
forms), so an inventory's docker_args made of those keep their meaning; any other word
(`--gpus`, `--user`, `-t`, `--shm-size`, ...) gives None: the host's docker command creates
that container, as before, and means what it always meant.

The Environment's values come from the plan (the env file's content and the values it
cannot carry): they travel over the SSH connection to the engine's socket, inside the
request's body, and never touch the host's disk nor an argv. `Env` lists the env file's
lines first, then the `--env` words in their order: the docker CLI's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# option → the field it sets (every one takes a value)
_VALUED = {
    "--name": "name", "--label": "label", "-l": "label", "--hostname": "hostname", "-h": "hostname",
    "--stop-signal": "stop_signal", "--stop-timeout": "stop_timeout", "--network": "network",
    "--net": "network", "--add-host": "add_host", "--volume": "volume", "-v": "volume",
    "--env-file": "env_file", "--env": "env", "-e": "env", "--entrypoint": "entrypoint",
}


@dataclass
class _Parsed:
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    stop_signal: str | None = None
    stop_timeout: int | None = None
    network: str | None = None
    extra_hosts: list[str] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    env_files: int = 0
    env: list[str] = field(default_factory=list)
    entrypoint: str | None = None


def _options(words: list[str]) -> tuple[list[tuple[str, str]], list[str]] | None:
    """(option, value) pairs and the words from the image on; None at an unknown option."""
    pairs = []
    index = 0
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        option, equals, value = word.partition("=")
        if option not in _VALUED:
            return None
        if not equals:
            if index + 1 >= len(words):
                return None
            value = words[index + 1]
            index += 1
        pairs.append((_VALUED[option], value))
        index += 1
    rest = words[index:]
    return (pairs, rest) if rest else None


def _apply(parsed: _Parsed, key: str, value: str, environment: list[str], inherited: dict[str, str]) -> bool:
    if key in ("name", "hostname", "stop_signal", "network", "entrypoint"):
        setattr(parsed, key, value)
    elif key == "label":
        label, _, text = value.partition("=")
        parsed.labels[label] = text
    elif key == "stop_timeout":
        if not value.lstrip("-").isdigit():
            return False
        parsed.stop_timeout = int(value)
    elif key == "add_host":
        parsed.extra_hosts.append(value)
    elif key == "volume":
        if not value.startswith("/"):
            return False  # a named or anonymous volume: the CLI's way
        parsed.binds.append(value)
    elif key == "env_file":
        parsed.env_files += 1
        parsed.env += environment
    elif key == "env":
        if "=" in value:
            parsed.env.append(value)
        elif value in inherited:
            parsed.env.append(f"{value}={inherited[value]}")
        else:
            return False  # the docker process's own environment: the CLI's way
    return True


def env_lines(environment: bytes) -> list[str] | None:
    """The env file fleet wrote (fleet.contract.container.env_file_content: `KEY=VALUE` a
    line, VALUE verbatim) as the API's Env; None if it is not such a file."""
    try:
        text = environment.decode()
    except UnicodeDecodeError:
        return None
    if not text:
        return []
    if not text.endswith("\n"):
        return None
    lines = text[:-1].split("\n")
    return lines if all("=" in line and not line.startswith("=") for line in lines) else None


def create_request(argv: list[str], *, image_at: int, image: str, environment: bytes,
                   inherited: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    """(the container's name, POST /containers/create's body) for `argv` (`create` and its
    words, as fleet.plan.HostPlan.docker_create), word `image_at` replaced by `image` (the
    engine's ID of the image); None where the API request would not mean what the argv
    means (an option this module does not know): the docker CLI creates it."""
    if not argv or argv[0] != "create" or not 0 < image_at < len(argv):
        return None
    env = env_lines(environment)
    split = _options(argv[1:image_at + 1])
    if env is None or split is None or len(split[1]) != 1:
        return None
    parsed = _Parsed()
    for key, value in split[0]:
        if not _apply(parsed, key, value, env, inherited):
            return None
    if not parsed.name or parsed.env_files > 1:
        return None
    command = argv[image_at + 1:]
    config: dict[str, Any] = {
        "Image": image,
        "AttachStdout": True,  # as `docker create` sets them (no -a, no -d)
        "AttachStderr": True,
        "Labels": parsed.labels,
        "Env": parsed.env,
        "HostConfig": {"Binds": parsed.binds, "ExtraHosts": parsed.extra_hosts,
                       "NetworkMode": parsed.network or "default"},
    }
    if parsed.hostname is not None:
        config["Hostname"] = parsed.hostname
    if parsed.stop_signal is not None:
        config["StopSignal"] = parsed.stop_signal
    if parsed.stop_timeout is not None:
        config["StopTimeout"] = parsed.stop_timeout
    if parsed.entrypoint is not None:
        # With an entrypoint the engine drops the image's CMD (the contract's rule), as the CLI's.
        config["Entrypoint"] = [parsed.entrypoint]
    if command:
        config["Cmd"] = command
    return parsed.name, config
