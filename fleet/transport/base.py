"""The transport interface: start one argv on a host and talk to it over its stdio.

Every remote command is an argv (a list of words). A transport quotes it exactly once,
at this boundary (`shlex.join` for SSH; the local transport executes the argv directly),
so no user value is ever parsed by a shell as code.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.fanout import all_of
from fleet.inventory import Host

OnBytes = Callable[[bytes], None]
READ_SIZE = 65536


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

    @property
    @abc.abstractmethod
    def peer_address(self) -> str:
        """The IP address this host was reached at."""

    @property
    def local_address(self) -> str | None:
        """This machine's address on the way to the host (None without a network hop)."""
        return None

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
        """Run argv to its end and return its output."""
        process = await self.start(argv)
        try:
            if stdin:
                await process.write(stdin)
            process.close_stdin()
            out = bytearray()
            err = bytearray()
            await all_of(drain(process.read_stdout, out.extend), drain(process.read_stderr, err.extend))
            return CommandResult(await process.wait(), bytes(out), bytes(err))
        finally:
            process.close()


def command_name(argv: Sequence[str]) -> str:
    """What a log line may say of a command: the script's name ($0) of `sh -c TEXT NAME ...`,
    else the program. Never the script's text nor the other arguments (paths, values)."""
    if len(argv) >= 4 and argv[0] == "sh" and argv[1] == "-c":
        return argv[3]
    return argv[0] if argv else "?"


async def drain(read: Callable, sink: OnBytes | None = None) -> bytes:
    """Read a stream to its end, handing chunks to `sink`; return what it did not take."""
    kept = bytearray()
    while chunk := await read():
        if sink is None:
            kept += chunk
        else:
            sink(chunk)
    return bytes(kept)
