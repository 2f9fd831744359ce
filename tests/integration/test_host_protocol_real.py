"""The scenario table of the host protocol (hostprotocol.scenarios) against the real session
(fleet/host/session.sh and the rest) on the bed's real engines, through the real CLI. The
same table runs against the fake host in the unit session (tests/unit/test_host_protocol_fake.py):
what the user sees must be the same."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from conftest import make_job
from hostprotocol.scenarios import SCENARIOS, Scenario

WAIT = 60  # seconds a step may wait for the bed (a bound: the test fails past it)


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.1)


class RealBed:
    """The scenario's job on the bed's h1 and h2, through `fleet run`."""

    def __init__(self, fleet, cluster, scenario: Scenario) -> None:
        self.fleet, self.cluster, self.scenario = fleet, cluster, scenario
        branches = " ".join(f"algo-{k}) {program.shell()};;" for k, program in enumerate(scenario.programs, start=1))
        self.job = make_job(f"case $(hostname) in {branches} esac", count=2)
        self.name = self.job["ProcessingJobName"]
        doc = cluster.inventory_doc()
        doc["hosts"] = doc["hosts"][:2]
        self.inventory = cluster.write_inventory(fleet.tmp / "hosts-2.yaml", doc)
        self.frozen: int | None = None  # the pid of h2's engine while SIGSTOPped
        self.exit: int | None = None
        self.stderr = ""

    def _stored(self, k: int) -> bytes:
        path = self.fleet.home / "jobs" / self.name / "logs" / f"algo-{k}.log"
        return path.read_bytes() if path.exists() else b""

    def _thaw(self) -> None:
        if self.frozen is not None:
            os.kill(self.frozen, signal.SIGCONT)
            self.frozen = None

    def play(self) -> None:
        try:
            self._play()
        finally:
            self._thaw()  # never leave an engine frozen

    def _play(self) -> None:
        scenario, hosts = self.scenario, self.cluster.hosts
        process = self.fleet.start("run", "--inventory", str(self.inventory), str(self.fleet.write_job(self.job)),
                                   "--stop-grace", str(scenario.stop_grace),
                                   "--docker-timeout", str(scenario.docker_timeout))
        for step in scenario.steps:
            if step == "running":
                _until(lambda: all(self._stored(k).startswith(f"{p.first}\n".encode())
                                   for k, p in enumerate(scenario.programs, start=1)), "every container ran")
            elif step == "stop":
                process.send_signal(signal.SIGINT)
            elif step == "stop-again":
                time.sleep(1.5)  # `docker stop` under way (the containers ignore its SIGINT)
                assert process.poll() is None
                process.send_signal(signal.SIGINT)
            elif step == "cut-1":
                hosts[0].stop_sshd()
                try:
                    time.sleep(3)
                finally:
                    hosts[0].start_sshd()
            elif step == "freeze-2":
                self.frozen = hosts[1].engine_pid()
                os.kill(self.frozen, signal.SIGSTOP)
            elif step == "prepared-1":
                _until(lambda: hosts[0].containers(self.name) != [], "algo-1's container was created")
            elif step == "controller-dies":
                process.send_signal(signal.SIGKILL)
                process.communicate(timeout=30)
                _until(lambda: hosts[0].containers(self.name) == [] and not (hosts[0].workdir / self.name).exists(),
                       "algo-1's host removed the container and the job directory (no go came)")
            else:
                raise AssertionError(f"unknown step {step}")
        if process.returncode is None:
            _, self.stderr = process.communicate(timeout=180)
            self.exit = process.returncode
        for step in scenario.after:
            if step == "thaw-2":
                self._thaw()
            elif step == "attach":
                attached = self.fleet("attach", self.name, timeout=180)
                self.exit, self.stderr = attached.returncode, attached.stderr
            elif step == "gc":
                gc = self.fleet("gc", "--inventory", str(self.inventory), timeout=180)
                assert gc.returncode == 0, gc.stderr
            else:
                raise AssertionError(f"unknown step {step}")


# What the table found: `fleet attach` of a job whose controller died before go never
# connected to the hosts before cleaning up ("cleanup incomplete: ... not connected"), leaving
# algo-2's job directory on h2; ScriptedTransport was connected from the start, so the fake
# never showed it. Instance.clean_up connects first now, and ScriptedTransport starts
# disconnected as SSH does (test_job_lifecycle's take-over test fails without that connect).
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_the_real_session_plays_the_scenario_as_the_fake_host_does(fleet, cluster, scenario):
    bed = RealBed(fleet, cluster, scenario)
    bed.play()
    assert bed.exit is not None
    scenario.seen.check(fleet.record(bed.name), bed.exit, [bed._stored(1), bed._stored(2)], bed.stderr)
    left = cluster.leftovers(bed.name)
    if left:  # tidied for the tests after this one (the `fleet` fixture checks every job); this one fails
        for host in cluster.hosts:
            for name in host.containers(bed.name):
                host.docker("rm", "--force", name, check=False)
            shutil.rmtree(host.workdir / bed.name, ignore_errors=True)
    assert left == [], bed.stderr
