"""What the user sees while a job runs: `[algo-k] line` for logs, `fleet: ...` notices."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import BinaryIO, TextIO


class Console:
    def __init__(self, out: BinaryIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self.err = err or sys.stderr

    def notice(self, message: str) -> None:
        for line in message.splitlines() or [""]:
            print(f"fleet: {line}", file=self.err, flush=True)

    def host_lines(self, algo: str) -> HostLines:
        return HostLines(self.out, f"[{algo}] ".encode())


class HostLines:
    """Turns one host's output chunks into prefixed lines; a partial line waits for its end."""

    def __init__(self, out: BinaryIO, prefix: bytes) -> None:
        self.out = out
        self.prefix = prefix
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        if lines:
            self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))
            self.out.flush()

    def flush(self) -> None:
        if self.partial:
            self.out.write(self.prefix + self.partial + b"\n")
            self.out.flush()
            self.partial = b""


class Progress:
    """Transfers as they go: on a terminal a live line (bytes, rate, files), redrawn twice a
    second; otherwise one plain line when each input or output is done."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.err.isatty()

    @contextlib.asynccontextmanager
    async def track(self, label: str, count, detail: str) -> AsyncIterator[None]:
        start = time.monotonic()
        ticker = asyncio.create_task(self._tick(label, count, start)) if self.live else None
        ok = False
        try:
            yield
            ok = True
        finally:
            if ticker is not None:  # owned here: cancelled and waited for
                ticker.cancel()
                await asyncio.wait([ticker])
                self.console.err.write("\r\x1b[K")
            if ok:
                self.console.notice(f"{label}: {self._line(count, start)} {detail}")

    async def _tick(self, label: str, count, start: float) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.console.err.write(f"\r\x1b[K{label}: {self._line(count, start)}")
            self.console.err.flush()

    @staticmethod
    def _line(count, start: float) -> str:
        seconds = max(time.monotonic() - start, 1e-6)
        total = getattr(count, "total_objects", 0)
        files = f"{count.objects}/{total}" if total else f"{count.objects}"
        moved = getattr(count, "host_bytes", 0) or count.bytes
        size = getattr(count, "total_bytes", 0)
        of = f"/{size / 2**20:.1f}" if size else ""
        return (f"{files} files, {count.bytes / 2**20:.1f}{of} MiB in {seconds:.1f} s "
                f"({moved / seconds / 1e6:.0f} MB/s)")
