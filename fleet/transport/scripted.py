"""A transport for tests, as httpx's MockTransport: every command is answered by a Python
handler instead of a host. And a fake host that plays fleet's host scripts' protocol.

    async def handler(command: ScriptedCommand) -> int:
        if command.script == "fleet-archive":
            command.write_stdout(tar_bytes)
            return 0
        return await command.run_locally()  # anything else: the real argv, on this machine

    transport = ScriptedTransport(host, "algo-1 (h1, 10.0.0.1)", handler)

`ScriptedTransport` is the connection: it can be told to refuse connections (`fail_connects`)
and be cut (`cut`: every running command sees a lost channel, as with SSH), and it records
every argv started (`started`). Each `start` runs the handler as a task; what the handler
writes is what the controller reads, what the controller writes is what the handler reads,
the handler's return value is the exit status. A handler raising HostError at once is a
channel that could not be opened (start() raises it); `command.lose()` loses one command's
channel mid-way; `command.run_locally()` runs the argv for real (LocalTransport).

`FakeHost` is a whole host for lifecycle tests: its `transport` answers the commands fleet
sends a host during a job (fleet.host: the session, resume, `docker stop`, `docker kill`,
cleanup) the way the real scripts do, for one configurable `Container`, and it records what
it was asked (`commands`, `answers`, `resumed_at`), so a test reads like the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from fleet.errors import HostError
from fleet.fanout import all_of, task_group
from fleet.host import Status
from fleet.inventory import Host
from fleet.plan import RUN_LABEL
from fleet.transport.base import RemoteProcess, Transport
from fleet.transport.local import LocalTransport

Handler = Callable[["ScriptedCommand"], Awaitable[int]]

ALWAYS = None  # fail_connects(ALWAYS): every connection attempt fails until told otherwise


class ScriptedCommand:
    """One command as its handler sees it: the host's side of the channel.

    The controller's writes arrive on stdin (`read_stdin_line`, `read_stdin`, `stdin`); the
    handler's `write_stdout` / `write_stderr` are what the controller's reads return, in
    order, nothing lost or merged across the two streams. The handler's return value is the
    command's exit status (-1: ended by a signal, no status)."""

    def __init__(self, transport: ScriptedTransport, argv: Sequence[str]) -> None:
        self.transport = transport
        self.argv = list(argv)
        self._stdin = bytearray()  # everything received, ever
        self._stdin_read = 0  # how much of it the handler has read
        self._stdin_eof = False
        self._stdout = bytearray()  # written, not yet read by the controller
        self._stderr = bytearray()
        self._lost: HostError | None = None
        self._closed = False  # the controller abandoned the channel (RemoteProcess.close)
        self._ended = False  # the handler returned (or raised)
        self._status = -1
        self._failure: BaseException | None = None  # what the handler raised (not a HostError)
        self._refused = False  # the handler raised HostError
        self._lost_raises = True  # reads raise _lost (else they end)
        self._changed = asyncio.Event()

    # -- what the command is ------------------------------------------------------------------
    @property
    def script(self) -> str | None:
        """The host script's name (`fleet-session`, ...): argv[3] of `sh -c TEXT NAME ...`;
        None for any other argv (`docker stop NAME`)."""
        if len(self.argv) >= 4 and self.argv[:2] == ["sh", "-c"]:
            return self.argv[3]
        return None

    @property
    def args(self) -> list[str]:
        """The arguments: after the script's name for `sh -c TEXT NAME ARGS...`, else argv[1:]."""
        return self.argv[4:] if self.script is not None else self.argv[1:]

    @property
    def label(self) -> str:
        return self.transport.label

    # -- stdin ---------------------------------------------------------------------------------
    @property
    def stdin(self) -> bytes:
        """Every byte the controller has written to the command so far (read or not)."""
        return bytes(self._stdin)

    @property
    def stdin_closed(self) -> bool:
        """True once stdin has reached EOF: the controller closed it, closed the channel, or
        the channel was lost."""
        return self._stdin_eof or self._closed or self._lost is not None

    async def read_stdin_line(self) -> bytes:
        """The next line of stdin, with its newline; at EOF what is left without one, then
        b"" (as `read -r` would see it)."""
        while True:
            unread = self._stdin[self._stdin_read:]
            end = unread.find(b"\n")
            if end >= 0:
                self._stdin_read += end + 1
                return bytes(unread[:end + 1])
            if self.stdin_closed:
                self._stdin_read += len(unread)
                return bytes(unread)
            await self._wait()

    async def read_stdin_bytes(self, count: int) -> bytes:
        """The next `count` bytes of stdin (fewer only at EOF), as `head -c COUNT` reads them."""
        while len(self._stdin) - self._stdin_read < count and not self.stdin_closed:
            await self._wait()
        taken = bytes(self._stdin[self._stdin_read:self._stdin_read + count])
        self._stdin_read += len(taken)
        return taken

    async def read_stdin(self) -> bytes:
        """The rest of stdin, up to EOF."""
        while not self.stdin_closed:
            await self._wait()
        unread = bytes(self._stdin[self._stdin_read:])
        self._stdin_read = len(self._stdin)
        return unread

    # -- stdout, stderr ------------------------------------------------------------------------
    def write_stdout(self, data: bytes) -> None:
        """Send bytes on stdout. BrokenPipeError (the command's SIGPIPE) once the channel is
        closed or lost: nobody reads any more."""
        self._check_open()
        self._stdout += data
        self._notify()

    def write_stderr(self, data: bytes) -> None:
        """Send bytes on stderr; BrokenPipeError as `write_stdout`."""
        self._check_open()
        self._stderr += data
        self._notify()

    def _check_open(self) -> None:
        if self._closed or self._lost is not None:
            raise BrokenPipeError(f"{self.label}: the channel of {self.script or self.argv[0]} is gone")

    # -- losing the channel ---------------------------------------------------------------------
    def lose(self, reason: str = "connection lost", *, raising: bool = True) -> None:
        """Lose this command's channel (the connection went away), as SSH does: the controller
        still reads what was written before, then its reads raise HostError ("lost the SSH
        connection: REASON"), or with `raising=False` simply end (b"": the channel closed
        without the command's end, no exit status); its writes raise HostError; `wait`
        returns -1 and RemoteProcess.lost is True. On this side, stdin is at EOF and writes
        raise BrokenPipeError; the handler itself goes on (the host does not know yet) and
        its return value is ignored. The transport stays connected: `ScriptedTransport.cut`
        loses every command and the connection."""
        if self._lost is None and not self._ended:
            self._lost = HostError(self.label, f"lost the SSH connection: {reason}")
            self._lost_raises = raising
            self._notify()

    @property
    def lost(self) -> bool:
        return self._lost is not None

    @property
    def closed(self) -> bool:
        """True once the controller abandoned the command (RemoteProcess.close)."""
        return self._closed

    # -- delegating ------------------------------------------------------------------------------
    async def run_locally(self) -> int:
        """Run this argv for real, on this machine (LocalTransport), as the handler: stdin is
        passed through, stdout and stderr come back, its exit status is returned. The
        subprocess is killed (and reaped) if the handler is cancelled (ScriptedTransport.close)
        or the channel is closed (RemoteProcess.close) or lost."""
        process = await LocalTransport(self.transport.host, self.label).start(self.argv)

        async def feed() -> None:
            while True:
                if self._closed or self._lost is not None:
                    process.close()  # abandoned: killed, as the local transport's close() does
                    return
                unread = bytes(self._stdin[self._stdin_read:])
                self._stdin_read += len(unread)
                if unread:
                    await process.write(unread)
                elif self.stdin_closed:
                    process.close_stdin()
                    return
                else:
                    await self._wait()

        async def pump(read: Callable[[], Awaitable[bytes]], write: Callable[[bytes], None]) -> None:
            while chunk := await read():
                with contextlib.suppress(BrokenPipeError):  # nobody reads: keep draining
                    write(chunk)

        try:
            async with task_group() as tasks:
                feeder = tasks.create_task(feed())
                try:
                    await all_of(pump(process.read_stdout, self.write_stdout),
                                 pump(process.read_stderr, self.write_stderr))
                    return await process.wait()
                finally:
                    feeder.cancel()
        finally:
            process.close()  # kills it if it still runs
            await asyncio.shield(_reap(process))

    # -- the machinery -----------------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()


