"""fleet gc: the hosts' listing parsed, and what goes: this controller's, of jobs not running (pure)."""

from __future__ import annotations

from fleet.runtime.leftovers import Leftover, leftovers_to_remove, parse_leftovers

ME = "ctl-a:/home/zq/.fleet"


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
