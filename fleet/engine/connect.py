"""How fleet reaches a host's engine API, and which way `fleet check` reports.

    socket PATH            SSH: a direct-streamlocal channel of the host's one connection to
                           the engine's socket (no command, no shell on the host); local: the
                           socket itself
    dial-stdio (WHY)       `docker system dial-stdio` (fleet/host/engine-dial.sh) on one exec
                           channel, with the inventory's docker command (`sudo docker` too):
                           where sshd refuses to forward (`restrict` / `no-port-forwarding`
                           keys, AllowStreamLocalForwarding no), where nothing listens at the
                           path, a socket only root may open, a docker command through sudo
    scripts (WHY)          neither answered as an engine (an old CLI without dial-stdio, srun):
                           the host scripts do the work, as before

The socket's engine must be the one the host's docker command talks to (its user's login may
set DOCKER_HOST, a docker context, to another engine; an inventory's engine_socket may name
another daemon): once per host and run, unless the docker command names the socket itself
(`docker -H unix://P`) or the caller checks it its own way (cli_check=False: the session,
whose container, created by the docker command, must be the one the API finds),
`_another_engine` asks the docker command (one exec channel,
fleet/host/engine-id.sh; none where a script that ran anyway said it: cli_engine_said, as
`fleet check`'s does) and compares with the API's /info. Docker: the engine ID
and its root dir (Docker 20.10's ID is its trust key's, /etc/docker/key.json: daemons of one
machine share it; two daemons never share a root). Podman: its compat /info makes a new ID
up at every call (pkg/api/handlers/compat/info.go: uuid.New()), so the storage's graph root
(DockerRootDir; `podman info`'s .Store.GraphRoot), which tells a rootful Podman from a
rootless one and from one with another --root. Where they differ, the host uses dial-stdio
(the docker command's engine by construction), and `fleet check` says why. Its cost, measured
on the bed (docker20, median of 8, one SSH connection each): 50 ms of host CPU against 20 ms
for `true`, as much as a `docker version`: the CLI's start is most of it. The session runs
the docker CLI anyway: asking it there would save the channel and most of the 30 ms.

OpenSSH answers "open failed" (SSH2_OPEN_CONNECT_FAILED) whether forwarding is disabled, the
socket is missing, or connect() was denied: the dial script's first line says what is at
the path (engine-dial.sh), which tells them apart.

`engine_plan` is pure (which socket, from the inventory); `engine_for` acts, once per
transport (the answer is kept for the connection's life). FLEET_ENGINE_API=0 turns the API
off: every host uses its scripts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
import weakref
from dataclasses import dataclass

from fleet import host as scripts
from fleet.engine.client import Engine, EngineFailed
from fleet.engine.http import ByteStream
from fleet.errors import FleetError
from fleet.inventory import PRIVILEGE_PROGRAMS, Host
from fleet.transport.base import STDERR_TAIL, RemoteProcess, Transport, drain

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"  # rootful Podman's API service (podman.socket)
LINE_LIMIT = 200  # bytes of the dial script's first line

# What the dial script found at the socket → why the socket was not used.
SOCKET_STATES = {
    "open": "sshd forwards no socket to this key or host",
    "denied": "{socket} is not this user's to open",
    "missing": "no socket {socket}",
    "none": "docker: {docker}",
}


@dataclass(frozen=True)
class EnginePlan:
    """Where a host's engine socket is, as the inventory says (pure)."""

    socket: str | None  # None: go straight to dial-stdio
    why: str = ""  # why no socket is tried
    # The docker command itself names the socket (`docker -H unix://P`, `env DOCKER_HOST=...`):
    # it talks to that engine whatever the login sets, so nothing to compare.
    named_by_command: bool = False


def engine_plan(host: Host) -> EnginePlan:
    """The socket to try: the inventory's engine_socket; else what the docker command names
    (`env DOCKER_HOST=unix://P docker`, `docker -H unix://P`, `podman --url unix://P`);
    else the program's default. A docker command through sudo (or naming a tcp:// or
    ssh:// engine) tries no socket: the CLI knows the way, dial-stdio follows it."""
    if host.engine_socket:
        return EnginePlan(host.engine_socket)
    words = list(host.docker_command)
    named: str | None = None
    if words and posixpath.basename(words[0]) == "env":
        words = words[1:]
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        if key in ("DOCKER_HOST", "CONTAINER_HOST"):
            named = value
    if not words:
        return EnginePlan(None, f"docker: {host.docker}")
    program = posixpath.basename(words[0])
    if program in PRIVILEGE_PROGRAMS:
        return EnginePlan(None, f"docker: {host.docker}")
    for index, word in enumerate(words[1:], 1):
        if word in ("-H", "--host", "--url") and index + 1 < len(words):
            named = words[index + 1]
        elif word.startswith(("--host=", "--url=")):
            named = word.partition("=")[2]
    if named is not None:
        if named.startswith("unix://"):
            return EnginePlan(named.removeprefix("unix://"), named_by_command=True)
        return EnginePlan(None, f"the engine is at {named}")
    return EnginePlan(PODMAN_SOCKET if program == "podman" else DOCKER_SOCKET)


