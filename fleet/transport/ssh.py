"""The SSH transport (asyncssh): one connection per host, one channel per command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from fleet.errors import HostError
from fleet.inventory import Host
from fleet.transport.base import READ_SIZE, RemoteProcess, Transport, command_name

log = logging.getLogger(__name__)

# AES-GCM first: it moves bulk data fastest with asyncssh; the rest are asyncssh's defaults.
PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                     "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"]


def _known_hosts_data(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class _AcceptNewClient(asyncssh.SSHClient):
    """host_key_checking: accept-new. A host with no known key is trusted and recorded;
    a host whose known key differs is refused, as OpenSSH's StrictHostKeyChecking=accept-new."""

    def __init__(self, known_hosts: Path, host: Host) -> None:
        self._known_hosts = known_hosts
        self._host = host

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        data = _known_hosts_data(self._known_hosts)
        if data:
            known = asyncssh.match_known_hosts(asyncssh.import_known_hosts(data.decode()),
                                               host, addr, port if port != 22 else None)
            if known[0]:  # the host has keys, none of them this one
                return False
        name = host if port == 22 else f"[{host}]:{port}"
        self._known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self._known_hosts, "a") as file:
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


# A connection that stops answering (a link down) is given up after about
# KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds of silence; the supervisor then reconnects.
KEEPALIVE_INTERVAL = 3
KEEPALIVE_COUNT = 3


class SSHTransport(Transport):
    def __init__(self, host: Host, label: str) -> None:
        super().__init__(host, label)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

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
        host = self.host
        known_hosts_path = Path(host.known_hosts).expanduser()
        connect_timeout = min(host.connect_timeout, timeout) if timeout else host.connect_timeout
        options: dict = {
            "port": host.port,
            "connect_timeout": connect_timeout,
            "encryption_algs": PREFERRED_CIPHERS,
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "keepalive_count_max": KEEPALIVE_COUNT,
        }
        if host.user:
            options["username"] = host.user
        if host.identity_file:
            options["client_keys"] = [str(Path(host.identity_file).expanduser())]
        if host.host_key_checking == "off":
            options["known_hosts"] = None
        else:
            options["known_hosts"] = _known_hosts_data(known_hosts_path)
            if host.host_key_checking == "accept-new":
                options["client_factory"] = lambda: _AcceptNewClient(known_hosts_path, host)
        log.debug("%s: connecting to %s port %d as %s (timeout %g s, host keys: %s)", self.label, host.address,
                  host.port, host.ssh_user, connect_timeout, host.host_key_checking)
        try:
            self._conn = await asyncssh.connect(host.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostError(self.label, (
                f"SSH host key not verified ({exc.reason}): the host is not in {known_hosts_path} "
                f"or its key changed; check the key, or set host_key_checking in the inventory"
            )) from exc
        except asyncssh.PermissionDenied as exc:
            raise HostError(self.label, (
                f"SSH login refused for user {host.ssh_user}"
                + (f" with key {host.identity_file}" if host.identity_file else "")
            )) from exc
        except socket.gaierror as exc:
            raise HostError(self.label, f"cannot resolve {host.address}: {exc.strerror}") from exc
        except ConnectionRefusedError as exc:
            raise HostError(self.label, f"connection refused on port {host.port}") from exc
        except TimeoutError as exc:
            raise HostError(self.label, f"no SSH answer within {connect_timeout:g} s") from exc
        except OSError as exc:
            raise HostError(self.label, f"cannot connect: {exc.strerror or exc}") from exc
        except asyncssh.Error as exc:
            raise HostError(self.label, f"SSH failed: {exc.reason}") from exc
        log.debug("%s: connected (%s, cipher %s)", self.label, self.peer_address,
                  self._conn.get_extra_info("send_cipher"))

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        command = shlex.join(argv)  # the one place an argv becomes a remote command line
        name = command_name(argv)
        for attempt in (1, 2):
            if self._conn is not None and self._conn.is_closed():  # lost: connect again
                await self.reconnect(self.host.connect_timeout)
            if self._conn is None:
                raise HostError(self.label, "not connected")
            try:
                process = await self._conn.create_process(command, encoding=None)
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
        if self._conn is None:
            return None
        sock = self._conn.get_extra_info("sockname")
        return sock[0] if sock else None

    @property
    def peer_address(self) -> str:
        if self._conn is None:
            return self.host.ip or self.host.address
        peer = self._conn.get_extra_info("peername")
        return peer[0] if peer else self.host.address
