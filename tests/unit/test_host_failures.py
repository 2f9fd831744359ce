"""The one table of host failures (fleet/host/statuses.py): each status of the host scripts
is an error of one kind (hence one exit code) and one message, naming the host; the
machine's failures exit 75 (a scheduler's requeue may help), the user's exit 1 (it never
could)."""

from __future__ import annotations

import pytest

from fleet.errors import MACHINERY_EXIT, ClientError, HostError
from fleet.host.statuses import FAILURES, Status, host_failure

LABEL = "algo-2 (h2, 10.0.0.2)"

# What the engines said when a pull failed, seen on the test bed (Docker 20.10, 28, Podman 5).
REFUSED = [
    "Error response from daemon: Get \"http://10.251.7.1/v2/fleet/private/manifests/1\": no basic auth credentials",
    "Error response from daemon: Head \"http://10.251.7.1/v2/x/manifests/1\": unauthorized: authentication required",
    "Error response from daemon: pull access denied for zq, repository does not exist or may require "
    "'docker login': denied: requested access to the resource is denied",
    "Error response from daemon: manifest for 10.251.7.1/fleet/x:2 not found: manifest unknown: manifest unknown",
    "Error: initializing source docker://10.251.7.1/x:1: reading manifest 1 in 10.251.7.1/x: manifest unknown",
    "Error: initializing source docker://10.251.7.1/x:1: reading manifest 1: authentication required",
    "Error response from daemon: invalid reference format",
    "Error response from daemon: no matching manifest for linux/amd64 in the manifest list entries",
]
UNREACHABLE = [
    "Error response from daemon: Get \"https://r.example/v2/\": dial tcp 10.0.0.9:443: connect: connection refused",
    "Error response from daemon: Get \"https://r.example/v2/\": dial tcp: lookup r.example: no such host",
    "Error response from daemon: Get \"https://r.example/v2/\": net/http: TLS handshake timeout",
    "write /var/lib/docker/tmp/GetImageBlob1: no space left on device",
    "Error response from daemon: received unexpected HTTP status: 503 Service Unavailable",
]


@pytest.mark.parametrize("said", REFUSED)
def test_a_registry_refusing_the_pull_is_the_users_failure_exit_1(said):
    error = host_failure(Status.PULL_FAILED, LABEL, said, image="x:1", how="")
    assert isinstance(error, ClientError) and error.exit_code == 1
    assert error.failure_reason == f"ClientError: {LABEL}: cannot pull image x:1: {said}"


@pytest.mark.parametrize("said", UNREACHABLE)
def test_a_registry_out_of_reach_or_a_full_disk_is_the_machines_failure_exit_75(said):
    error = host_failure(Status.PULL_FAILED, LABEL, said, image="x:1", how="")
    assert isinstance(error, HostError) and error.exit_code == MACHINERY_EXIT
    assert error.message == f"{LABEL}: cannot pull image x:1: {said}"


def test_words_of_the_machine_win_over_words_of_a_refusal():
    said = "unauthorized: authentication required; then: no space left on device"
    assert host_failure(Status.PULL_FAILED, LABEL, said, image="x:1", how="").exit_code == MACHINERY_EXIT


def test_a_start_without_a_gpu_driver_is_the_hosts_setup_and_any_other_refusal_the_users():
    gpu = host_failure(Status.START_FAILED, LABEL, 'could not select device driver "" with capabilities: [[gpu]]')
    assert isinstance(gpu, HostError) and "install the NVIDIA Container Toolkit" in gpu.message
    other = host_failure(Status.START_FAILED, LABEL, "exec: \"/nope\": no such file or directory")
    assert isinstance(other, ClientError)
    assert other.message == f"{LABEL}: docker could not start the container: exec: \"/nope\": no such file or directory"
    assert host_failure(Status.START_FAILED, LABEL, "").message.endswith("no reason given")


def test_every_status_has_a_row_and_every_row_names_the_host():
    assert {row.status for row in FAILURES} == set(Status)
    for row in FAILURES:
        said = row.words[0] if row.words else "docker said so"
        error = host_failure(row.status, LABEL, said)
        assert error is not None and error.message.startswith(f"{LABEL}: ")
        assert "{" not in error.message  # every field filled (a missing one reads `?`)
        assert error.exit_code == (MACHINERY_EXIT if row.kind is HostError else 1)


def test_statuses_outside_the_table_are_the_callers_to_explain():
    assert host_failure(0, LABEL, "") is None
    assert host_failure(1, LABEL, "x") is None
    assert host_failure(-1, LABEL, "x") is None
    assert host_failure(None, LABEL, "x") is None


def test_the_messages_use_the_callers_facts():
    error = host_failure(Status.IN_USE, LABEL, "run0\nrun-other\n", job_dir="/w/j/algo-2", job_name="j")
    assert isinstance(error, ClientError)
    assert error.message == (f"{LABEL}: the job directory /w/j/algo-2 belongs to another run of a job named j "
                             f"(run run-other); choose another name with --name, or remove leftovers with "
                             f"`fleet gc`")
    timeout = host_failure(Status.DOCKER_TIMEOUT, LABEL, "", docker_timeout=7, doing="loading the image x")
    assert timeout.message == f"{LABEL}: docker did not answer within 7 s (loading the image x)"
