"""scripts/local-cluster stops the test registries a killed run left, by the pids they
recorded, and nothing else: no bed needed (a state dir of the test's own, a stand-in
docker-registry on PATH)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from registries import spawn_registry

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_up_stops_a_registry_a_killed_run_left_by_its_recorded_pid_never_by_name(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    registry = bin_dir / "docker-registry"  # a stand-in: the real one binds the bed's address
    registry.write_text("#!/usr/bin/env python3\nimport time\ntime.sleep(300)\n")
    registry.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    state = tmp_path / "state"
    state.mkdir()
    left = spawn_registry(state, "auth", {"version": 0.1}, tmp_path / "registry.log")  # its run was killed
    other = subprocess.Popen([str(registry), "serve", str(tmp_path / "not-ours.yml")])  # not the bed's
    # A pidfile whose pid is now another process's (recycled): left alone.
    (state / "registries" / "plain.pid").write_text(f"{other.pid}\n")
    try:
        done = subprocess.run([str(ROOT / "scripts" / "local-cluster"), "registries-stop"],
                              env={**os.environ, "FLEET_CLUSTER_DIR": str(state)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert left.wait(timeout=10) == -signal.SIGTERM
        assert f"stopping test registries a killed run left: {left.pid}" in done.stderr
        assert _alive(other.pid)
        assert not list((state / "registries").glob("*.pid"))
    finally:
        for process in (left, other):
            if process.poll() is None:
                process.kill()
                process.wait()
