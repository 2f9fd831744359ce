"""Internal verbs stay out of the help: `fleet serve-worker` (the fleet process of one served job,
started by serve's scheduler) is neither listed by `fleet --help` (it was, as "==SUPPRESS==") nor
offered by an unknown verb's error, and still runs when serve starts it. The real CLI, in a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fleet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def test_fleet_help_lists_the_public_verbs_and_no_internal_one():
    done = _fleet("--help")
    assert done.returncode == 0, done.stderr
    for verb in ("run", "attach", "stop", "list", "gc", "check", "describe", "serve", "logs", "wait"):
        assert f"\n    {verb} " in done.stdout, verb
    assert "serve-worker" not in done.stdout
    assert "SUPPRESS" not in done.stdout
    assert "{run,attach,stop,list,gc,check,describe,serve,logs,wait}" in done.stdout


def test_fleet_alone_prints_the_help_without_internal_verbs():
    done = _fleet()
    assert done.returncode == 2
    assert "usage: fleet" in done.stdout + done.stderr
    assert "serve-worker" not in done.stdout + done.stderr


def test_an_unknown_verb_is_refused_naming_only_the_public_verbs():
    done = _fleet("serve-workers", "x")
    assert done.returncode == 2
    assert "invalid choice: 'serve-workers'" in done.stderr
    assert "'wait'" in done.stderr
    assert "'serve-worker'" not in done.stderr
    assert "Traceback" not in done.stderr


def test_run_help_hides_its_internal_flag():
    done = _fleet("run", "--help")
    assert done.returncode == 0, done.stderr
    assert "--dry-run" in done.stdout
    assert "--ready-fd" not in done.stdout


def test_the_internal_verb_still_parses():
    # hidden, not removed: `fleet serve-worker NAME` is how serve runs a job
    done = _fleet("serve-worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: fleet serve-worker [-h] name" in done.stdout
