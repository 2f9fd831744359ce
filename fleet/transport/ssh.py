"""The SSH transport (asyncssh): one connection per host, one channel per command.

asyncssh itself is changed where it costs fleet's bulk data too much, for the audited asyncssh
only and from the first connection on: fleet.transport.asyncssh_patches."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import ipaddress
import logging
import os
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.config import SSHClientConfig

from fleet.errors import HostError
from fleet.inventory import SshHost
from fleet.transport import asyncssh_patches
from fleet.transport.base import READ_SIZE, RemoteProcess, SocketStream, Transport, command_name

log = logging.getLogger(__name__)

# AES-GCM first: it moves bulk data fastest with asyncssh; the rest are asyncssh's defaults.
PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                     "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"]

# A connection that stops answering (a link down) is given up after about
# KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds of silence; the supervisor then reconnects.
KEEPALIVE_INTERVAL = 3
KEEPALIVE_COUNT = 3


# Where neither the inventory nor ~/.ssh/config names them: OpenSSH's defaults.
USER_CONFIG = "~/.ssh/config"
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# OpenSSH's StrictHostKeyChecking values; `ask` (its default) is strict: fleet cannot ask.
STRICT_HOST_KEY_CHECKING = {"yes": "strict", "ask": "strict", "accept-new": "accept-new",
                            "no": "off", "off": "off"}
MAX_JUMPS = 8  # jump hosts behind jump hosts (their own ProxyJump): a loop ends here


class SSHConfig(SSHClientConfig):
    """~/.ssh/config for one destination, as asyncssh reads it, plus what asyncssh skips:
    StrictHostKeyChecking, and %-tokens in the known-hosts files."""

    _handlers = {**SSHClientConfig._handlers,
                 "stricthostkeychecking": ("StrictHostKeyChecking", SSHClientConfig._set_string)}
    _percent_expand = {*SSHClientConfig._percent_expand, "UserKnownHostsFile", "GlobalKnownHostsFile"}


def config_paths() -> list[Path]:
    """The user's SSH config, as asyncssh and `ssh` find it (HOME at the time of the call)."""
    path = Path(USER_CONFIG).expanduser()
    return [path] if os.access(path, os.R_OK) else []


def load_config(name: str, *, user: str | None = None, port: int | None = None,
                paths: Sequence[Path] | None = None) -> SSHConfig:
    """The SSH config's settings for destination `name` (`Host` and `Match` blocks applied)."""
    config = SSHConfig.load(None, list(config_paths() if paths is None else paths), False, False, False,
                            getpass.getuser(), user or (), name, port or ())
    assert isinstance(config, SSHConfig)
    return config


@dataclass(frozen=True)
class HostKeys:
    """How a host's key is checked: the inventory's values, else the SSH config's, else
    OpenSSH's defaults."""

    checking: str  # strict | accept-new | off
    files: tuple[Path, ...]  # the known-hosts files trusted: the user's, then the global ones
    record: Path | None  # where accept-new writes a new host's key (the first user file)

    def trusted(self) -> asyncssh.SSHKnownHosts:
        """The keys of every readable file. An object, not bytes: asyncssh reads empty
        known-hosts data as "use ~/.ssh/known_hosts". Parsed once while the files stay the
        same (size and mtime): 100 hosts listed in one file cost 1.7 ms of parsing per
        connection, 0.17 s of CPU for a 100-host job otherwise (measured)."""
        stamp = tuple((path, _stamp(path)) for path in self.files)
        known = _parsed.get(stamp)
        if known is None:
            known = asyncssh.import_known_hosts(b"".join(_read(path) + b"\n" for path in self.files).decode())
            _parsed.clear()  # the files of one job: one entry is enough
            _parsed[stamp] = known
        return known


_parsed: dict[tuple[tuple[Path, tuple[int, int] | None], ...], asyncssh.SSHKnownHosts] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return b""


