"""Slurm hostlist expressions: the names in `scontrol show hostnames` order (the integration
test tests/integration/test_slurm_hostlist.py holds these against Slurm itself)."""

from __future__ import annotations

import pytest

from fleet.hostlist import MAX_HOSTS, expand


@pytest.mark.parametrize(("expression", "names"), [
    ("gpu-01", ["gpu-01"]),
    ("gpu-[01-04,07],dgx[1-2]", ["gpu-01", "gpu-02", "gpu-03", "gpu-04", "gpu-07", "dgx1", "dgx2"]),
    ("n[001-003]", ["n001", "n002", "n003"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[099-101]", ["n099", "n100", "n101"]),
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),  # the low end's width pads, not the high end's
    ("n[01-3]", ["n01", "n02", "n03"]),
    ("r[1-2]n[01-03]", ["r1n01", "r1n02", "r1n03", "r2n01", "r2n02", "r2n03"]),
    ("a[1-2][3-4]", ["a13", "a14", "a23", "a24"]),
    ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ("[1-2]", ["1", "2"]),
    ("n[5]", ["n5"]),
    ("n[1-2],m,n[3-4]", ["n1", "n2", "m", "n3", "n4"]),
])
def test_expansion(expression, names):
    assert expand(expression) == names


def test_the_expressions_order_is_kept_not_sorted():
    assert expand("gpu-[07,01-03]") == ["gpu-07", "gpu-01", "gpu-02", "gpu-03"]
    assert expand("b1,a1") == ["b1", "a1"]


def test_duplicates_are_kept_as_slurm_keeps_them():
    assert expand("n[1-3],n2") == ["n1", "n2", "n3", "n2"]


def test_three_brackets_nest_as_slurm_nests_them():
    # The next-to-last bracket varies slowest, the last fastest (Slurm 22.05's recursion).
    assert expand("x[1-2]y[3-4]z[5-6]") == ["x1y3z5", "x1y3z6", "x2y3z5", "x2y3z6",
                                            "x1y4z5", "x1y4z6", "x2y4z5", "x2y4z6"]
    assert expand("a[1-2]b[3-4]c[5-6]d[7-8]")[:5] == ["a1b3c5d7", "a1b3c5d8", "a2b3c5d7", "a2b3c5d8", "a1b4c5d7"]


@pytest.mark.parametrize(("expression", "reason"), [
    ("a[3-1]", "runs backwards"),
    ("a[1-2", "never closed"),
    ("a]", "without its '['"),
    ("n[[1]]", "inside a bracket"),
    ("a,,b", "part 2 is empty"),
    ("a,", "part 2 is empty"),
    (",a", "part 1 is empty"),
    ("", "names no host"),
    ("n[]", "not a number nor a range"),
    ("n[1-2,]", "not a number nor a range"),
    ("n[1-]", "not a number nor a range"),
    ("n[-1]", "not a number nor a range"),
    ("n[x-y]", "not a number nor a range"),
    ("n[1-2]x", "follows the last bracket"),
    ("a b", "' ' in 'a b'"),
    ("a%b", "'%' in 'a%b'"),
])
def test_a_bad_expression_is_refused_naming_it(expression, reason):
    with pytest.raises(ValueError) as caught:
        expand(expression)
    assert f"hostlist expression {expression!r}" in str(caught.value)
    assert reason in str(caught.value)


def test_an_expression_of_too_many_hosts_is_refused_before_it_is_built():
    with pytest.raises(ValueError, match=f"more than {MAX_HOSTS} hosts"):
        expand("n[0-999999999]")
    with pytest.raises(ValueError, match=f"more than {MAX_HOSTS} hosts"):
        expand("r[0-999]n[0-999]")
