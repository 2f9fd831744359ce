"""The local transport: commands run on this machine as subprocesses, no SSH."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from fleet.errors import HostError
from fleet.transport.base import READ_SIZE, RemoteProcess, SocketStream, Transport, command_name

log = logging.getLogger(__name__)


class _LocalProcess(RemoteProcess):
    def __init__(self, process: asyncio.subprocess.Process, label: str, name: str) -> None:
        self._process = process
        self._label = label
        self._name = name

    async def read_stdout(self) -> bytes:
        return await self._process.stdout.read(READ_SIZE)  # type: ignore[union-attr]

    async def read_stderr(self) -> bytes:
        return await self._process.stderr.read(READ_SIZE)  # type: ignore[union-attr]

    async def write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        if self._process.stdin.is_closing():
            # The command ended and its stdin pipe is closed: uvloop raises RuntimeError("the
            # handler is closed") on such a write, asyncio drops it. Dropped here too; the
            # command's exit status tells why it ended.
            log.debug("%s: %s ended before %d bytes could be written to it", self._label, self._name, len(data))
            return
        self._process.stdin.write(data)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the command ended;
            await self._process.stdin.drain()  # its exit status tells why

    def close_stdin(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()

    async def wait(self) -> int:
        status = await self._process.wait()
        log.debug("%s: %s (pid %d) ended: status %d", self._label, self._name, self._process.pid, status)
        return status if status >= 0 else -1

    def close(self) -> None:
        if self._process.returncode is None:
            log.debug("%s: %s (pid %d) killed", self._label, self._name, self._process.pid)
            self._process.kill()


class LocalTransport(Transport):
    async def connect(self) -> None:
        return None

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        process = await self._spawn(argv)
        name = command_name(argv)
        log.debug("%s: %s started (pid %d)", self.label, name, process.pid)
        return _LocalProcess(process, self.label, name)

    async def _spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        """argv as a subprocess of this machine, its stdio piped."""
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # Ctrl-C at the terminal reaches fleet, not its commands
            )
        except OSError as exc:
            raise HostError(self.label, f"cannot run {argv[0]}: {exc.strerror}") from exc

    async def open_socket(self, path: str) -> SocketStream:
        """The unix socket `path` of this machine, straight."""
        reader, writer = await asyncio.open_unix_connection(path, limit=READ_SIZE)
        return SocketStream(reader, writer)

    async def close(self) -> None:
        return None

    @property
    def peer_address(self) -> str:
        return self.host.ip or "127.0.0.1"