def host_keys(config: SSHClientConfig, known_hosts: str | None = None,
              host_key_checking: str | None = None) -> HostKeys:
    """The inventory's `known_hosts` and `host_key_checking` where given, as `ssh -o
    UserKnownHostsFile=... -o StrictHostKeyChecking=...`; the rest from the SSH config."""
    checking = host_key_checking
    if checking is None:
        value = config.get("StrictHostKeyChecking")
        checking = STRICT_HOST_KEY_CHECKING.get(str(value).lower(), "strict") if value else "strict"
    user_files: list[str]
    if known_hosts is not None:
        user_files = [known_hosts]
    else:
        configured = config.get("UserKnownHostsFile")  # [] for `none`
        user_files = list(DEFAULT_USER_KNOWN_HOSTS if configured is None else cast(list[str], configured))
    configured = config.get("GlobalKnownHostsFile")
    global_files = list(DEFAULT_GLOBAL_KNOWN_HOSTS if configured is None else cast(list[str], configured))
    files = tuple(Path(name).expanduser() for name in [*user_files, *global_files])
    return HostKeys(checking, files, Path(user_files[0]).expanduser() if user_files else None)


@dataclass(frozen=True)
class ConnectionPlan:
    """How one SSH connection is made: asyncssh's options and what fleet does around them."""

    options: dict[str, Any]  # for asyncssh.connect, but known_hosts, client_factory and tunnel
    host_keys: HostKeys
    hostname: str  # where the connection finally goes: the config's HostName, else the name
    jump: str | None  # the config's ProxyJump: user@host:port,... (fleet opens these itself)
    proxied: bool  # through a jump host or a ProxyCommand: the socket's peer is not the host


def connection_plan(name: str, config: SSHClientConfig, *, timeout: float, user: str | None = None,
                    port: int | None = None, identity_file: str | None = None,
                    known_hosts: str | None = None, host_key_checking: str | None = None) -> ConnectionPlan:
    """The connection to `name`, from the inventory's values (None: not set) and the SSH
    config's settings for it. Pure: tested without a network."""
    options: dict[str, Any] = {
        "connect_timeout": timeout,
        "encryption_algs": PREFERRED_CIPHERS,
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT,
        # Whatever the SSH config says: fleet's channels carry tar streams and docker's
        # output, which a TTY would mangle (RequestTTY force), and the hosts get neither
        # the user's agent (ForwardAgent) nor their X display (ForwardX11Trusted).
        "agent_forwarding": False,
        "x11_forwarding": False,
        "request_pty": False,
    }
    if port is not None:
        options["port"] = port
    if user:
        options["username"] = user
    if identity_file:
        options["client_keys"] = [str(Path(identity_file).expanduser())]
    proxy_command = config.get("ProxyCommand")
    jump = None if proxy_command else cast("str | None", config.get("ProxyJump"))
    return ConnectionPlan(options, host_keys(config, known_hosts, host_key_checking),
                          cast(str, config.get("Hostname", name)), jump, bool(jump or proxy_command))


def host_plan(host: SshHost, config: SSHClientConfig, timeout: float | None = None) -> ConnectionPlan:
    """The connection to an inventory host: its values win over the SSH config's."""
    return connection_plan(
        host.address, config, timeout=min(host.connect_timeout, timeout) if timeout else host.connect_timeout,
        user=host.user, port=host.port, identity_file=host.identity_file,
        known_hosts=host.known_hosts, host_key_checking=host.host_key_checking)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# host_key_checking off is said once per run, in one line naming the hosts: the names noted
# while connections are being made, said when the first of them is made (or fails).
_unchecked_noted: set[str] = set()
_unchecked_pending: list[str] = []


def _note_unchecked(name: str) -> None:
    if name not in _unchecked_noted:
        _unchecked_noted.add(name)
        _unchecked_pending.append(name)


def _say_unchecked() -> None:
    if _unchecked_pending:
        # WARNING: printed without --debug (Python's last-resort handler, on stderr)
        log.warning("fleet: warning: host keys are not checked (host_key_checking: off) for %s: "
                    "anyone on the network path can pose as %s", ", ".join(_unchecked_pending),
                    "it" if len(_unchecked_pending) == 1 else "them")
        _unchecked_pending.clear()


