"""The transport interface: start one argv on a host and talk to it over its stdio.

Every remote command is an argv (a list of words). A transport quotes it exactly once,
at this boundary (`shlex.join` for SSH; the local transport executes the argv directly),
so no user value is ever parsed by a shell as code.

A host (or what runs on it) chooses how many bytes a command writes, so nothing here keeps
a stream whole: `run` keeps stdout up to a limit (HostError past it) and the last bytes of
stderr, `records` hands stdout over record by record (each up to a limit), and `drain`
without a sink keeps a stream's last bytes. A whole 128 MiB stderr once cost 260 MiB of
the controller's memory for the 4 KiB an error shows (issue 19).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.errors import HostError
from fleet.fanout import all_of, task_group
from fleet.inventory import Host

OnBytes = Callable[[bytes], None]
READ_SIZE = 65536
STDOUT_LIMIT = 4 * 2**20  # bytes of stdout `run` keeps; a command that writes more is an error
STDERR_TAIL = 4096  # bytes of a command's stderr kept: its last, what an error shows
RECORD_LIMIT = 65536  # bytes of one record of `records` (a path is at most PATH_MAX, 4096)


@dataclass(frozen=True)
class CommandResult:
    exit_status: int  # -1 when the command died of a signal or the channel closed
    stdout: bytes
    stderr: bytes


class RemoteProcess(abc.ABC):
    """A command running on a host. Reads and writes raise HostError if the host is lost."""

    @abc.abstractmethod
    async def read_stdout(self) -> bytes:
        """The next chunk of stdout; b"" at its end."""

    @abc.abstractmethod
    async def read_stderr(self) -> bytes:
        """The next chunk of stderr; b"" at its end."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""

    def buffer(self, high: int) -> None:
        """Let `write` return while up to `high` bytes wait to be sent (a bulk stream fed to
        several hosts at once: one host reading slower for a moment does not stall the
        others). Default: the transport's own small buffer."""
        return None

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """Send EOF on stdin."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit status (-1 for a signal or a lost channel)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Abandon the command: close the channel (SSH) or kill it (local)."""

    @property
    def lost(self) -> bool:
        """True when the command's end was not seen: the connection to the host went away
        (the command may still be running there). Known once `wait` has returned."""
        return False


class Transport(abc.ABC):
    """One host: connect once, then start any number of commands, concurrently if wanted.

    An async context manager, as httpx's transports: `async with transport:` connects and
    closes whatever happens."""

    def __init__(self, host: Host, label: str) -> None:
        self.host = host
        self.label = label  # e.g. "algo-2 (gpu-02, 10.0.0.12)": names the host in errors

    async def __aenter__(self) -> Transport:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # whatever a failed connect left open (a jump host's connection)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise HostError naming the host on any failure."""

    @abc.abstractmethod
    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        """Start argv on the host (one SSH channel, or one local subprocess)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; never raises."""

    async def reconnect(self, timeout: float) -> None:
        """Connect again after the connection was lost (a no-op while it is up); raise
        HostError if that fails within `timeout` seconds."""
        return None

    async def open_socket(self, path: str) -> SocketStream:
        """A byte stream to the unix socket `path` on the host (the engine's API socket:
        fleet.engine): over SSH a direct-streamlocal channel of the one connection, no
        command started. OSError when it cannot be opened (sshd refusing to forward, no
        socket there, one this user may not open: OpenSSH says "open failed" for all of
        them); a transport without a way to a socket (srun) raises it always."""
        raise OSError(errno.EOPNOTSUPP, f"the {self.host.transport} transport reaches no socket")

    @property
    @abc.abstractmethod
    def peer_address(self) -> str:
        """The IP address this host was reached at."""

    @property
    def local_address(self) -> str | None:
        """This machine's address on the way to the host (None without a network hop)."""
        return None

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, stdout_limit: int = STDOUT_LIMIT,
                  stderr_tail: int = STDERR_TAIL) -> CommandResult:
        """Run argv to its end and return its output: all of stdout, up to `stdout_limit`
        bytes (a command that writes more is abandoned: HostError naming the host and the
        command), and the last `stderr_tail` bytes of stderr. For more output than fits,
        `records`."""
        process = await self.start(argv)
        try:
            if stdin:
                await process.write(stdin)
            process.close_stdin()
            out = bytearray()

            def keep(chunk: bytes) -> None:
                if len(out) + len(chunk) > stdout_limit:
                    raise HostError(self.label, f"{command_name(argv)} wrote more than {stdout_limit} bytes "
                                                f"to its stdout")
                out.extend(chunk)
            _, err = await all_of(drain(process.read_stdout, keep), drain(process.read_stderr, keep=stderr_tail))
            return CommandResult(await process.wait(), bytes(out), err)
        finally:
            process.close()

    @contextlib.asynccontextmanager
    async def records(self, argv: Sequence[str], *, separator: bytes = b"\n", record_limit: int = RECORD_LIMIT,
                      stderr_tail: int = STDERR_TAIL) -> AsyncIterator[Records]:
        """Run argv (stdin closed) and read its stdout as records ending in `separator`, one
        at a time, each at most `record_limit` bytes (HostError past it): a listing of any
        length costs a record's memory, not the listing's. Its stderr is kept as its last
        `stderr_tail` bytes. The command is abandoned when the block ends early.

            async with transport.records(argv, separator=b"\0") as listing:
                async for record in listing: ...
                result = await listing.end()  # exit status, stderr's tail (stdout: b"")
        """
        process = await self.start(argv)
        try:
            process.close_stdin()
            async with task_group() as tasks:
                stderr = tasks.create_task(drain(process.read_stderr, keep=stderr_tail))
                try:
                    yield Records(process, self.label, command_name(argv), separator, record_limit, stderr)
                finally:
                    stderr.cancel()
        finally:
            process.close()


