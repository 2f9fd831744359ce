"""scripts/bench-fanout's host CPU: what a host's process trees accounted, ended children
included (their parent's cutime/cstime), nothing outside them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
# A stand-in for a host's sshd listener: for each line on stdin, a session (a child burning
# 0.3 s of CPU) that it waits for, then "done".
LISTENER = f"""
import subprocess, sys
for line in sys.stdin:
    subprocess.run([sys.executable, "-c", {BURN.format(seconds=0.3)!r}], check=True)
    print("done", flush=True)
"""


def _bench():
    loader = importlib.machinery.SourceFileLoader("bench_fanout", str(ROOT / "scripts" / "bench-fanout"))
    spec = importlib.util.spec_from_loader("bench_fanout", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_host_cpu_counts_a_hosts_ended_sessions_and_nothing_outside_its_trees(tmp_path):
    bench = _bench()
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        (tmp_path / "h1").mkdir()
        (tmp_path / "h1" / "sshd.pid").write_text(f"{listener.pid}\n")
        hosts = bench.HostCpu(tmp_path)
        assert hosts.listeners == {listener.pid}
        before = hosts.seconds()
        assert listener.stdin and listener.stdout
        listener.stdin.write("go\n")
        listener.stdin.flush()
        assert listener.stdout.readline() == "done\n"
        session = hosts.seconds() - before
        subprocess.run([sys.executable, "-c", BURN.format(seconds=0.3)], check=True)  # not the host's
        outside = hosts.seconds() - before - session
    finally:
        listener.kill()
        listener.wait()
    assert 0.3 <= session < 1.0  # the session's child, ended and reaped: in the listener's cutime
    assert outside < 0.1
