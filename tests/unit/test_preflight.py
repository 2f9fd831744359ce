"""fleet check: what each host reported → its row, every problem named (pure)."""

from __future__ import annotations

from fleet.runtime.preflight import check_row

GIB_KB = 1024 * 1024


def test_a_host_with_everything_passes():
    row = check_row("h1", {"docker": "ok 20.10.24", "image": "present", "writable": "yes",
                           "free_kb": str(50 * GIB_KB)}, need_kb=30 * GIB_KB, image="zq:1", gpus=False)
    assert row.ok, row.problems
    assert (row.docker, row.image, row.disk, row.gpus) == ("20.10.24", "present", "50.0 GiB free", "-")


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