async def _reap(process: RemoteProcess) -> None:
    """Read a killed local process's pipes to their end and wait for it (asyncio must see it
    end while the loop runs)."""
    for read in (process.read_stdout, process.read_stderr):
        while await read():
            pass
    await process.wait()


class ScriptedProcess(RemoteProcess):
    """The controller's side of a ScriptedCommand."""

    def __init__(self, command: ScriptedCommand) -> None:
        self.command = command

    async def _read(self, buffer: bytearray) -> bytes:
        command = self.command
        while True:
            if buffer:
                chunk = bytes(buffer)
                buffer.clear()
                return chunk
            if command._lost is not None:
                # Once: the other stream's reader may take what was written before the loss
                # (a read with data at hand returns at once, as a buffered SSH channel's).
                await asyncio.sleep(0)
                if buffer:
                    continue
                if command._lost_raises:
                    raise command._lost
                return b""
            if command._ended or command._closed:
                if command._failure is not None:
                    raise command._failure
                return b""
            await command._wait()

    async def read_stdout(self) -> bytes:
        """What the handler wrote on stdout since the last read (at once, without yielding, if
        there is some); b"" once the handler has ended; once the channel is lost, after what
        was written before the loss: HostError (or b"", see ScriptedCommand.lose), having
        yielded once to the other tasks."""
        return await self._read(self.command._stdout)

    async def read_stderr(self) -> bytes:
        """As read_stdout, for stderr."""
        return await self._read(self.command._stderr)

    async def write(self, data: bytes) -> None:
        """Append to the handler's stdin; HostError if the channel is lost; ignored once the
        handler has ended or stdin was closed (as the local transport ignores a broken pipe)."""
        command = self.command
        if command._lost is not None:
            raise command._lost
        if command._ended or command.stdin_closed:
            return
        command._stdin += data
        command._notify()
        await asyncio.sleep(0)  # a write is a chance for the host to run, as a real drain()

    def close_stdin(self) -> None:
        """EOF on the handler's stdin."""
        self.command._stdin_eof = True
        self.command._notify()

    async def wait(self) -> int:
        """The handler's return value once it has ended; -1 if the channel was lost (or the
        handler was cancelled); a handler's error other than HostError is raised here."""
        command = self.command
        while not (command._ended or command._lost is not None):
            await command._wait()
        if command._lost is not None:
            return -1
        if command._failure is not None:
            raise command._failure
        return command._status

    def close(self) -> None:
        """Abandon the channel: the handler's stdin is at EOF and its writes raise
        BrokenPipeError; the controller's reads return b"". The handler goes on."""
        self.command._closed = True
        self.command._notify()

    @property
    def lost(self) -> bool:
        return self.command._lost is not None


