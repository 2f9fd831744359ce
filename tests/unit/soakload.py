"""The soak's clients (tests/unit/test_serve_soak.py), shared with scripts/bench-serve-soak: idle
and half-sent connections, signed pollers (Describe and List on keep-alive connections), a
stopper, malformed requests and a greedy client, each a task of `Load.run` against one real
`fleet serve` (test_serve_attacks' Served: BUSY holds the only host, WAITING and SOAK_JOBS wait).

The clients come from several loopback addresses so that only the greedy one passes a cap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from test_serve_attacks import BUSY, JSON, KEY, WAITING, Served

IDLE, POLLERS = 200, 50
CONNECTIONS, PER_CLIENT, GREEDY = 1000, 100, 110  # the greedy client opens 110 at a time
ANSWER_SECONDS = 30.0  # a request not answered within this is a failure
POLLER_PAUSE = 0.2  # between one poller's requests
SOAK_JOBS = [f"zq-soak-{i:02d}" for i in range(40)]  # waiting jobs the stops act on
POLLER_SOURCES = ("127.0.0.1",)
IDLE_SOURCES = ("127.0.2.1", "127.0.2.2", "127.0.2.3", "127.0.2.4")  # 50 each, under PER_CLIENT
STOPPER_SOURCE, MALFORMED_SOURCE, GREEDY_SOURCE = "127.0.3.1", "127.0.3.2", "127.0.4.1"


@dataclass
class Reply:
    status: int
    body: dict

    @property
    def code(self) -> str:
        return str(self.body.get("__type", ""))


@dataclass
class Tally:
    """What the clients saw. `failures` holds every well-formed request that did not get its
    expected answer (an error, a 5xx, a dropped connection, no answer in time)."""

    answered: Counter = field(default_factory=Counter)  # (kind, status, code)
    latencies: list[float] = field(default_factory=list)  # seconds, well-formed requests
    failures: list[str] = field(default_factory=list)
    refused_greedy: int = 0
    idle_reopened: int = 0


class Wire:
    """One HTTP/1.1 connection to the server from loopback address `source`, kept alive."""

    def __init__(self, port: int, source: str) -> None:
        self.port = port
        self.source = source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                                 local_addr=(self.source, 0))

    async def request(self, raw: bytes) -> Reply:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> Reply:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        try:
            document = json.loads(body) if body else {}
        except ValueError:  # aiohttp's own page for a request that is not HTTP
            document = {"raw": body[:200].decode(errors="replace")}
        return Reply(int(status_line.split()[1]), document)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def raw_request(headers: dict[str, str] | list[tuple[str, str]], body: bytes, *, close: bool = False) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = ["POST / HTTP/1.1", *(f"{k}: {v}" for k, v in items), f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Load:
    """The clients of one run, each a task that runs until `until` (loop time)."""

    def __init__(self, server: Served, tally: Tally, until: float) -> None:
        self.server = server
        self.tally = tally
        self.until = until

    def going(self) -> bool:
        return asyncio.get_running_loop().time() < self.until

    async def well_formed(self, wire: Wire, kind: str, target: str, document: dict,
                          expected: Callable[[Reply], bool]) -> None:
        """One signed request; its answer is recorded, and a failure unless `expected`."""
        headers, body = self.server.sign(target, document)
        started = time.monotonic()
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                reply = await wire.request(raw_request(headers, body))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await wire.close()
            self.tally.failures.append(f"{kind} {target} {document}: {type(exc).__name__} {exc}")
            return
        self.tally.latencies.append(time.monotonic() - started)
        self.tally.answered[kind, reply.status, reply.code] += 1
        if not expected(reply):
            self.tally.failures.append(f"{kind} {target} {document}: {reply}")

    async def poller(self, number: int) -> None:
        wire = Wire(self.server.port, POLLER_SOURCES[number % len(POLLER_SOURCES)])
        names = [BUSY, WAITING, *SOAK_JOBS]
        try:
            while self.going():
                if random.random() < 0.5:
                    await self.well_formed(wire, "poll", "SageMaker.DescribeProcessingJob",
                                           {"ProcessingJobName": random.choice(names)}, lambda r: r.status == 200)
                else:
                    await self.well_formed(wire, "poll", "SageMaker.ListProcessingJobs",
                                           {"MaxResults": 20, "SortBy": "CreationTime"}, lambda r: r.status == 200)
                await asyncio.sleep(POLLER_PAUSE * random.uniform(0.5, 1.5))
        finally:
            await wire.close()

    async def stopper(self) -> None:
        """Stops, again and again: the running job (200: one `fleet stop` runs, the rest are
        answered at once), the waiting jobs in turn (200, then 400 ValidationException once
        they are Stopped)."""
        wire = Wire(self.server.port, STOPPER_SOURCE)

        def stopped(reply: Reply) -> bool:
            return reply.status == 200 or (reply.status, reply.code) == (400, "ValidationException")

        try:
            for name in itertools.cycle([WAITING, *SOAK_JOBS]):
                if not self.going():
                    break
                await self.well_formed(wire, "stop", "SageMaker.StopProcessingJob", {"ProcessingJobName": BUSY},
                                       lambda r: r.status == 200)
                await self.well_formed(wire, "stop", "SageMaker.StopProcessingJob", {"ProcessingJobName": name},
                                       stopped)
                await asyncio.sleep(0.5)
        finally:
            await wire.close()

    def malformed_requests(self) -> list[tuple[str, bytes, tuple[int, ...]]]:
        """(what, the bytes, the statuses it may get); () for one that is abandoned unanswered."""
        host = f"127.0.0.1:{self.server.port}"
        headers, body = self.server.sign("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING})
        forged, _ = self.server.sign("SageMaker.ListProcessingJobs", {}, secret="not-the-secret")
        not_json_headers, not_json = self.server.sign("SageMaker.ListProcessingJobs", b"{not json")
        bad_type_headers, bad_type = self.server.sign("SageMaker.ListProcessingJobs", {"MaxResults": "10"})
        unknown_headers, unknown = self.server.sign("SageMaker.DeleteEverything", {})
        far_date = [("Host", host), ("X-Amz-Target", "SageMaker.ListProcessingJobs"), ("Content-Type", JSON),
                    ("Date", "Fri, 31 Dec 9999 23:59:59 -0100"),
                    ("Authorization", f"AWS4-HMAC-SHA256 Credential={KEY}/99991231/us-east-1/sagemaker/"
                                      f"aws4_request, SignedHeaders=content-type;date;host;x-amz-target, "
                                      f"Signature={'0' * 64}")]
        return [
            ("not HTTP", b"GARBAGE \x00\xff HTTP/9.9\r\n\r\n", (400,)),
            ("a second X-Amz-Target", raw_request([("X-Amz-Target", "SageMaker.StopProcessingJob"),
                                                   *headers.items()], body, close=True), (403,)),
            ("a wrong signature", raw_request(forged, b"{}", close=True), (403,)),
            ("a date in 9999", raw_request(far_date, b"{}", close=True), (403,)),
            ("a body that is not JSON", raw_request(not_json_headers, not_json, close=True), (400,)),
            ("a field of the wrong type", raw_request(bad_type_headers, bad_type, close=True), (400,)),
            ("an unknown operation", raw_request(unknown_headers, unknown, close=True), (400,)),
            ("a body over 2 MiB declared", raw_request(headers, b"", close=True).replace(
                b"Content-Length: 0", b"Content-Length: 3000000"), (413,)),
            ("a head abandoned half-way", b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Tar", ()),
        ]

    async def malformed(self) -> None:
        for what, raw, statuses in itertools.cycle(self.malformed_requests()):
            if not self.going():
                break
            wire = Wire(self.server.port, MALFORMED_SOURCE)
            try:
                async with asyncio.timeout(ANSWER_SECONDS):
                    await wire.open()
                    assert wire.writer is not None
                    wire.writer.write(raw)
                    await wire.writer.drain()
                    if statuses:
                        reply = await wire.answer()
                        self.tally.answered["malformed", reply.status, reply.code] += 1
                        if reply.status not in statuses:
                            self.tally.failures.append(f"malformed ({what}): {reply}")
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.tally.failures.append(f"malformed ({what}): {type(exc).__name__} {exc}")
            finally:
                await wire.close()
            await asyncio.sleep(0.05)

    async def idle(self, number: int) -> None:
        """An idle connection (every other one half-sent), opened again whenever the server
        closes it (after its 10 s keep-alive)."""
        source = IDLE_SOURCES[number % len(IDLE_SOURCES)]
        opened = False
        while self.going():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port,
                                                               local_addr=(source, 0))
            except OSError as exc:
                self.tally.failures.append(f"idle connection from {source}: {exc}")
                return
            if opened:
                self.tally.idle_reopened += 1
            opened = True
            try:
                if number % 2:
                    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Da")
                remaining = self.until - asyncio.get_running_loop().time()
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(max(0.0, remaining)):
                        data = await reader.read(65536)
                        if data.startswith(b"HTTP/1.1 503"):
                            self.tally.failures.append(f"idle connection from {source}: {data[:200]!r}")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def greedy(self) -> None:
        """A client that opens more than its share every few seconds: what passes PER_CLIENT
        is answered 503 ServiceUnavailable (the rest stay silent, held), then all are closed."""
        while self.going():
            conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for _ in range(GREEDY):
                    conns.append(await asyncio.open_connection("127.0.0.1", self.server.port,
                                                               local_addr=(GREEDY_SOURCE, 0)))

                async def refused(reader: asyncio.StreamReader) -> bool:
                    with contextlib.suppress(TimeoutError, OSError):
                        async with asyncio.timeout(5):
                            data = await reader.read(65536)
                            return data.startswith(b"HTTP/1.1 503") and b"ServiceUnavailable" in data
                    return False

                answers = await asyncio.gather(*(refused(reader) for reader, _ in conns))
                self.tally.refused_greedy += sum(answers)
                if sum(answers) < GREEDY - PER_CLIENT:
                    self.tally.failures.append(f"greedy client: {sum(answers)} of {GREEDY} refused, "
                                               f"{GREEDY - PER_CLIENT} at least expected")
            except OSError as exc:
                self.tally.failures.append(f"greedy client: {exc}")
            finally:
                for _, writer in conns:
                    writer.close()
            await asyncio.sleep(2)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for number in range(IDLE):
                tasks.create_task(self.idle(number))
            for number in range(POLLERS):
                tasks.create_task(self.poller(number))
            tasks.create_task(self.stopper())
            tasks.create_task(self.malformed())
            tasks.create_task(self.greedy())
