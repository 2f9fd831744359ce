"""What the user sees while a job runs: `[algo-k] line` for logs, `fleet: ...` notices.

Container bytes are the container's to choose, and a hostile or broken one can print
anything: escape sequences that clear the screen, retitle the window, set the clipboard
(OSC 52), or a CR that overwrites the line before it; and a line that never ends. So what
reaches the terminal from a container, or quotes one (file names, docker's words), is
made visible (`visible`): after decoding UTF-8 (undecodable bytes become `\\xNN`), every C0
control but TAB, DEL, and every C1 control (U+0080..U+009F, the 8-bit CSI 0x9b among them)
is shown as `\\xNN`. A CR right before a newline (CRLF line ends) is dropped, any other is
shown. This is done always, not only when stdout or stderr is a terminal: fleet's output
is often a file (a Slurm job's output, `| tee`) that is later `cat`-ed or `tail -f`-ed in
a terminal, where the escapes would act all the same; and the same bytes on a terminal and
in a file are easier to trust and to grep. Nothing is lost: the raw bytes are in the stored
log (`$FLEET_HOME/jobs/NAME/logs/algo-k.log`, written by the instance, not from here), and
`fleet logs NAME --host algo-k --raw` prints them raw, on purpose, to a pipe or a file only
(`fleet logs` and `fleet logs -f` print them as the console does). A backslash the container
printed is left alone, so `\\x1b` on the console may also be those four characters: the
stored log tells them apart.

A line is printed when it ends, and at most LINE_LIMIT bytes of it: a longer one is
printed cut (marked `[line cut at 64 KiB]`), the rest is counted, not kept, and when its
newline comes a line says how many bytes were not shown. Each chunk costs time in the
event loop proportional to its own size, and a host's pending line is at most LINE_LIMIT
bytes, whatever the container prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import BinaryIO, TextIO

LINE_LIMIT = 64 * 1024  # bytes of one line printed; the rest is counted, not kept
CUT_MARK = " [line cut at 64 KiB]"

# C0 controls but TAB (0x09) and LF (0x0a: it separates lines, never is inside one), DEL,
# and the C1 controls.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_BYTES = re.compile(b"[\x00-\x08\x0b-\x1f\x7f]")  # for ASCII-only text (no C1 there)
_PLAIN = bytes(range(0x20, 0x7f)) + b"\t\n"  # printable ASCII, TAB, LF: nothing to show otherwise


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match[0]):02x}"


def _escape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % match[0][0]


def visible(text: str) -> str:
    """`text` with its control characters but newlines shown as `\\xNN` (see the module's
    docstring)."""
    return _CONTROLS.sub(_escape, text)


def visible_lines(raw: bytes, ended: bool = True) -> bytes:
    """Lines of container output (separated by newlines, without the last one's) as they are
    printed: decoded as UTF-8 (undecodable bytes as `\\xNN`), a CR before each newline
    dropped, and at the end unless the last line did not end (cut), controls made visible;
    UTF-8 again. One pass over all of them: a newline is never inside a UTF-8 character."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
        if ended and raw.endswith(b"\r"):
            raw = raw[:-1]
    if not raw.translate(None, _PLAIN):  # the common case, ten times faster to tell than to search
        return raw
    if raw.isascii():
        return _CONTROL_BYTES.sub(_escape_byte, raw)
    return visible(raw.decode("utf-8", "backslashreplace")).encode()


def host_ranges(algos: list[str]) -> str:
    """Host names, runs of consecutive ones as ranges: `algo-1..algo-40, algo-42` (a notice
    about 100 hosts stays one readable line)."""
    numbers = sorted(int(algo.rsplit("-", 1)[1]) for algo in algos)
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(f"algo-{a}" if a == b else f"algo-{a}, algo-{b}" if b == a + 1 else f"algo-{a}..algo-{b}"
                     for a, b in runs)


class Console:
    def __init__(self, out: BinaryIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self.err = err or sys.stderr

    def notice(self, message: str) -> None:
        """`fleet: ...`, a line per line of `message`, its controls made visible: notices
        quote what the hosts and containers said (file names, docker's words)."""
        lines = message.split("\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()
        for line in lines:
            print("fleet: " + visible(line.removesuffix("\r")), file=self.err, flush=True)

    def host_lines(self, algo: str) -> HostLines:
        return HostLines(self.out, f"[{algo}] ".encode())


class HostLines:
    """Turns one host's output chunks into prefixed, visible lines (`visible_lines`); a
    partial line waits for its end, up to `limit` bytes: then it is printed cut, and the
    rest of it is counted until its newline (or the stream's end), then said. Time per
    chunk is linear in the chunk; memory is at most `limit` bytes."""

    def __init__(self, out: BinaryIO, prefix: bytes, limit: int = LINE_LIMIT) -> None:
        self.out = out
        self.prefix = prefix
        self.limit = limit
        self.partial = bytearray()  # the line so far, at most `limit` bytes
        self.dropped: int | None = None  # bytes of a cut line not shown so far; None: not cutting

    def feed(self, chunk: bytes) -> None:
        printed: list[bytes] = []
        first = chunk.find(b"\n")
        if first < 0:
            self._more(chunk, printed)
        else:
            self._more(chunk[:first], printed)
            printed.append(self._ended())
            last = chunk.rfind(b"\n")
            if last > first:
                self._whole(chunk[first + 1:last], printed)
            self._more(chunk[last + 1:], printed)
        if printed:
            self.out.write(b"".join(printed))
            self.out.flush()

    def flush(self) -> None:
        """The stream ended (or stops for now): print its unfinished line, if any."""
        if self.partial or self.dropped is not None:
            self.out.write(self._ended())
            self.out.flush()

    def _more(self, data: bytes, printed: list[bytes]) -> None:
        """More of the current line (`data` has no newline)."""
        if self.dropped is not None:
            self.dropped += len(data)
            return
        take = min(len(data), self.limit - len(self.partial))
        self.partial += data[:take]
        if take < len(data):  # the line goes on past the limit: print what there is, cut
            printed.append(self._cut(len(data) - take))

    def _whole(self, block: bytes, printed: list[bytes]) -> None:
        """Whole lines (separated by newlines, the last one's not included), all at once
        when none can be too long (the transport's chunks are no longer than the limit)."""
        if len(block) <= self.limit:
            printed.append(self.prefix + visible_lines(block).replace(b"\n", b"\n" + self.prefix) + b"\n")
            return
        for line in block.split(b"\n"):
            self._more(line, printed)
            printed.append(self._ended())

    def _cut(self, beyond: int) -> bytes:
        keep = _whole_characters(self.partial)
        line = self.prefix + visible_lines(bytes(self.partial[:keep]), ended=False) + CUT_MARK.encode() + b"\n"
        self.dropped = len(self.partial) - keep + beyond
        self.partial.clear()
        return line

    def _ended(self) -> bytes:
        """The current line ended: it, or what was not shown of it."""
        if self.dropped is not None:
            said = f"[line cut: {self.dropped:,} more bytes not shown; the stored log has them]\n"
            line = self.prefix + said.encode()
            self.dropped = None
            return line
        line = self.prefix + visible_lines(bytes(self.partial)) + b"\n"
        self.partial.clear()
        return line


def _whole_characters(data: bytearray) -> int:
    """How many bytes of `data` to print so that it does not end inside a UTF-8 character
    (at most 3 fewer; bytes that are not UTF-8 are left to the decoder)."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if byte < 0x80:
            return size
        if byte >= 0xC0:  # a lead byte: the character needs 2, 3 or 4 bytes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return size if back >= need else size - back
    return size


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
        files = ""
        if getattr(count, "counts_files", True):
            files = f"{count.objects}/{total} files, " if total else f"{count.objects} files, "
        moved = getattr(count, "host_bytes", 0) or count.bytes
        size = getattr(count, "total_bytes", 0)
        of = f"/{size / 2**20:.1f}" if size else ""
        return (f"{files}{count.bytes / 2**20:.1f}{of} MiB in {seconds:.1f} s "
                f"({moved / seconds / 1e6:.0f} MB/s)")
