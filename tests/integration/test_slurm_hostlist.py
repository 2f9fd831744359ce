"""Hostlist expressions against Slurm itself: fleet's expansion is `scontrol show hostnames`'
(a local operation of Slurm's client, no controller needed), name for name and in order, as
the order decides which node is algo-1. A bad expression stops the CLI with exit 2 naming it.

Needs Slurm's client tools (Debian's slurm-client); without scontrol the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.hostlist import expand

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("scontrol") is None,
                                reason="scontrol (Slurm's client, Debian's slurm-client) is not installed")

EXPRESSIONS = [
    "gpu-01",
    "gpu-[01-04,07],dgx[1-2]",
    "gpu-[07,01-03]",                  # the expression's order, not sorted
    "b1,a1",
    "n[3,1,2]",
    "n[1,3-4,2]",
    "n[1-3],n2",                       # duplicates kept
    "n[001-012]",                      # padding
    "n[01-3]",                         # the low end's width pads
    "n[1-010]",
    "n[9-11]",
    "n[099-101]",
    "n[00-02]",
    "n[0001-0003,7]",
    "n[1-3,05-06]",
    "n[5]",
    "n[010-012],n[1-3]",
    "r[1-2]n[1-3]",                    # several brackets
    "r[1-2]n[01-03]",
    "a[1-2][3-4]",
    "a[1-2]-b[3-4]",
    "n[1-2]-[3-4]-[5-6]",
    "x[1-2]y[3-4]z[5-6]",              # three brackets: Slurm's own nesting
    "a[1-2]b[3-4]c[5-6]d[7-8]",
    "r[1-2]n[1,3]",
    "n[1-2],m,n[3-4]",                 # plain names between ranges
    "login,gpu-[1-2],dgx[01-02]x[1-2],head",
    "10.0.0.[1-3]",
    "node_a.b-c[1-2]",
    "[1-2]",
    "n[1-100]",
]

# Refused by both (fleet is stricter still; see fleet/hostlist.py's docstring).
REFUSED_BY_BOTH = ["a[3-1]", "a[]", "a[x-y]", "n[1-2,]", "n[,1]", "n[1--2]", "n[-1]", "n[1-2]x",
                   "n[1-2].ib", "n[[1]]", "n[1]2", "n[1-70000]"]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict[str, str]:
    """scontrol reads a slurm.conf before anything (else it looks for a controller in DNS);
    a minimal one does for hostnames."""
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=fleet-oracle\nSlurmctldHost=localhost\n")
    return {**os.environ, "SLURM_CONF": str(conf)}


def scontrol_hostnames(expression: str, env: dict[str, str]) -> list[str] | None:
    """Slurm's expansion, or None where Slurm refuses the expression (it says so on stderr, exit 0)."""
    result = subprocess.run(["scontrol", "show", "hostnames", expression], capture_output=True, text=True,
                            env=env, timeout=30)
    if "Invalid hostlist" in result.stderr or "Invalid hostlist" in result.stdout:
        return None
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_oracle_covers_twenty_expressions():
    assert len(EXPRESSIONS) >= 20


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_expansion_agrees_with_scontrol(expression, slurm_env):
    slurm = scontrol_hostnames(expression, slurm_env)
    assert slurm, f"scontrol refused {expression!r}"
    assert expand(expression) == slurm


@pytest.mark.parametrize("expression", REFUSED_BY_BOTH)
def test_what_slurm_refuses_fleet_refuses(expression, slurm_env):
    assert scontrol_hostnames(expression, slurm_env) is None
    with pytest.raises(ValueError, match="hostlist expression"):
        expand(expression)


@pytest.mark.parametrize("verb", [["check"], ["run", "--dry-run"]])
def test_a_bad_expression_stops_the_cli_with_exit_2_naming_it(verb, tmp_path):
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text('hosts: "gpu-[01-04,07],dgx[3-1]"\n')
    job = tmp_path / "job.json"
    job.write_text('{"ProcessingJobName": "bad-hostlist", "AppSpecification": {"ImageUri": "busybox:1"}, '
                   '"ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, '
                   '"InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}}}')
    run = subprocess.run([sys.executable, "-m", "fleet", *verb, "--inventory", str(inventory),
                          *([str(job)] if verb[0] == "run" else [])],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "FLEET_HOME": str(tmp_path / "home")})
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    assert f"{inventory}: hosts: hostlist expression 'gpu-[01-04,07],dgx[3-1]'" in run.stderr
    assert "runs backwards" in run.stderr
