"""`fleet logs` and `fleet logs -f` print what containers chose to print: a stored log with
escape sequences (an OSC 52 clipboard write, a CSI 2J screen clear) and a 64 MiB line
without a newline reaches a terminal escaped and cut, in bounded memory; `--raw` gives the
stored bytes unchanged to a pipe, and is refused on a terminal. Real `fleet` processes, their
stdout a pty or a pipe, their peak RSS measured (ru_maxrss)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import fleet
from fleet.contract.describe import now
from fleet.runtime.store import JobStore

ROOT = Path(fleet.__file__).resolve().parent.parent
HOSTILE = (b"plain line\n"
           b"\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\x07copied to your clipboard\n"
           b"\x1b[2J\x1b[Hscreen cleared\n"
           b"\x9b31mC1 CSI\x1b[0m\n")
HUGE = 64 * 2**20  # one line of it, no newline at the end
MIB = 2**20
# Starts `fleet` (argv[2:]) and writes its ru_maxrss (KiB) to the descriptor argv[1]. A child
# keeps the peak RSS of the process it was vforked from (Linux keeps the larger across exec),
# and pytest's may be large: so fleet is forked from this small process, not from pytest.
MEASURED = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "fleet", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Ran:
    code: int
    out: bytes
    err: str
    peak_rss: int  # bytes


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A job that Completed: algo-1 printed escape sequences, algo-2 a 64 MiB line."""
    store = JobStore(tmp_path_factory.mktemp("logs") / "home")
    job = store.create({"ProcessingJobName": "hostile", "ProcessingJobStatus": "Completed", "ExitCode": 0,
                        "CreationTime": now(), "Hosts": {"algo-1": {"Name": "h1"}, "algo-2": {"Name": "h2"}}})
    with job.open_log("algo-1") as log:
        log.write(HOSTILE)
    with job.open_log("algo-2") as log:
        block = b"x" * MIB
        for _ in range(HUGE // MIB):
            log.write(block)
    small = store.create({"ProcessingJobName": "small", "ProcessingJobStatus": "Completed", "ExitCode": 0,
                          "CreationTime": now(), "Hosts": {"algo-1": {"Name": "h1"}}})
    with small.open_log("algo-1") as log:
        log.write(b"one line\n")
    return store.home


def fleet_logs(home: Path, *args: str, terminal: bool) -> Ran:
    """`fleet logs ARGS`, its stdout a pty (`terminal`) or a pipe; its peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_HOME": str(home)}
    if terminal:
        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    rss_r, rss_w = os.pipe()
    with tempfile.TemporaryFile() as err:
        try:
            child = subprocess.Popen([sys.executable, "-c", MEASURED, str(rss_w), "logs", *args],
                                     stdin=subprocess.DEVNULL, stdout=writer, stderr=err, env=env,
                                     pass_fds=(rss_w,))
        finally:
            os.close(writer)
            os.close(rss_w)
        out = bytearray()
        try:
            while True:
                try:
                    data = os.read(reader, 1 << 20)
                except OSError:  # EIO: the pty's other side closed
                    break
                if not data:
                    break
                out += data
        finally:
            os.close(reader)
        child.wait()
        with os.fdopen(rss_r, "rb") as rss:
            peak_kib = int(rss.read())
        err.seek(0)
        said = err.read().decode()
    if terminal:  # the pty's line discipline writes a newline as CRLF
        out = bytearray(out.replace(b"\r\n", b"\n"))
    return Ran(child.returncode, bytes(out), said, peak_kib * 1024)


@pytest.fixture(scope="module")
def baseline(home: Path) -> int:
    """The peak RSS of `fleet logs` printing one short line."""
    ran = fleet_logs(home, "small", terminal=True)
    assert ran.code == 0 and ran.out == b"[algo-1] one line\n", ran
    return ran.peak_rss


@pytest.mark.parametrize("follow", [[], ["-f"]], ids=["logs", "logs-f"])
def test_logs_on_a_terminal_show_escapes_and_cut_a_huge_line_in_bounded_memory(home, baseline, follow):
    ran = fleet_logs(home, "hostile", *follow, terminal=True)
    assert ran.code == 0, ran.err
    assert b"\x1b" not in ran.out and b"\x9b" not in ran.out and b"\x07" not in ran.out
    lines = ran.out.split(b"\n")
    assert lines[:4] == [b"[algo-1] plain line",
                         b"[algo-1] \\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\\x07copied to your clipboard",
                         b"[algo-1] \\x1b[2J\\x1b[Hscreen cleared",
                         b"[algo-1] \\x9b31mC1 CSI\\x1b[0m"]
    cut_at = 64 * 1024
    assert lines[4] == b"[algo-2] " + b"x" * cut_at + b" [line cut at 64 KiB]"
    assert lines[5] == f"[algo-2] [line cut: {HUGE - cut_at:,} more bytes not shown; the stored log has them]".encode()
    assert lines[6:] == [b""]
    assert ran.peak_rss - baseline < 32 * MIB, f"peak RSS {ran.peak_rss / MIB:.0f} MiB, " \
                                               f"{baseline / MIB:.0f} MiB for one short line"


def test_logs_of_one_host_on_a_terminal_are_escaped_too(home):
    ran = fleet_logs(home, "hostile", "--host", "algo-1", terminal=True)
    assert ran.code == 0, ran.err
    assert b"\x1b" not in ran.out and ran.out.startswith(b"plain line\n\\x1b]52;c;")


@pytest.mark.parametrize("host, stored", [("algo-1", HOSTILE), ("algo-2", None)])
def test_logs_raw_to_a_pipe_pass_the_stored_bytes_unchanged(home, baseline, host, stored):
    ran = fleet_logs(home, "hostile", "--host", host, "--raw", terminal=False)
    assert ran.code == 0, ran.err
    if stored is not None:
        assert ran.out == stored
    else:
        assert len(ran.out) == HUGE and ran.out.count(b"x") == HUGE
    assert ran.peak_rss - baseline < 32 * MIB


@pytest.mark.parametrize("follow", [[], ["-f"]], ids=["logs", "logs-f"])
def test_logs_raw_to_a_terminal_is_refused_and_prints_nothing(home, follow):
    ran = fleet_logs(home, "hostile", "--host", "algo-1", "--raw", *follow, terminal=True)
    assert ran.code == 2
    assert ran.out == b""
    assert "--raw writes the stored bytes unchanged" in ran.err and "never to a terminal" in ran.err, ran.err


def test_logs_raw_needs_a_host(home):
    ran = fleet_logs(home, "hostile", "--raw", terminal=False)
    assert ran.code == 2 and ran.out == b"" and "--raw prints one host's stored bytes" in ran.err, ran.err
