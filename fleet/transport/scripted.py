"""A transport for tests, as httpx's MockTransport: every command is answered by a Python
handler instead of a host.

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

It fakes the wire, not the host: a fake of the host session itself (tests/hostprotocol's
FakeHost) lives with the tests, checked against the real session by one table of scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from fleet.errors import HostError
from fleet.fanout import all_of, task_group
from fleet.inventory import Host
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

    The connection starts down, as SSHTransport's: a command started before a connect()
    (or reconnect()) has succeeded raises HostError("not connected"), so a test catches code
    that forgets to connect. `fail_connects` makes the next attempts fail; `cut` loses the
    connection and every command running on it (the next start connects again). `started`
    is every argv started, in order (those whose start failed included); `connects` and
    `reconnects` count the attempts (failed ones included)."""

    def __init__(self, host: Host, label: str, handler: Handler, *, peer_address: str | None = None) -> None:
        super().__init__(host, label)
        self.handler = handler
        self.started: list[list[str]] = []
        self.commands: list[ScriptedCommand] = []
        self.connects = 0  # connection attempts: connect(), reconnect() of a cut connection, start() after a cut
        self.reconnects = 0  # reconnect() calls
        self.cuts = 0
        self._peer_address = peer_address or host.ip or "192.0.2.1"
        self._up = False
        self._ever_up = False  # a connection was made (SSHTransport's _conn is set): a cut one reconnects
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
        self._ever_up = True

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
        """Record argv (`started`); HostError("not connected") before the first connection
        and after close; connect again first if the connection was cut (HostError if that
        fails); then run the handler as a task, up to its first await, before returning:
        what it writes at once is there for the first read, and a HostError it raises at
        once is raised here (a channel that could not be opened)."""
        self.started.append(list(argv))
        if self._closed or not self._ever_up:
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
