"""A bug of fleet's: the job still ends Failed with InternalServerError in one line;
`fleet --debug` (or FLEET_DEBUG=1) adds the debug logs and the traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fleet import cli
from fleet.runtime import executor


@pytest.fixture
def job_file(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLEET_DEBUG", raising=False)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({
        "ProcessingJobName": "buggy",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox", "ContainerEntrypoint": ["true"]},
    }))
    return path


@pytest.fixture(autouse=True)
def restore_logging():
    root, fleet_logger = logging.getLogger(), logging.getLogger("fleet")
    handlers, level, fleet_level = list(root.handlers), root.level, fleet_logger.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    fleet_logger.setLevel(fleet_level)


@pytest.fixture
def bug(monkeypatch):
    """Planning (after the local host is "connected") fails with a plain RuntimeError."""
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in planning")
    monkeypatch.setattr(executor, "plan_cluster", broken)


def _record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "home" / "jobs" / "buggy" / "describe.json").read_text())


def test_a_bug_ends_the_job_failed_in_one_line(job_file, tmp_path, bug, capsys):
    code = cli.main(["run", str(job_file)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    reason = "InternalServerError: fleet failed unexpectedly: RuntimeError('a bug in planning')"
    assert f"fleet: buggy: Failed: {reason}" in err.splitlines()
    assert _record(tmp_path)["FailureReason"] == reason
    assert _record(tmp_path)["ProcessingJobStatus"] == "Failed"


@pytest.mark.parametrize("how", ["--debug", "FLEET_DEBUG=1"])
def test_debug_shows_the_traceback_and_debug_logs(job_file, tmp_path, bug, capsys, monkeypatch, how):
    argv = ["run", str(job_file)]
    if how == "--debug":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("FLEET_DEBUG", "1")
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert 'raise RuntimeError("a bug in planning")' in err
    assert "fleet.runtime.executor: the job failed unexpectedly" in err
    assert _record(tmp_path)["ProcessingJobStatus"] == "Failed"  # the same end, more words


def test_a_bug_outside_a_job_is_one_line_and_debug_adds_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path))
    monkeypatch.delenv("FLEET_DEBUG", raising=False)

    def broken(args):
        raise KeyError("oops")
    monkeypatch.setattr(cli, "_list", broken)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["fleet: internal error: KeyError('oops') (fleet --debug shows the traceback)"]
    assert cli.main(["--debug", "list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'oops'" in err