class ScriptedTransport(Transport):
    """A Transport whose commands are answered by `handler` (see the module's docstring).

    The connection: it is up from the start (as the local transport, `connect` is needed
    only to test its failure). `fail_connects` makes the next attempts fail; `cut` loses
    the connection and every command running on it. `started` is every argv started, in
    order (those whose start failed included); `connects` and `reconnects` count the
    attempts (failed ones included)."""

    def __init__(self, host: Host, label: str, handler: Handler, *, peer_address: str | None = None) -> None:
        super().__init__(host, label)
        self.handler = handler
        self.started: list[list[str]] = []
        self.commands: list[ScriptedCommand] = []
        self.connects = 0  # connection attempts: connect(), reconnect() of a cut connection, start() after a cut
        self.reconnects = 0  # reconnect() calls
        self.cuts = 0
        self._peer_address = peer_address or host.ip or "192.0.2.1"
        self._up = True
        self._closed = False
        self._failures: int | None = 0  # connection attempts left to fail; None: every one
        self._failure_message = "connection refused on port 22"
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the connection ---------------------------------------------------------------------------
    def fail_connects(self, times: int | None = ALWAYS, message: str = "connection refused on port 22") -> None:
        """The next `times` connection attempts (connect, reconnect, a start after a cut) raise
        HostError(label, message); ALWAYS (None): every one, until fail_connects(0)."""
        self._failures = times
        self._failure_message = message

    def cut(self, reason: str = "connection lost", *, raising: bool = True) -> None:
        """Lose the connection: every command running on it is lost (ScriptedCommand.lose,
        `raising` as there), and the next start() or reconnect() first connects again (as
        SSHTransport does), which may fail (fail_connects)."""
        self.cuts += 1
        self._up = False
        for command in self.commands:
            if not command._ended:
                command.lose(reason, raising=raising)

    @property
    def connected(self) -> bool:
        return self._up

    async def _attempt(self) -> None:
        self.connects += 1
        await asyncio.sleep(0)
        if self._failures is None or self._failures > 0:
            if self._failures:
                self._failures -= 1
            self._up = False
            raise HostError(self.label, self._failure_message)
        self._up = True

    async def connect(self) -> None:
        """One connection attempt: HostError if told to fail (fail_connects)."""
        await self._attempt()

    async def reconnect(self, timeout: float) -> None:
        """A no-op while connected (or closed); after a cut, one connection attempt."""
        self.reconnects += 1
        if self._up or self._closed:
            return
        await self._attempt()

    async def close(self) -> None:
        """Close the connection: every handler still running is cancelled (its command ends
        without status, as if the host killed it) and awaited. Never raises."""
        self._closed = True
        self._up = False
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @property
    def peer_address(self) -> str:
        """`peer_address` given, else the host's `ip`, else 192.0.2.1."""
        return self._peer_address

    # -- commands -----------------------------------------------------------------------------------
    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        """Record argv (`started`), connect again first if the connection was cut (HostError if
        that fails), then run the handler as a task, up to its first await, before returning:
        what it writes at once is there for the first read, and a HostError it raises at
        once is raised here (a channel that could not be opened)."""
        self.started.append(list(argv))
        if self._closed:
            raise HostError(self.label, "not connected")
        if not self._up:
            await self._attempt()
        command = ScriptedCommand(self, argv)
        self.commands.append(command)
        task = asyncio.create_task(self._serve(command), name=f"{self.label}: {command.script or argv[0]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.sleep(0)  # the handler runs to its first await
        if command._ended and command._refused and command._lost is not None:
            raise command._lost
        return ScriptedProcess(command)

    async def _serve(self, command: ScriptedCommand) -> None:
        try:
            command._status = await self.handler(command)
        except asyncio.CancelledError:
            command._status = -1
        except BrokenPipeError:  # SIGPIPE: the channel is gone
            command._status = -1
        except HostError as exc:  # the channel broke (at once: start() raises it)
            command._status = -1
            command._refused = True
            if command._lost is None:
                command._lost = exc
        except Exception as exc:  # a test's handler failing: the controller sees it
            command._status = -1
            command._failure = exc
        finally:
            command._ended = True
            command._notify()


# -- a fake host --------------------------------------------------------------------------------------

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
    bytes before it sent; then `refuse_after_cut` connection attempts fail; ALWAYS: all).
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
                return self._kill(command, argv[-1])
            command.write_stderr(f"fake host: unknown command {argv[0]}\n".encode())
            return 127
        self._heard_of(script, self.commands)
        args = command.args
        args = args[2 + int(args[1]):]  # after the docker prelude's TIMEOUT COUNT WORDS...
        if script == "fleet-session":
            return await self._session(command, args)
        if script == "fleet-resume":
            return await self._resume(command, args)
        if script == "fleet-cleanup":
            return self._cleanup(args)
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
        received = await command.read_stdin_bytes(sum(counts))
        if not header.endswith(b"\n") or len(received) < sum(counts):
            command.write_stderr(b"the job's files were cut short on stdin\n")
            return int(Status.WRITE_FAILED)
        self.received_files = [received[sum(counts[:i]):sum(counts[:i + 1])] for i in range(len(counts))]
        self.directory = "written"
        command.write_stderr(b"fleet:written\n")
        # Then how to get the image: `use ID 0`, `pull REF N` and N bytes of credentials, or
        # `try NAME 0` (`image-missing` unless it holds the image, then pull or abort).
        verb, _, rest = (await command.read_stdin_line()).rstrip(b"\n").decode().partition(" ")
        reference, _, count = rest.partition(" ")
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
            log = box.log()
            if len(log) > sent:
                if self.cut_at is not None and sent < self.cut_at <= len(log):
                    command.write_stdout(log[sent:self.cut_at])
                    await asyncio.sleep(0)
                    self._cut(command.transport)
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

    def _cut(self, transport: ScriptedTransport) -> None:
        self.cut_at = None
        transport.fail_connects(self.refuse_after_cut)
        transport.cut()
        self._heard_of("cut")

    async def _stop(self, command: ScriptedCommand, name: str) -> int:
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

    def _kill(self, command: ScriptedCommand, name: str) -> int:
        box = self._box
        if box is None or box.name != name or box.state != "running":
            command.write_stderr(f"Error response from daemon: container {name} is not running\n".encode())
            return 1
        box.poll()
        box.end(137)
        command.write_stdout(f"{name}\n".encode())
        return 0

    def _cleanup(self, args: list[str]) -> int:
        name, run, keep = args[0], args[5], args[6]
        box = self._box
        if box is not None and box.name == name and box.run == run and box.state != "removed":
            box.poll()
            box.end(137)  # rm --force
            box.state = "removed"
            box.notify()
        if keep != "keep" and self.directory is not None:
            self.directory = "removed"
        return 0
