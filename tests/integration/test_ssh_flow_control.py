"""A host cannot send more than the controller reads plus a few windows (issue 19, point 12).

A remote command writes 100 MB as fast as it can; the controller reads its stdout slowly, as
the output uploader reads a tar stream of small files (a PUT per file). What the host's
command could write is what SSH's flow control lets through: with asyncssh 2.24's own window
logic, each read gave the host 2 MiB more, and the controller held the whole stream (a 450 MB
tar stream: 580 MB of RSS). The command's own write count (/proc/PID/io of its `dd`, a process
of this machine: the bed's hosts are network namespaces) says how far it got."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fleet.inventory import load_inventory
from fleet.transport import transport_for

TOTAL = 100 * 2**20
READ = 8 * 2**20
SLACK = 24 * 2**20  # the channel (1.5 windows), the reader's buffer, sshd's buffer, the pipe


def _written(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except FileNotFoundError:  # dd has ended: it wrote everything
        return TOTAL
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("wchar:")))


async def _slow_reader(cluster, tmp_path) -> tuple[int, int]:
    host = load_inventory(cluster.inventory).hosts[0]
    transport = transport_for(host, "h1")
    pidfile = tmp_path / "dd.pid"
    await transport.connect(30)
    try:
        process = await transport.start(["sh", "-c", f'echo $$ > {pidfile}; exec dd if=/dev/zero bs=32768 '
                                                     f'count={TOTAL // 32768} status=none'])
        process.close_stdin()
        read = 0
        while read < READ:
            chunk = await process.read_stdout()
            assert chunk, "the stream ended early"
            read += len(chunk)
            await asyncio.sleep(0.002)  # a PUT per small file
        pid = int(pidfile.read_text())
        # The host writes until SSH stops it: wait for it to stand still (or to end).
        written, still_since = _written(pid), time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() - still_since < 1.0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = _written(pid)
            if now != written:
                written, still_since = now, time.monotonic()
        process.close()
        return read, written
    finally:
        await transport.close()


def test_a_slow_reader_holds_back_a_fast_host(cluster, tmp_path):
    read, written = asyncio.run(_slow_reader(cluster, tmp_path))
    assert written - read <= SLACK, f"the host wrote {written >> 20} MiB while the controller read {read >> 20} MiB"
