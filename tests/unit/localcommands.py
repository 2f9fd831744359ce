"""Shared by the unit tests that run real local commands (LocalTransport) in place of a host:
a transport that remembers what it started, the fixture that reaps it, a directory's files
as a dict, and an alarm for code that could hang the event loop."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleet.transport.base import RemoteProcess, drain
from fleet.transport.local import LocalTransport

STARTED: list[RemoteProcess] = []  # every command the tests started, reaped by `reap_commands`


class RecordingTransport(LocalTransport):
    """The local transport, remembering what it started (for `reap_commands`)."""

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        process = await super().start(argv)
        STARTED.append(process)
        return process


@pytest.fixture(autouse=True)
async def reap_commands():
    """Every command a test started has ended and asyncio has seen it end while the test's loop
    still runs (it complains about a subprocess transport collected after its loop closed)."""
    yield
    for process in STARTED:
        process.close()
        await drain(process.read_stdout)  # reading a full pipe to its end lets asyncio see the exit
        await drain(process.read_stderr)
        await process.wait()
    STARTED.clear()


def tree(root: str | Path) -> dict[str, bytes]:
    """Every file below root (relative path → bytes); directories only as their paths."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


@contextlib.contextmanager
def alarm(seconds: float):
    """A reader looping without awaiting blocks the event loop (no asyncio timeout fires): the
    alarm's handler interrupts it, so a hang fails the test."""
    def interrupt(signum, frame):
        raise TimeoutError("the reader hung (the event loop was blocked)")
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
