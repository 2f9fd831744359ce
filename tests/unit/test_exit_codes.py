"""Exit codes a batch scheduler can act on: the machinery's failures (75) apart from the
job's (1), and --detach's command line."""

from __future__ import annotations

import pytest

from fleet import cli
from fleet.errors import (
    MACHINERY_EXIT,
    AlgorithmError,
    ClientError,
    HostError,
    HostLost,
    HostsFailed,
    InternalError,
    InvalidInput,
    JobStopped,
    MaxRuntimeExceeded,
    ResourceInUse,
)
from fleet.runtime.detach import child_argv


def host_error(k: int) -> HostError:
    return HostError(f"algo-{k} (h{k}, 10.0.0.{k})", "connection refused on port 22")


@pytest.mark.parametrize("error, code", [
    (InvalidInput("bad"), 2),
    (ResourceInUse("taken"), 2),
    (host_error(1), 75),
    (HostLost("algo-2", "h2", 121), 75),
    (ClientError("algo-1: docker could not create the container"), 1),
    (AlgorithmError("algo-1 exited with code 3"), 1),
    (InternalError(ValueError("a bug")), 1),
    (MaxRuntimeExceeded("too long"), 124),
    (JobStopped("stopped by the user"), 130),
], ids=lambda value: type(value).__name__ if not isinstance(value, int) else str(value))
def test_each_kind_of_error_has_its_exit_code(error, code):
    assert error.exit_code == code


def test_the_machinery_code_is_sysexits_tempfail():
    assert MACHINERY_EXIT == 75


def test_hosts_failing_all_for_the_machinery_exit_75_with_the_first_ones_prefix():
    error = HostsFailed([host_error(1), HostLost("algo-3", "h3", 130)])
    assert error.exit_code == 75
    assert error.failure_reason.startswith("ClientError: algo-1 (h1, 10.0.0.1): connection refused")


@pytest.mark.parametrize("errors, code, prefix", [
    ([host_error(1), ClientError("algo-2: docker could not create the container")], 1, "ClientError"),
    ([ClientError("algo-1: docker could not create the container"), host_error(2)], 1, "ClientError"),
    ([HostLost("algo-1", "h1", 121), AlgorithmError("algo-2 exited with code 3")], 1, "InternalServerError"),
    ([host_error(1), MaxRuntimeExceeded("too long")], 124, "ClientError"),
    ([host_error(1), JobStopped("stopped by the user"), AlgorithmError("x")], 130, "ClientError"),
], ids=["host-then-client", "client-then-host", "lost-then-algorithm", "host-then-maxruntime", "host-then-stop"])
def test_hosts_failing_for_mixed_reasons_exit_with_the_first_non_machinery_code(errors, code, prefix):
    # A requeue would meet the other failure again: the job is not requeued for the host's.
    error = HostsFailed(errors)
    assert error.exit_code == code
    assert error.failure_kind == prefix  # the FailureReason prefix stays the first host's


def test_one_error_shared_by_several_hosts_is_that_error():
    error = host_error(1)
    assert HostsFailed.of([error, error]) is error


def test_nested_host_failures_keep_the_machinery_code():
    inner = HostsFailed([host_error(1), host_error(2)])
    assert HostsFailed([inner, host_error(3)]).exit_code == 75


def test_the_run_help_documents_every_exit_code(capsys):
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "75 ", "124 ", "130 "):
        assert f"\n  {code}" in out
    assert "RequeueExit=75" in out and "--detach" in out


def test_detach_with_dry_run_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    assert cli.main(["run", "--detach", "--dry-run", str(tmp_path / "job.json")]) == 2
    assert "--detach and --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("argv, expected", [
    (["run", "--detach", "job.json"], ["run", "job.json"]),
    (["--debug", "run", "-i", "h.yaml", "job.json", "--detach"], ["--debug", "run", "-i", "h.yaml", "job.json"]),
    (["run", "--det", "job.json", "--name", "n1"], ["run", "job.json", "--name", "n1"]),
    (["--de", "run", "--detach", "job.json"], ["--de", "run", "job.json"]),  # --debug's abbreviation stays
    (["run", "--detach", "--", "--detach"], ["run", "--", "--detach"]),  # a file named --detach
], ids=["plain", "at-the-end", "abbreviated", "top-level-debug", "after-double-dash"])
def test_the_detached_child_gets_the_same_arguments_without_detach(argv, expected):
    assert child_argv(argv) == expected