def command_name(argv: Sequence[str]) -> str:
    """What a log line may say of a command: the script's name ($0) of `sh -c TEXT NAME ...`,
    else the program. Never the script's text nor the other arguments (paths, values)."""
    if len(argv) >= 4 and argv[0] == "sh" and argv[1] == "-c":
        return argv[3]
    return argv[0] if argv else "?"


async def drain(read: Callable, sink: OnBytes | None = None, *, keep: int = STDERR_TAIL) -> bytes:
    """Read a stream to its end, handing chunks to `sink`; without one, return the stream's
    last `keep` bytes (never holding more than that and a chunk)."""
    kept = bytearray()
    while chunk := await read():
        if sink is None:
            kept += chunk
            del kept[:-keep or len(kept)]
        else:
            sink(chunk)
    return bytes(kept)


class SocketStream:
    """A (reader, writer) pair of asyncio's or asyncssh's streams as one byte stream (what
    fleet.engine.http reads and writes); `errors` are the stream's own failures, raised as
    ConnectionResetError."""

    def __init__(self, reader: Any, writer: Any, errors: tuple[type[BaseException], ...] = ()) -> None:
        self._reader = reader
        self._writer = writer
        self._errors = errors

    async def read(self) -> bytes:
        try:
            return bytes(await self._reader.read(READ_SIZE))
        except self._errors as exc:
            raise ConnectionResetError(str(exc)) from exc

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except self._errors as exc:
            raise ConnectionResetError(str(exc)) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError, *self._errors):
            self._writer.close()


class Records:
    """A command's stdout, record by record (see `Transport.records`)."""

    def __init__(self, process: RemoteProcess, label: str, name: str, separator: bytes, limit: int,
                 stderr: asyncio.Task[bytes]) -> None:
        self._process = process
        self._label = label
        self._name = name
        self._separator = separator
        self._limit = limit
        self._stderr = stderr
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no separator
        self._ended = False

    def __aiter__(self) -> Records:
        return self

    async def __anext__(self) -> bytes:
        """The next record, without its separator (a last one without one counts too)."""
        while (end := self._buffer.find(self._separator, self._searched)) < 0:
            self._searched = max(0, len(self._buffer) - len(self._separator) + 1)
            if len(self._buffer) > self._limit:
                raise HostError(self._label, f"{self._name} wrote a record longer than {self._limit} bytes")
            chunk = b"" if self._ended else await self._process.read_stdout()
            if not chunk:
                self._ended = True
                if not self._buffer:
                    raise StopAsyncIteration
                record = bytes(self._buffer)
                self._buffer.clear()
                return record
            self._buffer += chunk
        record = bytes(self._buffer[:end])
        del self._buffer[:end + len(self._separator)]
        self._searched = 0
        return record

    async def end(self) -> CommandResult:
        """Read the rest of stdout (records not read are dropped) and wait for the command:
        its exit status and the last bytes of its stderr."""
        self._buffer.clear()
        if not self._ended:
            await drain(self._process.read_stdout, lambda chunk: None)
            self._ended = True
        stderr = await self._stderr
        return CommandResult(await self._process.wait(), b"", stderr)
