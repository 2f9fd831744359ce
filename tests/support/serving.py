"""A real `fleet serve` on loopback, as the serve tests (unit and integration) and the bench
scripts start it: a free port, the argv, the wait until it listens (or the process's own
complaint when it dies first), the SIGTERM that ends it, and the `served` fixture that closes
a server whatever the test did. Each test keeps its own server class: what it seeds and how it
talks to serve are the test's."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick): serve is told it by --listen."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_argv(inventory: Path | str, port: int, *extra: str, python: str = sys.executable) -> list[str]:
    """`fleet serve --inventory INVENTORY --listen 127.0.0.1:PORT EXTRA...` (a later --listen in
    `extra` wins)."""
    return [python, "-m", "fleet", "serve", "--inventory", str(inventory), "--listen", f"127.0.0.1:{port}", *extra]


def wait_listening(process: subprocess.Popen, port: int, log: Callable[[], str], timeout: float = 30) -> None:
    """Until something accepts on 127.0.0.1:`port`; fails with `log()` (serve's own output) if
    the process exits first, or when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert process.poll() is None, log()
            assert time.monotonic() < deadline, f"fleet serve did not listen within {timeout} s:\n{log()}"
            time.sleep(0.1)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (serve's graceful stop) if it still runs, and wait for it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)


class _Closes(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closes)


def served_fixture(make: Callable[[Path], S]) -> Any:
    """The function-scoped fixture `served = served_fixture(MyServed)`: `make(tmp_path)`, closed
    after the test whatever it did."""

    @pytest.fixture
    def served(tmp_path: Path) -> Iterator[S]:
        server = make(tmp_path)
        try:
            yield server
        finally:
            server.close()

    return served
