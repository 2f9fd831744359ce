"""fleet check and fleet gc: what the hosts reported → rows, and what to remove (pure)."""

from __future__ import annotations

from fleet.runtime.hostcare import Leftover, check_row, leftovers_to_remove, parse_leftovers

GIB_KB = 1024 * 1024
ME = "ctl-a:/home/zq/.fleet"


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


LISTING = "\n".join([
    "container\tc1\tjob-a-algo-1\tjob-a\trun1\t" + ME,
    "container\tc2\tjob-b-algo-1\tjob-b\trunB\tctl-b:/srv/fleet",
    "container\tc3\told-algo-2\told\t\t",
    "container\tbroken line",
    "dir\t/var/lib/fleet/job-a/algo-1\trun1\t" + ME,
    "dir\t/var/lib/fleet/gone/algo-3\t\t",
    "dir\t/elsewhere/x/algo-1\t\t",
    "dir\t/var/lib/fleet/job-c/notalgo\t\t",
])


def test_the_listing_is_parsed_and_directories_outside_the_workdir_are_ignored():
    found = parse_leftovers(LISTING, "/var/lib/fleet/")
    assert [(f.kind, f.ref, f.job, f.run) for f in found] == [
        ("container", "c1", "job-a", "run1"), ("container", "c2", "job-b", "runB"),
        ("container", "c3", "old", ""), ("dir", "/var/lib/fleet/job-a/algo-1", "job-a", "run1"),
        ("dir", "/var/lib/fleet/gone/algo-3", "gone", "")]


def test_only_this_controllers_jobs_that_do_not_run_are_removed():
    found = parse_leftovers(LISTING, "/var/lib/fleet")
    remove, kept = leftovers_to_remove(found, running={"job-a": "run1"}, controller=ME)
    assert [f.ref for f in remove] == ["c3", "/var/lib/fleet/gone/algo-3"]
    assert [(f.ref, why) for f, why in kept] == [
        ("c1", "its job is running"), ("c2", "belongs to another fleet (ctl-b:/srv/fleet)"),
        ("/var/lib/fleet/job-a/algo-1", "its job is running")]


def test_an_earlier_run_of_a_running_jobs_name_is_removed():
    stale = Leftover("container", "c9", "job-a", "run0", ME, "job-a-algo-1")
    remove, _ = leftovers_to_remove([stale], running={"job-a": "run1"}, controller=ME)
    assert remove == [stale]


def test_an_ended_job_leaves_everything_to_remove():
    found = parse_leftovers(LISTING, "/var/lib/fleet")
    remove, _ = leftovers_to_remove(found, running={}, controller=ME)
    assert {f.job for f in remove} == {"job-a", "old", "gone"}