class _AcceptNewClient(asyncssh.SSHClient):
    """host_key_checking: accept-new. A host with no known key is trusted and recorded;
    a host whose known key differs is refused, as OpenSSH's StrictHostKeyChecking=accept-new."""

    def __init__(self, keys: HostKeys) -> None:
        self._keys = keys

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        known = asyncssh.match_known_hosts(self._keys.trusted(), host, addr, port if port != 22 else None)
        if known[0]:  # the host has keys, none of them this one
            return False
        if self._keys.record is None:  # UserKnownHostsFile none: trusted, written nowhere
            return True
        name = host if port == 22 else f"[{host}]:{port}"
        self._keys.record.parent.mkdir(parents=True, exist_ok=True)
        with open(self._keys.record, "a") as file:
            file.write(f"{name} {key.export_public_key().decode().strip()}\n")
        return True


class _SSHProcess(RemoteProcess):
    """One exec channel."""

    def __init__(self, process: asyncssh.SSHClientProcess, label: str, name: str) -> None:
        self._process = process
        self._label = label
        self._name = name  # the command's name, for the log (command_name)
        self._lost = False
        self._ended = False

    async def _guard(self, work):
        try:
            return await work
        except (asyncssh.Error, OSError) as exc:
            if not self._lost:
                log.debug("%s: channel %s lost: %s", self._label, self._name, exc)
            self._lost = True
            raise HostError(self._label, f"lost the SSH connection: {exc}") from exc

    @property
    def lost(self) -> bool:
        return self._lost

    async def read_stdout(self) -> bytes:
        return await self._guard(self._process.stdout.read(READ_SIZE))

    async def read_stderr(self) -> bytes:
        return await self._guard(self._process.stderr.read(READ_SIZE))

    async def write(self, data: bytes) -> None:
        self._process.stdin.write(data)
        await self._guard(self._process.stdin.drain())

    def buffer(self, high: int) -> None:
        self._process.channel.set_write_buffer_limits(high=high, low=high // 4)

    def close_stdin(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
            self._process.stdin.write_eof()

    async def wait(self) -> int:
        completed = await self._guard(self._process.wait())
        status = completed.exit_status
        if status is None and completed.exit_signal is None:
            self._lost = True  # the channel closed without the command's end
        self._ended = True
        log.debug("%s: channel %s closed: %s", self._label, self._name,
                  "lost (no exit status)" if self._lost else
                  f"status {status}" if completed.exit_signal is None else f"signal {completed.exit_signal[0]}")
        return status if status is not None and status >= 0 else -1

    def close(self) -> None:
        if not self._ended:
            log.debug("%s: channel %s closed before its end", self._label, self._name)
            self._ended = True
        self._process.close()


class SSHTransport(Transport):
    host: SshHost

    def __init__(self, host: SshHost, label: str) -> None:
        super().__init__(host, label)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self._reached = ""  # the IP address the connection reached ("" when unknown)
        self._proxied = False  # through a jump host or a ProxyCommand

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def reconnect(self, timeout: float) -> None:
        async with self._connecting:
            if self.connected or self._closed:
                return
            if self._conn is not None:
                self._conn.abort()
                self._conn = None
            log.debug("%s: reconnecting (attempt timeout %g s)", self.label, timeout)
            try:
                await self.connect(timeout)
            except HostError as exc:
                log.debug("%s: reconnecting failed: %s", self.label, exc.message)
                raise

    async def connect(self, timeout: float | None = None) -> None:
        asyncssh_patches.apply()  # once per process, before the first key exchange
        host = self.host
        config = self._config(host.address, host.user, host.port)
        plan = host_plan(host, config, timeout)
        log.debug("%s: connecting to %s (%s) port %d as %s (timeout %g s, host keys: %s%s)", self.label,
                  host.address, plan.hostname, host.port, config.get("User", host.ssh_user),
                  plan.options["connect_timeout"], plan.host_keys.checking,
                  f", through {plan.jump}" if plan.jump else "")
        if plan.host_keys.checking == "off":
            _note_unchecked(self.label)
        jump = None
        try:
            if plan.jump:
                jump = await self._jump(plan.jump, plan.options["connect_timeout"], MAX_JUMPS)
            conn = await self._dial(host.address, plan, config, jump, "")
        except BaseException:
            if jump is not None:
                jump.abort()
            raise
        finally:
            _say_unchecked()
        if jump is not None:
            conn.set_tunnel(jump)  # closing the connection closes its jump hosts'
        asyncssh_patches.coalesce_writes(conn)
        self._conn = conn
        self._proxied = plan.proxied
        self._reached = await self._reached_address(conn, plan, ask=not host.ip)
        log.debug("%s: connected (%s, cipher %s)", self.label, self._reached or "address unknown",
                  conn.get_extra_info("send_cipher"))

    async def _jump(self, spec: str, timeout: float, depth: int) -> asyncssh.SSHClientConnection:
        """The connection to the last jump host of a ProxyJump (`[user@]host[:port],...`),
        each jump host reached as `ssh` reaches it: its own settings in the SSH config
        (its own ProxyJump included), not the inventory host's."""
        if depth == 0:
            raise HostError(self.label, f"more than {MAX_JUMPS} jump hosts (a ProxyJump loop?)")
        conn: asyncssh.SSHClientConnection | None = None
        try:
            for hop in spec.split(","):
                user, _, name = hop.rpartition("@")
                name, _, port = name.partition(":") if not name.startswith("[") else name[1:].partition("]:")
                config = self._config(name, user or None, int(port) if port else None)
                plan = connection_plan(name, config, timeout=timeout, user=user or None,
                                       port=int(port) if port else None)
                if plan.host_keys.checking == "off":
                    _note_unchecked(f"{self.label}'s jump host {name}")
                tunnel = conn
                if tunnel is None and plan.jump:
                    tunnel = await self._jump(plan.jump, timeout, depth - 1)
                try:
                    conn = await self._dial(name, plan, config, tunnel, f"jump host {name}: ")
                except BaseException:
                    if tunnel is not None and tunnel is not conn:
                        tunnel.abort()
                    raise
                if tunnel is not None:
                    conn.set_tunnel(tunnel)
        except ValueError as exc:  # a port that is not a number
            raise HostError(self.label, f"ProxyJump {spec!r} in the SSH config: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        assert conn is not None
        return conn

    def _config(self, name: str, user: str | None, port: int | None) -> SSHConfig:
        try:
            return load_config(name, user=user, port=port)
        except (ValueError, OSError) as exc:  # asyncssh's ConfigParseError is a ValueError
            raise HostError(self.label, f"the SSH config ({USER_CONFIG}): {exc}") from exc

    async def _dial(self, name: str, plan: ConnectionPlan, config: SSHClientConfig,
                    tunnel: asyncssh.SSHClientConnection | None, what: str) -> asyncssh.SSHClientConnection:
        """One SSH connection, through `tunnel` if given (None: straight, never the config's
        ProxyJump, which fleet opened itself); every failure a HostError naming the host."""
        keys = plan.host_keys
        options = dict(plan.options)
        if keys.checking == "off":
            options["known_hosts"] = None
        else:
            options["known_hosts"] = keys.trusted()
            if keys.checking == "accept-new":
                options["client_factory"] = lambda: _AcceptNewClient(keys)
        port = options.get("port") or config.get("Port", 22)
        user = options.get("username") or config.get("User", self.host.ssh_user)
        try:
            return await asyncssh.connect(name, tunnel=tunnel, config=config_paths(), **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            files = ", ".join(str(path) for path in keys.files if path.exists()) or "no known-hosts file"
            raise HostError(self.label, (
                f"{what}SSH host key not verified ({exc.reason}): the host is not in {files} "
                f"or its key changed; check the key, or set host_key_checking in the inventory"
            )) from exc
        except asyncssh.PermissionDenied as exc:
            keys_tried = plan.options.get("client_keys")
            raise HostError(self.label, (
                f"{what}SSH login refused for user {user}" + (f" with key {keys_tried[0]}" if keys_tried else "")
            )) from exc
        except socket.gaierror as exc:
            raise HostError(self.label, f"{what}cannot resolve {plan.hostname}: {exc.strerror}") from exc
        except ConnectionRefusedError as exc:
            raise HostError(self.label, f"{what}connection refused on port {port}") from exc
        except TimeoutError as exc:
            raise HostError(self.label, f"{what}no SSH answer within {plan.options['connect_timeout']:g} s") from exc
        except OSError as exc:
            raise HostError(self.label, f"{what}cannot connect: {exc.strerror or exc}") from exc
        except asyncssh.Error as exc:
            raise HostError(self.label, f"{what}SSH failed: {exc.reason}") from exc

    async def _reached_address(self, conn: asyncssh.SSHClientConnection, plan: ConnectionPlan,
                               ask: bool) -> str:
        """The IP address the connection finally reached ("" when unknown). Through a jump
        host or a ProxyCommand the socket's peer is not the host: the config's HostName
        when it is an address, else the host's own word (sshd's SSH_CONNECTION: client
        address and port, server address and port)."""
        if not plan.proxied:
            peer = conn.get_extra_info("peername")
            return str(peer[0]) if peer and peer[0] else ""
        if _is_ip(plan.hostname):
            return plan.hostname
        if not ask:  # the inventory's ip is used: no round trip for nothing
            return ""
        try:
            result = await conn.run(shlex.join(["printenv", "SSH_CONNECTION"]), request_pty=False,
                                    x11_forwarding=False, timeout=plan.options["connect_timeout"])
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.debug("%s: SSH_CONNECTION not read: %s", self.label, exc)
            return ""
        fields = str(result.stdout or "").split()
        return fields[2] if len(fields) == 4 and _is_ip(fields[2]) else ""

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        command = shlex.join(argv)  # the one place an argv becomes a remote command line
        name = command_name(argv)
        for attempt in (1, 2):
            if self._conn is not None and self._conn.is_closed():  # lost: connect again
                await self.reconnect(self.host.connect_timeout)
            if self._conn is None:
                raise HostError(self.label, "not connected")
            try:
                process = await self._conn.create_process(command, encoding=None, request_pty=False,
                                                          x11_forwarding=False)
            except (asyncssh.Error, OSError) as exc:
                # A connection that was closing (a keepalive gave up on it) refuses channels:
                # once it has closed, connect again and try once more.
                if attempt == 1 and not self._closed and await self._closes_soon():
                    log.debug("%s: channel %s refused by a closing connection (%s); connecting again",
                              self.label, name, exc)
                    continue
                log.debug("%s: channel %s not opened: %s", self.label, name, exc)
                if isinstance(exc, asyncssh.ChannelOpenError):
                    raise HostError(self.label, f"SSH channel refused: {exc.reason}") from exc
                raise HostError(self.label, f"lost the SSH connection: {exc}") from exc
            log.debug("%s: channel %s opened", self.label, name)
            return _SSHProcess(process, self.label, name)
        raise AssertionError("unreachable")

    async def open_socket(self, path: str) -> SocketStream:
        """A direct-streamlocal channel to `path` on the host (`ssh -L LOCAL:PATH`'s channel).
        OpenSSH answers "open failed" whether forwarding is disabled for the key or the
        server (`restrict`, `no-port-forwarding`, `AllowStreamLocalForwarding no`), there is
        no socket, or the user may not open it: fleet.engine.connect tells them apart."""
        if self._conn is not None and self._conn.is_closed():
            await self.reconnect(self.host.connect_timeout)
        if self._conn is None:
            raise HostError(self.label, "not connected")
        try:
            reader, writer = await self._conn.open_unix_connection(path)
        except asyncssh.ChannelOpenError as exc:
            log.debug("%s: socket %s not opened: %s (code %d)", self.label, path, exc.reason, exc.code)
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"sshd: {exc.reason}") from exc
        except asyncssh.Error as exc:
            raise ConnectionResetError(errno.ECONNRESET, f"lost the SSH connection: {exc}") from exc
        return SocketStream(reader, writer, (asyncssh.Error,))

    async def _closes_soon(self) -> bool:
        assert self._conn is not None
        try:
            async with asyncio.timeout(2):
                await self._conn.wait_closed()
        except (TimeoutError, OSError, asyncssh.Error):
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            log.debug("%s: closing the SSH connection", self.label)
            self._conn.close()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                async with asyncio.timeout(5):
                    await self._conn.wait_closed()
            self._conn = None

    @property
    def local_address(self) -> str | None:
        """This machine's address towards the host; None through a jump host or a
        ProxyCommand (the host may not reach back)."""
        if self._conn is None or self._proxied:
            return None
        sock = self._conn.get_extra_info("sockname")
        return sock[0] if sock and sock[0] else None

    @property
    def peer_address(self) -> str:
        """The IP address the connection reached; "" when not known (a jump host or a
        ProxyCommand, and neither the config's HostName nor the host told it). Before
        connecting: the inventory's ip or address."""
        if self._conn is None:
            return self.host.ip or self.host.address
        return self.host.ip or self._reached