class _DialStream:
    """`fleet-engine-dial` on one exec channel as a byte stream (its stdout and stdin). At
    the end of stdout a failed command's status and last words are the error."""

    def __init__(self, process: RemoteProcess, label: str) -> None:
        self._process = process
        self._label = label
        self._prefix = b""

    async def first_line(self) -> str:
        """The dial script's `fleet:socket STATE` line."""
        line = b""
        while b"\n" not in line:
            chunk = await self.read()
            if not chunk or len(line) > LINE_LIMIT:
                raise ConnectionResetError(f"engine-dial said {line[:LINE_LIMIT]!r}")
            line += chunk
        first, _, self._prefix = line.partition(b"\n")
        return first.decode(errors="replace")

    async def read(self) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        chunk = await self._process.read_stdout()
        if chunk:
            return chunk
        try:
            async with asyncio.timeout(2):
                said = (await drain(self._process.read_stderr, keep=STDERR_TAIL)).decode(errors="replace").strip()
                status = await self._process.wait()
        except TimeoutError:
            return b""
        if status != 0:
            raise ConnectionResetError(f"docker system dial-stdio ended (status {status}): {said[-500:]}")
        return b""

    async def write(self, data: bytes) -> None:
        await self._process.write(data)

    def close(self) -> None:
        self._process.close()


async def _dial(transport: Transport, host: Host, socket: str, docker_timeout: int) -> tuple[_DialStream, str]:
    process = await transport.start(scripts.engine_dial(host.docker_command, socket, docker_timeout))
    stream = _DialStream(process, transport.label)
    try:
        async with asyncio.timeout(docker_timeout):
            line = await stream.first_line()
    except BaseException:
        stream.close()
        raise
    return stream, line.removeprefix("fleet:socket ").strip()


_IDENTITY = re.compile(r"id=(\S*) root=(.*)")
# What a script that ran anyway said of the docker command's engine (cli_engine_said): the
# comparison then needs no channel of its own.
_said: weakref.WeakKeyDictionary[Transport, str] = weakref.WeakKeyDictionary()


def cli_engine_said(transport: Transport, identity: str) -> None:
    """Keep what a host script that runs the docker command anyway printed of its engine
    (checks.sh's engine_identity: `id=ID root=DIR`; fleet check's check.sh), for the
    comparison `engine_for` makes: then it starts no command of its own."""
    _said[transport] = identity


def _identity(engine_id: str, root: str, podman: bool) -> tuple[str, str]:
    """What tells two engines apart (see the module's docstring), and its words."""
    if podman or not engine_id:
        return root, f"storage {root}"
    return f"{engine_id} {root}", f"ID {engine_id}, root {root}"


async def _another_engine(transport: Transport, host: Host, engine: Engine, socket: str,
                          docker_timeout: int) -> str | None:
    """Why the engine at `socket` is not the one the host's docker command talks to, or
    None when it is, or when the docker command cannot say (then the socket's engine is the
    best there is: dial-stdio and the scripts would need that very command)."""
    said = _said.pop(transport, None)
    try:
        async with asyncio.timeout(2 * docker_timeout + 10):  # two bounded docker calls at most
            if said is None:
                result = await transport.run(scripts.engine_id(host.docker_command, docker_timeout))
                if result.exit_status != 0:
                    log.debug("%s: which engine `%s` talks to is unknown (status %d)", transport.label,
                              host.docker, result.exit_status)
                    return None
                said = result.stdout[:LINE_LIMIT].decode(errors="replace")
            found = _IDENTITY.fullmatch(said.strip())
            if found is None:
                log.debug("%s: which engine `%s` talks to is unknown: %r", transport.label, host.docker, said)
                return None
            info = await engine.info()
    except (TimeoutError, FleetError) as exc:
        log.debug("%s: which engine `%s` talks to is unknown: %s", transport.label, host.docker, exc)
        return None
    assert engine.server is not None
    cli, cli_words = _identity(found[1], found[2], engine.server.podman)
    api, api_words = _identity(str(info.get("ID") or ""), str(info.get("DockerRootDir") or ""),
                               engine.server.podman)
    if cli == api:
        return None
    return (f"{socket} is not the engine `{host.docker}` talks to ({api_words}, not {cli_words}: a DOCKER_HOST "
            f"or docker context of the login?)")


_engines: weakref.WeakKeyDictionary[Transport, Engine | str] = weakref.WeakKeyDictionary()
# Socket engines opened without the comparison (engine_for(cli_check=False)): the socket, to
# compare when a caller needs it; and the sockets found to be another engine than the CLI's.
_unchecked: weakref.WeakKeyDictionary[Transport, str] = weakref.WeakKeyDictionary()
_another: weakref.WeakKeyDictionary[Transport, str] = weakref.WeakKeyDictionary()
# One opening at a time per transport: the session and the image probe may ask at once.
_opening: weakref.WeakKeyDictionary[Transport, asyncio.Lock] = weakref.WeakKeyDictionary()


