"""Where a secret could leak on this machine: every process's argv (/proc/PID/cmdline, which
any local user reads) and the files under given roots. Read once (argvs_holding,
files_holding) or again and again in a thread while a job runs (ProcWatch). The test hosts
share this machine's /proc and file systems, so this sees the hosts' processes too."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


def processes() -> Iterator[tuple[int, bytes]]:
    """(pid, argv) of every live process but this one, argv as /proc/PID/cmdline holds it (each
    argument NUL-terminated); a process gone meanwhile is passed over."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    yield int(entry), file.read()
            except OSError:
                continue


def argvs_holding(*needles: bytes) -> list[tuple[int, bytes]]:
    """(pid, argv) of every process whose argv holds one of `needles`."""
    return [(pid, argv) for pid, argv in processes() if any(needle in argv for needle in needles)]


def files_holding(roots: Iterable[Path], needles: Sequence[bytes], *, skip: Sequence[str] = (),
                  largest: int | None = None) -> list[str]:
    """The regular files under `roots` (no symlink followed; directories named in `skip` and
    files over `largest` bytes passed over) that hold one of `needles`."""
    found = []
    for root in roots:
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in skip]
            for name in files:
                path = Path(directory, name)
                try:
                    if path.is_symlink() or not path.is_file():
                        continue
                    if largest is not None and path.stat().st_size > largest:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(needle in data for needle in needles):
                    found.append(str(path))
    return found


class ProcWatch:
    """While in its `with` block: every process's argv read again and again (and every tenth
    time the files under `roots`); what holds one of `needles` is noted in `seen`, `scans`
    counts the rounds (a test asserts there were many: a watch that never looked proves
    nothing)."""

    def __init__(self, *needles: str | bytes, roots: Sequence[Path] = ()) -> None:
        self.needles = [n.encode() if isinstance(n, str) else n for n in needles]
        self.roots = roots
        self.seen: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen += [argv.replace(b"\0", b" ")[:200].decode(errors="replace")
                          for _, argv in argvs_holding(*self.needles)]
            if self.roots and self.scans % 10 == 0:
                self.seen += files_holding(self.roots, self.needles)
            self.scans += 1

    def __enter__(self) -> ProcWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
