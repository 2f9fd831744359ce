"""A fake host for the lifecycle tests: it plays fleet's host protocol (fleet/host: the
session, resume, `docker stop`, `docker kill`, cleanup) in Python over a ScriptedTransport,
for one configurable `Container`, and records what it was asked (`commands`, `answers`,
`resumed_at`), so a test reads like the contract.

It is a second implementation of the host session, kept honest by one table of scenarios
(hostprotocol.scenarios) that runs against it (tests/unit/test_host_protocol_fake.py) and against
the real session on the test bed (tests/integration/test_host_protocol_real.py). It lives in
tests/, not in the package: nothing of fleet's runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleet.host import Status
from fleet.inventory import Host
from fleet.plan import RUN_LABEL
from fleet.transport.scripted import ALWAYS, ScriptedCommand, ScriptedTransport


@dataclass
class Container:
    """What the job's container does on a FakeHost once `docker start`ed.

    Its log: `log` (bytes or chunks), the chunks spread evenly over `runs_for` seconds, the
    first at the start; then it exits with `exit_code`, having written `message` (the first
    1 KB of /opt/ml/output/message; None: no such file). `docker stop` sends SIGINT: if
    `exits_on_stop`, it writes `stop_log` and exits at once with `stop_code`; otherwise it
    ignores it and `docker stop` kills it (137) after `grace` seconds. `docker kill`: 137 at
    once."""

    log: bytes | Sequence[bytes] = b""
    exit_code: int = 0
    message: bytes | None = None
    runs_for: float = 0.0
    exits_on_stop: bool = True
    stop_code: int = 130
    stop_log: bytes = b""
    grace: float = 30.0

    @property
    def chunks(self) -> list[bytes]:
        return [self.log] if isinstance(self.log, bytes) else list(self.log)

    @property
    def full_log(self) -> bytes:
        """Every byte the container writes if it runs to its end."""
        return b"".join(self.chunks)


@dataclass
class _Box:
    """The container's state on the host."""

    spec: Container
    name: str
    run: str  # its RUN_LABEL
    state: str = "created"  # created, running, exited, removed
    started_at: float = 0.0
    ended_at: float | None = None
    code: int | None = None
    extra: bytes = b""  # written after the scheduled chunks (stop_log)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _times(self) -> list[float]:
        chunks = self.spec.chunks
        step = self.spec.runs_for / len(chunks) if chunks else 0.0
        return [self.started_at + i * step for i in range(len(chunks))]

    def poll(self) -> None:
        """Bring the state up to now (the natural exit)."""
        now = asyncio.get_running_loop().time()
        if self.state == "running" and now >= self.started_at + self.spec.runs_for:
            self.end(self.spec.exit_code, self.started_at + self.spec.runs_for)

    def end(self, code: int, when: float | None = None, extra: bytes = b"") -> None:
        if self.state != "running":
            return
        self.state = "exited"
        self.code = code
        self.ended_at = asyncio.get_running_loop().time() if when is None else when
        self.extra = extra
        self.notify()

    def log(self) -> bytes:
        """Its log so far."""
        self.poll()
        if self.state == "created":
            return b""
        until = self.ended_at if self.ended_at is not None else asyncio.get_running_loop().time()
        written = [chunk for chunk, at in zip(self.spec.chunks, self._times()) if at <= until]
        return b"".join(written) + self.extra

    async def next_change(self) -> None:
        """Wait for its next log chunk or exit, or a stop, kill or removal."""
        self.poll()
        if self.state != "running":
            await self.changed.wait()
            return
        now = asyncio.get_running_loop().time()
        due = [at for at in [*self._times(), self.started_at + self.spec.runs_for] if at > now]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(due) - now) if due else None):
                await self.changed.wait()


FAKE_IMAGE_ID = "sha256:" + "f" * 64