def engine_path(transport: Transport) -> str | None:
    """How `engine_for` reached this transport's engine (`socket PATH`, `dial-stdio (WHY)`),
    or why it did not (`scripts (WHY)`); None when it was not asked."""
    found = _engines.get(transport)
    return found.path if isinstance(found, Engine) else found


async def engine_for(transport: Transport, host: Host, docker_timeout: int, *,
                     cli_check: bool = True) -> Engine | None:
    """The host's engine API, reached as the module says; None where only its scripts work
    (the reason is kept: engine_path). Asked once per transport. An engine that answers
    neither way in time raises EngineFailed (docker did not answer): its scripts would wait
    for it as long, and say the same."""
    lock = _opening.setdefault(transport, asyncio.Lock())
    async with lock:
        found = await _engine_for(transport, host, docker_timeout, cli_check)
        socket = _unchecked.get(transport)
        if found is None or not cli_check or socket is None:
            return found
        # Opened unchecked by a caller that checks otherwise (the session: its container must
        # be there): compared now, reopened the CLI's way if it is another engine.
        del _unchecked[transport]
        other = await _another_engine(transport, host, found, socket, docker_timeout)
        if other is None:
            return found
        log.info("%s: %s", transport.label, other)
        found.close()
        _another[transport] = other
        del _engines[transport]
        return await _engine_for(transport, host, docker_timeout, cli_check)


async def _engine_for(transport: Transport, host: Host, docker_timeout: int, cli_check: bool) -> Engine | None:
    found = _engines.get(transport)
    if found is None:
        try:
            found = await _open(transport, host, docker_timeout, cli_check)
        except EngineFailed as exc:
            if exc.timed_out:
                raise
            found = f"scripts ({exc.message.removeprefix(transport.label + ': ')})"
        except FleetError as exc:
            found = f"scripts ({exc.message.removeprefix(transport.label + ': ')})"
        if isinstance(found, str):
            log.debug("%s: engine API unavailable: %s", transport.label, found)
        _engines[transport] = found
    return found if isinstance(found, Engine) else None


async def _open(transport: Transport, host: Host, docker_timeout: int, cli_check: bool) -> Engine | str:
    if os.environ.get("FLEET_ENGINE_API", "1") == "0":
        return "scripts (FLEET_ENGINE_API=0)"
    if host.transport == "srun":
        return "scripts (srun)"  # a job step per call would cost more than the scripts
    timeout = float(docker_timeout)
    plan = engine_plan(host)
    why = plan.why
    if transport in _another:
        why = _another[transport]
    elif plan.socket is not None:
        socket = plan.socket
        try:
            async with asyncio.timeout(timeout):
                first: ByteStream | None = await transport.open_socket(socket)
        except (OSError, TimeoutError) as exc:
            log.debug("%s: socket %s not opened: %s", transport.label, socket, exc)
            first = None
        if first is not None:
            opened = first

            async def socket_connector() -> ByteStream:
                nonlocal first
                if first is not None:
                    stream, first = first, None
                    return stream
                return await transport.open_socket(socket)
            try:
                engine = await Engine.open(socket_connector, transport.label, timeout=timeout,
                                           path=f"socket {socket}")
            except EngineFailed as exc:  # something else listens there: try the CLI's way
                opened.close()
                if exc.timed_out:
                    raise
                why = f"{socket} answered not as an engine: {exc.message.removeprefix(transport.label + ': ')}"
            else:
                if not cli_check and not plan.named_by_command:
                    _unchecked[transport] = socket
                    return engine
                try:
                    other = None if plan.named_by_command else await _another_engine(transport, host, engine,
                                                                                    socket, docker_timeout)
                except BaseException:
                    engine.close()
                    raise
                if other is None:
                    return engine
                engine.close()
                log.info("%s: %s", transport.label, other)
                why = other
    try:
        stream, state = await _dial(transport, host, plan.socket or "", docker_timeout)
    except (OSError, TimeoutError) as exc:
        return f"scripts (docker system dial-stdio: {str(exc) or 'no answer'})"
    if not why:
        why = SOCKET_STATES.get(state, f"socket: {state[:40]}").format(socket=plan.socket, docker=host.docker)
    first_dial: ByteStream | None = stream

    async def dial_connector() -> ByteStream:
        nonlocal first_dial
        if first_dial is not None:
            ready, first_dial = first_dial, None
            return ready
        return (await _dial(transport, host, plan.socket or "", docker_timeout))[0]
    try:
        return await Engine.open(dial_connector, transport.label, timeout=timeout, path=f"dial-stdio ({why})")
    except BaseException:
        stream.close()
        raise
