"""fleet check: what each host reported → its row, every problem named (pure)."""

from __future__ import annotations

from fleet.runtime.preflight import ImageView, check_row, image_cell

GIB_KB = 1024 * 1024


def test_a_host_with_everything_passes():
    row = check_row("h1", {"docker": "ok 20.10.24", "image": "present sha256:0123456789abcdef0123", "writable": "yes",
                           "free_kb": str(50 * GIB_KB)}, need_kb=30 * GIB_KB, image="zq:1", gpus=False)
    assert row.ok, row.problems
    assert (row.docker, row.image, row.disk, row.gpus) == ("20.10.24", "present (sha256:0123456789ab)",
                                                           "50.0 GiB free", "-")


def test_the_image_column_says_present_pulled_with_which_auth_or_pushed_with_the_bytes():
    local = ImageView(local_id="sha256:" + "a" * 64, local_size=312_500_000, local_layers=3)
    assert image_cell("missing", "auto", local) == ("will be pushed (312.5 MB)", None)
    assert image_cell("missing", "auto", local, have=2) == (
        "will be pushed (1 of 3 layers, at most 312.5 MB)", None)
    assert image_cell("missing", "pull", ImageView(auth="ECR", digest="sha256:" + "b" * 64)) == (
        "will be pulled (auth: ECR, sha256:bbbbbbbbbbbb)", None)
    assert image_cell("missing", "auto", ImageView(auth="docker config")) == (
        "will be pulled (auth: docker config)", None)
    assert image_cell("missing", "push", ImageView())[0] == "FAIL"
    assert image_cell("missing", "pull", ImageView(problem="ECR GetAuthorizationToken: AccessDenied")) == (
        "FAIL", "ECR GetAuthorizationToken: AccessDenied")


def test_every_problem_of_a_host_is_named():
    row = check_row("h2", {"docker": "ok 24.0", "image": "pull access denied for zq", "writable": "no",
                           "free_kb": str(2 * GIB_KB), "gpus": "missing"},
                    need_kb=30 * GIB_KB, image="zq:1", gpus=True)
    assert not row.ok
    assert row.problems == ["image zq:1: pull access denied for zq", "workdir not writable",
                            "2.0 GiB free, VolumeSizeInGB needs 30 GiB", "GPUs: no NVIDIA runtime or CDI devices"]


def test_a_docker_that_does_not_answer_ends_the_row():
    row = check_row("h3", {"docker": "did not answer"}, need_kb=0, image=None, gpus=False)
    assert row.docker == "FAIL" and row.problems == ["docker: did not answer"]


def test_without_a_job_the_image_is_not_checked_and_any_free_space_passes():
    row = check_row("h1", {"docker": "ok 24.0", "writable": "yes", "free_kb": "10"}, need_kb=0, image=None, gpus=False)
    assert row.ok and row.image == "-"
