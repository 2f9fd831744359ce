"""One table of scenarios of the host protocol, run against the fake host (FakeHost, in the
unit session: tests/unit/test_host_protocol_fake.py) and the real session on a real engine (the
test bed: tests/integration/test_host_protocol_real.py), so the two cannot drift.

A scenario is a job of 2 hosts (algo-1 on h1, algo-2 on h2), what each host's container
does (a `Program`, which each side turns into its own container: a Container of the fake,
a shell script in the bed's busybox image), what happens meanwhile (`steps`, each side
carrying them out its way) and what the user then sees (`Seen`): the record's status and
FailureReason, `fleet run`'s exit code, each host's ExitCode and stored log, byte for byte.

Steps while `fleet run` runs (`steps`), in order:
  running          every container runs and its first line is in the stored log
  stop             the user stops the job (Ctrl-C)
  stop-again       once `docker stop` is under way, a second Ctrl-C (kill now)
  cut-1            algo-1's SSH connection is cut and the next attempt refused; it comes back
  freeze-2         algo-2's engine stops answering (SIGSTOP)
  prepared-1       algo-1's container is created (its session waits for go)
  controller-dies  the controller dies (SIGKILL), and algo-1's host removes what it had:
                   no `go` came, the session aborts
and once it has ended (`after`):
  thaw-2           algo-2's engine answers again
  attach           `fleet attach` takes the job over (its end is the one seen)
  gc               `fleet gc` removes what the job left (the record stays as it was)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    """What a container does: prints `lines` (each ends with a newline), `pause` seconds
    apart, writes `message` to /opt/ml/output/message (if any), then exits `exit_code`, or,
    if `runs`, runs on until stopped. SIGINT (`docker stop`): prints `on_sigint` and exits 0;
    None: ignored (docker kills it after the grace: 137)."""

    lines: tuple[str, ...]
    exit_code: int = 0
    pause: float = 0.0
    runs: bool = False
    on_sigint: str | None = "got-INT"
    message: str | None = None

    def shell(self) -> str:
        """The program as the busybox image's `sh -c` runs it."""
        trap = "trap '' INT" if self.on_sigint is None else f"trap 'echo {self.on_sigint}; exit 0' INT"
        parts = [trap]
        for i, line in enumerate(self.lines):
            if i and self.pause:
                parts.append(f"sleep {self.pause:g}")
            parts.append(f"echo {line}")
        if self.message is not None:
            parts.append(f"printf %s {self.message} > /opt/ml/output/message")
        parts.append("while :; do sleep 0.2; done" if self.runs else f"exit {self.exit_code}")
        return "; ".join(parts)

    @property
    def first(self) -> str:
        return self.lines[0]


@dataclass(frozen=True)
class Seen:
    """What the user sees once `fleet run` (or, after the controller's death, `fleet attach`)
    has ended. `reason` is the FailureReason, or its start when it ends with `...`; None:
    there is none. `logs` and `exit_codes` by host, algo-1 first (None: no ExitCode)."""

    status: str
    exit: int
    logs: tuple[str, ...]
    exit_codes: tuple[int | None, ...]
    reason: str | None = None
    message: str | None = None  # the record's ExitMessage
    said: tuple[str, ...] = ()  # on fleet's stderr

    def check(self, record: dict, exit: int, logs: list[bytes], stderr: str) -> None:
        """Assert the user saw this: the record (describe.json), the exit code, the stored
        logs and fleet's stderr."""
        assert (record["ProcessingJobStatus"], exit) == (self.status, self.exit), record.get("FailureReason")
        reason = record.get("FailureReason")
        if self.reason is not None and self.reason.endswith("..."):
            assert reason is not None and reason.startswith(self.reason[:-3]), reason
        else:
            assert reason == self.reason
        assert record.get("ExitMessage") == self.message
        hosts = record["Hosts"]
        codes = tuple(hosts[f"algo-{k}"].get("ExitCode") for k in range(1, len(self.exit_codes) + 1))
        assert codes == self.exit_codes
        assert [log.decode() for log in logs] == list(self.logs)
        for words in self.said:
            assert words in stderr, stderr


@dataclass(frozen=True)
class Scenario:
    name: str
    programs: tuple[Program, Program]
    seen: Seen
    steps: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    stop_grace: int = 30  # --stop-grace
    docker_timeout: int = 20  # --docker-timeout

    def __str__(self) -> str:
        return self.name


_UP = Program(("up",), runs=True)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("completes",
             (Program(("one", "two"), message="done"), Program(("three",))),
             Seen("Completed", 0, ("one\ntwo\n", "three\n"), (0, 0), message="done")),
    Scenario("fails",
             (_UP, Program(("working", "failing"), exit_code=3, pause=1.0)),  # algo-1's trap is set by then
             Seen("Failed", 1, ("up\ngot-INT\n", "working\nfailing\n"), (0, 3),
                  reason="AlgorithmError: algo-2 exited with code 3. See job logs for more information")),
    Scenario("stopped",
             (_UP, _UP),
             Seen("Stopped", 130, ("up\ngot-INT\n", "up\ngot-INT\n"), (0, 0)),
             steps=("running", "stop")),
    Scenario("killed",
             (Program(("stubborn",), runs=True, on_sigint=None),) * 2,
             Seen("Stopped", 130, ("stubborn\n", "stubborn\n"), (137, 137),
                  said=("second interrupt: killing the containers now",)),
             steps=("running", "stop", "stop-again"), stop_grace=600),
    Scenario("lost and resumed",
             (Program(("a", "b", "c", "d", "e", "f"), pause=1.0), Program(("other",))),
             Seen("Completed", 0, ("a\nb\nc\nd\ne\nf\n", "other\n"), (0, 0), said=("reconnected after",)),
             steps=("running", "cut-1")),
    Scenario("controller gone before go",
             (Program(("never",)), Program(("never",))),
             Seen("Failed", 1, ("", ""), (None, None),
                  reason="InternalServerError: the fleet process running the job ended before its containers "
                         "started"),
             steps=("freeze-2", "prepared-1", "controller-dies"), after=("thaw-2", "attach"), docker_timeout=60),
    Scenario("cleanup with a silent engine",
             (_UP, _UP),
             Seen("Stopped", 130, ("up\ngot-INT\n", "up\n"), (0, None),
                  said=("algo-2 (h2, ", "did not stop within", "cleanup incomplete: algo-2 (h2, ",
                        "docker did not answer within 2 s")),
             steps=("running", "freeze-2", "stop"), after=("thaw-2", "gc"), stop_grace=1, docker_timeout=2),
)
