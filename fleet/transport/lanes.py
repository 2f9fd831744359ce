"""One remote command per host, fed one stream: the inputs' `tar -x` (fleet.data.staging),
the image's `fleet-load` (fleet.image.push), a direct lane's fetch.sh or put.sh
(fleet.data.direct).

A host whose command cannot start, or whose channel fails, is set aside with its error (the
caller's words: what it was sending) and the others go on: one slow or lost host never
stops the stream for the rest, and the caller decides what a set-aside host means (sent
again, or failed alone). Each command's stderr is read to its end by a task of the caller's
task group, keeping its last `keep` bytes (a host may write any amount).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from fleet.errors import FleetError
from fleet.fanout import all_of, settled
from fleet.transport.base import STDERR_TAIL, RemoteProcess, Transport, drain

log = logging.getLogger(__name__)

# label, error (None: a write that made no progress for `stall` seconds) → the error kept
Failed = Callable[[str, FleetError | None], FleetError]
# label, process, its stderr (the tail, or the error reading it) → an error sets it aside
Check = Callable[[str, RemoteProcess, "asyncio.Task[bytes | FleetError]"], Awaitable[FleetError | None]]


class Lanes:
    """One command per host label; `live` are those not set aside."""

    def __init__(self, tasks: asyncio.TaskGroup, *, keep: int = STDERR_TAIL, buffer: int = 0,
                 close_failed: bool = False) -> None:
        self.processes: dict[str, RemoteProcess] = {}
        self.failed: dict[str, FleetError] = {}
        self._tasks = tasks
        self._keep = keep
        self._buffer = buffer  # bytes a channel may hold unsent (hosts need not wait in lockstep)
        self._close_failed = close_failed  # a host set aside has its command closed at once
        self._stderr: dict[str, asyncio.Task[bytes | FleetError]] = {}

    async def open(self, commands: Iterable[tuple[str, Transport, list[str]]]) -> None:
        """Start each (label, transport, argv); one that cannot start is set aside."""
        async def one(label: str, transport: Transport, argv: list[str]) -> None:
            try:
                process = await transport.start(argv)
            except FleetError as exc:
                self.failed[label] = exc
                return
            if self._buffer:
                process.buffer(self._buffer)
            self.processes[label] = process
            self._stderr[label] = self._tasks.create_task(
                settled(lambda: drain(process.read_stderr, keep=self._keep)))
        await all_of(*(one(*command) for command in commands))

    @property
    def live(self) -> list[str]:
        return [label for label in self.processes if label not in self.failed]

    def stderr(self, label: str) -> asyncio.Task[bytes | FleetError]:
        return self._stderr[label]

    def set_aside(self, label: str, error: FleetError) -> None:
        log.debug("%s set aside: %s", label, error.message)
        self.failed[label] = error
        if self._close_failed:
            self.processes[label].close()

    async def write(self, data: bytes, failed: Failed, labels: Iterable[str] | None = None,
                    stall: float | None = None) -> list[str]:
        """`data` to each of `labels` still live (all live ones by default); the labels it
        reached. One whose write fails, or makes no progress for `stall` seconds, is set
        aside with `failed(label, its error or None)`."""
        live = set(self.live)
        targets = [label for label in (self.live if labels is None else labels) if label in live]

        async def one(label: str) -> bool:
            try:
                async with asyncio.timeout(stall):
                    await self.processes[label].write(data)
            except TimeoutError:
                self.set_aside(label, failed(label, None))
                return False
            except FleetError as exc:
                self.set_aside(label, failed(label, exc))
                return False
            return True
        reached = await all_of(*(one(label) for label in targets))
        return [label for label, ok in zip(targets, reached) if ok]

    async def finish(self, check: Check) -> dict[str, FleetError]:
        """End every live command's input, then `check` each one's end (its output, status
        and stderr): one whose check gives an error is set aside. Every host set aside."""
        for label in self.live:
            self.processes[label].close_stdin()

        async def one(label: str) -> None:
            error = await check(label, self.processes[label], self._stderr[label])
            if error is not None:
                self.set_aside(label, error)
        await all_of(*(one(label) for label in self.live))
        return dict(self.failed)

    def abandon(self) -> None:
        """Close every command and stop reading its stderr (the group waits for those tasks)."""
        for process in self.processes.values():
            process.close()
        for task in self._stderr.values():
            task.cancel()
