"""What the user sees while a job runs: `[algo-k] line` for logs, `fleet: ...` notices."""

from __future__ import annotations

import sys
from typing import BinaryIO, TextIO


class Console:
    def __init__(self, out: BinaryIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self.err = err or sys.stderr

    def notice(self, message: str) -> None:
        for line in message.splitlines() or [""]:
            print(f"fleet: {line}", file=self.err, flush=True)

    def host_lines(self, algo: str) -> "HostLines":
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