class FakeHost:
    """A host that answers fleet's job commands as fleet/host's scripts do, for one Container.

    `transport(host, label)` is the JobExecution's transport factory for this host (one
    ScriptedTransport per call, kept in `transports`). It answers:

        fleet-session   as session.sh: reads the job's files from stdin (a line of byte
                        counts, then the bytes: `received_files`), `fleet:written`,
                        `fleet:prepared` (or exit
                        `fail_preparation` having said `said`); wait for go (anything else,
                        or EOF: remove the container and the job directory, exit 0); start
                        the container, `fleet:started`, then supervise (below)
        fleet-resume    as resume.sh: GONE (32) or NOT_STARTED (33) unless this run's
                        container was started; else `fleet:started` and supervise from the
                        byte offset given
        docker stop     SIGINT (see Container); returns once the container has exited
        docker kill     the container exits 137 at once
        fleet-cleanup   removes the container and the job directory; exit 0
        fleet-image-have  `present image_id` if `holds_image`, else `layers 0`

    supervise (supervise.sh): the container's log on stdout from the offset on, as it is
    written; then `fleet:exit-code:N`, `fleet:message:N` + N bytes (if a message),
    `fleet:exited`; then wait for clean / keep (EOF: leave everything, exit 0): remove the
    container (and the directory for clean), `fleet:cleaned`.

    What happened: `commands` (each command's name: `fleet-session`, `docker stop`, ...,
    `fleet-resume`), `answers` (the stdin lines the sessions read: go, abort, clean, keep;
    EOF), `resumed_at` (the offset of each resume), `events` (all of these, and `created`,
    `running`, `cut`, in order; `got` waits for one), `container` (its state: None before
    `docker create`, then created / running / exited / removed), `directory` (the job
    directory: None, written, removed).

    Trouble: `unreachable` (every connection attempt fails), `fail_preparation` (a Status:
    WRITE_FAILED, NO_SPACE and IN_USE before `fleet:written`, the others after it), `cut_at`
    (the connection is cut once the sessions have sent that many bytes of the log, the
    bytes before it sent; then `refuse_after_cut` connection attempts fail; ALWAYS: all);
    on demand: `cut` (now), `freeze_engine` / `thaw_engine` (a SIGSTOPped dockerd: docker
    calls hang, cleanup's bounded ones give up after --docker-timeout: DOCKER_SILENT).
    """

    def __init__(self, container: Container | None = None, *, unreachable: bool = False,
                 fail_preparation: Status | None = None, said: bytes = b"",
                 cut_at: int | None = None, refuse_after_cut: int | None = 0) -> None:
        self.spec = container or Container()
        self.unreachable = unreachable
        self.fail_preparation = fail_preparation
        self.said = said
        self.cut_at = cut_at
        self.refuse_after_cut = refuse_after_cut
        self.transports: list[ScriptedTransport] = []
        self.commands: list[str] = []
        self.answers: list[str] = []
        self.resumed_at: list[int] = []
        self.events: list[str] = []  # everything above, and created, running, cut, in order
        self.directory: str | None = None
        self.received_files: list[bytes] = []  # what the session read first: each file, then the env file
        self.image_id = FAKE_IMAGE_ID  # the ID of the image this host has for the job
        self.holds_image = False  # the image by the job's name: `try` finds it (present beats pull)
        self.image_step: tuple[str, str] | None = None  # how the controller said to get it (verb, reference)
        self.tried: str | None = None  # the name a `try` asked for
        self.received_auth = b""  # the registry credentials that came with a pull
        self._box: _Box | None = None
        self._heard = asyncio.Event()
        self._engine = asyncio.Event()  # set: the engine answers (freeze_engine: it hangs, as SIGSTOPped)
        self._engine.set()

    # -- what a test looks at -------------------------------------------------------------------
    @property
    def container(self) -> str | None:
        if self._box is None:
            return None
        self._box.poll()
        return self._box.state

    @property
    def exit_code(self) -> int | None:
        """The container's exit code, once it has exited."""
        if self._box is None:
            return None
        self._box.poll()
        return self._box.code

    def log(self) -> bytes:
        """The container's log so far (`docker logs`)."""
        return self._box.log() if self._box is not None else b""

    async def got(self, name: str) -> None:
        """Wait until a command of that name (`docker stop`, ...), that stdin answer (`go`) or
        that event (`created`, `running`, `cut`: the connection was cut) has come."""
        while name not in self.events:
            heard = self._heard
            await heard.wait()

    async def running(self) -> None:
        """Wait until the container runs."""
        while self.container != "running":
            heard = self._heard
            await heard.wait()

    def started_container(self, name: str, run: str, *, ago: float = 0.0) -> None:
        """A container already started `ago` seconds ago by another fleet process (for a
        take-over): `name` and `run` are the plan's container and run id."""
        self._box = _Box(self.spec, name, run, state="running",
                         started_at=asyncio.get_running_loop().time() - ago)
        self.directory = "written"

    # -- trouble on demand ------------------------------------------------------------------------
    def freeze_engine(self) -> None:
        """The engine stops answering (a SIGSTOPped dockerd): the session's image step,
        `docker stop` and `docker kill` hang, the log stops flowing, and cleanup gives docker
        its --docker-timeout, as cleanup.sh's bounded calls do."""
        self._engine.clear()

    def thaw_engine(self) -> None:
        """The engine answers again: whatever waited for it goes on."""
        self._engine.set()

    def cut(self, refuse: int | None = 0) -> None:
        """Cut the connection now (every command on it is lost); then `refuse` connection
        attempts fail (ALWAYS: all)."""
        self._cut(self.transports[-1], refuse)

    # -- the transport ------------------------------------------------------------------------------
    def transport(self, host: Host, label: str) -> ScriptedTransport:
        """A transport to this host (JobExecution's `transports` factory)."""
        transport = ScriptedTransport(host, label, self._serve)
        if self.unreachable:
            transport.fail_connects(ALWAYS)
        self.transports.append(transport)
        return transport

    def _heard_of(self, name: str, into: list[str] | None = None) -> None:
        """Record a happening (in `events`, and `into`) and wake whoever waits for one."""
        self.events.append(name)
        if into is not None:
            into.append(name)
        self._heard.set()
        self._heard = asyncio.Event()

    async def _serve(self, command: ScriptedCommand) -> int:
        argv = command.argv
        script = command.script
        if script is None:
            verb = argv[-2] if len(argv) >= 2 else ""
            self._heard_of(f"docker {verb}", self.commands)
            if verb == "stop":
                return await self._stop(command, argv[-1])
            if verb == "kill":
                return await self._kill(command, argv[-1])
            command.write_stderr(f"fake host: unknown command {argv[0]}\n".encode())
            return 127
        self._heard_of(script, self.commands)
        args = command.args
        docker_timeout = int(args[0])
        args = args[2 + int(args[1]):]  # after the docker prelude's TIMEOUT COUNT WORDS...
        if script == "fleet-session":
            return await self._session(command, args)
        if script == "fleet-resume":
            return await self._resume(command, args)
        if script == "fleet-cleanup":
            return await self._cleanup(args, docker_timeout)
        if script == "fleet-image-have":
            command.write_stdout(f"present {self.image_id}\n".encode() if self.holds_image else b"layers 0\n")
            return 0
        command.write_stderr(f"fake host: no {script}\n".encode())
        return 127

    async def _session(self, command: ScriptedCommand, args: list[str]) -> int:
        name, run = args[8], args[9]
        failing = self.fail_preparation
        if failing in (Status.WRITE_FAILED, Status.NO_SPACE, Status.IN_USE):
            command.write_stderr(self.said)
            return int(failing)
        # The job's files and env file come first on stdin: a line of byte counts, the bytes.
        header = await command.read_stdin_line()
        counts = [int(word) for word in header.split()]
        received = await command.read_stdin_bytes(sum(counts) + 1)  # the pieces, then a newline
        if not header.endswith(b"\n") or len(received) < sum(counts) + 1 or not received.endswith(b"\n"):
            command.write_stderr(b"the job's files were cut short on stdin\n")
            return int(Status.WRITE_FAILED)
        self.received_files = [received[sum(counts[:i]):sum(counts[:i + 1])] for i in range(len(counts))]
        self.directory = "written"
        command.write_stderr(b"fleet:written\n")
        # Then how to get the image: `use ID 0`, `pull REF N` and N bytes of credentials, or
        # `try NAME 0` (`image-missing` unless it holds the image, then pull or abort).
        verb, _, rest = (await command.read_stdin_line()).rstrip(b"\n").decode().partition(" ")
        reference, _, count = rest.partition(" ")
        if verb in ("use", "try", "pull"):
            await self._engine.wait()  # the image is looked for first (image_id, config_image, check_image)
        if verb == "try":
            self.tried = reference
            if self.holds_image:
                verb = "use"
            else:
                command.write_stderr(b"fleet:image-missing\n")
                verb, _, rest = (await command.read_stdin_line()).rstrip(b"\n").decode().partition(" ")
                reference, _, count = rest.partition(" ")
                if verb != "pull":
                    verb = "abort"
        if verb not in ("use", "pull") or not count.isdigit():
            self._heard_of(verb or "EOF", self.answers)
            self.directory = "removed"
            return 0
        self.image_step = (verb, reference)
        self.received_auth = await command.read_stdin_bytes(int(count))
        self._heard_of(f"image {verb}")
        command.write_stderr(f"fleet:image {self.image_id} {'present' if verb == 'use' else 'pulled'}\n".encode())
        await asyncio.sleep(0)
        if failing is not None:
            command.write_stderr(self.said)
            return int(failing)
        await self._engine.wait()
        self._box = _Box(self.spec, name, run)
        self._heard_of("created")
        command.write_stderr(b"fleet:prepared\n")
        answer = (await command.read_stdin_line()).rstrip(b"\n").decode()
        self._heard_of(answer or "EOF", self.answers)
        if answer != "go":
            self._box.state = "removed"
            self.directory = "removed"
            return 0
        box = self._box
        box.state, box.started_at = "running", asyncio.get_running_loop().time()
        self._heard_of("running")
        command.write_stderr(b"fleet:started\n")
        return await self._supervise(command, box, 0)

    async def _resume(self, command: ScriptedCommand, args: list[str]) -> int:
        name, run, offset = args[0], args[5], int(args[6])
        assert args[4] == RUN_LABEL
        self.resumed_at.append(offset)
        box = self._box
        if box is None or box.state == "removed" or box.name != name or box.run != run:
            command.write_stderr(f"Error: No such container: {name}\n".encode())
            return int(Status.GONE)
        if box.state == "created":
            return int(Status.NOT_STARTED)
        command.write_stderr(b"fleet:started\n")
        return await self._supervise(command, box, offset)

    async def _supervise(self, command: ScriptedCommand, box: _Box, offset: int) -> int:
        sent = offset
        while True:
            await self._engine.wait()
            log = box.log()
            if len(log) > sent:
                if self.cut_at is not None and sent < self.cut_at <= len(log):
                    command.write_stdout(log[sent:self.cut_at])
                    await asyncio.sleep(0)
                    self._cut(command.transport, self.refuse_after_cut)
                    return 0  # ignored: the channel is lost
                command.write_stdout(log[sent:])
                sent = len(log)
            if box.state != "running":
                break
            await box.next_change()
        if box.state == "removed":
            command.write_stderr(b"Error: No such container\n")
            return int(Status.WAIT_FAILED)
        command.write_stderr(f"fleet:exit-code:{box.code}\n".encode())
        message = self.spec.message
        if message is not None:
            command.write_stderr(f"fleet:message:{len(message[:1024])}\n".encode() + message[:1024])
        command.write_stderr(b"fleet:exited\n")
        answer = (await command.read_stdin_line()).rstrip(b"\n").decode()
        if not answer:
            return 0  # EOF: everything stays, for a controller that comes back
        self._heard_of(answer, self.answers)
        box.state = "removed"
        box.notify()
        if answer == "clean":
            self.directory = "removed"
        command.write_stderr(b"fleet:cleaned\n")
        return 0

    def _cut(self, transport: ScriptedTransport, refuse: int | None) -> None:
        self.cut_at = None
        transport.fail_connects(refuse)
        transport.cut()
        self._heard_of("cut")

    async def _stop(self, command: ScriptedCommand, name: str) -> int:
        await self._engine.wait()
        box = self._box
        if box is None or box.name != name or box.state in ("removed", "created"):
            command.write_stderr(f"Error response from daemon: No such container: {name}\n".encode())
            return 1
        box.poll()
        if box.state == "running":
            if self.spec.exits_on_stop:
                box.end(self.spec.stop_code, extra=self.spec.stop_log)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.spec.grace):
                        while box.state == "running":
                            await box.next_change()
                box.end(137)
        command.write_stdout(f"{name}\n".encode())
        return 0

    async def _kill(self, command: ScriptedCommand, name: str) -> int:
        await self._engine.wait()
        box = self._box
        if box is None or box.name != name or box.state != "running":
            command.write_stderr(f"Error response from daemon: container {name} is not running\n".encode())
            return 1
        box.poll()
        box.end(137)
        command.write_stdout(f"{name}\n".encode())
        return 0

    async def _cleanup(self, args: list[str], docker_timeout: int) -> int:
        name, run, keep, started = args[0], args[5], args[6], args[7]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(docker_timeout):
                await self._engine.wait()
        if not self._engine.is_set():
            if started == "started":
                return int(Status.DOCKER_SILENT)  # it may run on: everything stays, for fleet gc
            if keep != "keep" and self.directory is not None:
                self.directory = "removed"
            return 0
        box = self._box
        if box is not None and box.name == name and box.run == run and box.state != "removed":
            box.poll()
            box.end(137)  # rm --force
            box.state = "removed"
            box.notify()
        if keep != "keep" and self.directory is not None:
            self.directory = "removed"
        return 0
