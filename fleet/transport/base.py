"""The transport interface: run one argv on a host, streaming its output.

Every remote command is an argv (a list of words). A transport quotes it exactly once,
at this boundary (`shlex.join` for SSH; the local transport executes the argv directly),
so no user value is ever parsed by a shell as code.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import Callable, Sequence

from fleet.inventory import Host

OnBytes = Callable[[bytes], None]
READ_SIZE = 65536


@dataclass(frozen=True)
class CommandResult:
    exit_status: int  # -1 when the command died of a signal
    stdout: bytes
    stderr: bytes


class Transport(abc.ABC):
    """One host: connect once, then run any number of commands, concurrently if wanted."""

    def __init__(self, host: Host, label: str) -> None:
        self.host = host
        self.label = label  # e.g. "algo-2 (gpu-02, 10.0.0.12)": names the host in errors

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise HostError naming the host on any failure."""

    @abc.abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        on_stdout: OnBytes | None = None,
        on_stderr: OnBytes | None = None,
    ) -> CommandResult:
        """Run argv to its end. Output chunks go to the callbacks as they arrive;
        what no callback took is returned. Raises HostError if the host is lost."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; never raises."""

    @property
    @abc.abstractmethod
    def peer_address(self) -> str:
        """The IP address this host was reached at."""


async def pump(reader: asyncio.StreamReader | object, sink: OnBytes | None) -> bytes:
    """Read a stream to its end, handing chunks to `sink`; return what it did not take."""
    kept = bytearray()
    while True:
        chunk = await reader.read(READ_SIZE)  # type: ignore[attr-defined]
        if not chunk:
            return bytes(kept)
        if sink is None:
            kept += chunk
        else:
            sink(chunk)
