"""Issue 19's soak: one real `fleet serve` (test_serve_attacks' Served: a subprocess on loopback,
no host touched) under 60 s of everything at once: 200 idle or half-sent connections (each
reopened when the server closes it), 50 pollers (signed DescribeProcessingJob and
ListProcessingJobs on keep-alive connections), repeated StopProcessingJob calls, malformed
requests, and one client that keeps trying to hold more than its share of connections. The
server answers every well-formed request, exits only when told (SIGTERM, exit code 0), and
its descriptors and RSS come back to where they were once warmed up.

The clients come from several loopback addresses so that only the greedy one passes a cap:
a 503 for anyone else is a failure. Nothing here is timed but the bounds: each request has
30 s to be answered and the whole run a hard deadline; the latencies are printed (run with
-s to see them), not asserted."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import pytest
from soakload import CONNECTIONS, GREEDY, PER_CLIENT, POLLERS, SOAK_JOBS, STOPPER_SOURCE, Load, Tally, Wire
from test_serve_attacks import BUSY, WAITING, Served, _job

pytestmark = pytest.mark.soak

SOAK_SECONDS = 60.0
WARM_SECONDS = 5.0
SETTLE_SECONDS = 60.0  # for descriptors and RSS to come back once the load ends


@dataclass
class Usage:
    fds: int
    rss_kib: int


def usage(pid: int) -> Usage:
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return Usage(fds, int(line.split()[1]))
    raise AssertionError(f"no VmRSS for pid {pid}")


async def sampled(pid: int, work: Awaitable[None]) -> list[Usage]:
    """`work`, with the server's usage sampled every 0.5 s meanwhile."""
    samples: list[Usage] = []

    async def sample() -> None:
        while True:
            samples.append(usage(pid))
            await asyncio.sleep(0.5)

    async with asyncio.TaskGroup() as tasks:
        sampler = tasks.create_task(sample())
        await work
        sampler.cancel()
    return samples


async def settled(pid: int, fds: int, rss_kib: int) -> Usage:
    """The server's usage once its descriptors are back to `fds` and its RSS within 10% of
    `rss_kib`, or as it is after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        now = usage(pid)
        if (now.fds <= fds and now.rss_kib <= rss_kib * 1.1) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


async def soak(server: Served) -> dict:
    pid = server.process.pid
    loop = asyncio.get_running_loop()
    warm = Load(server, Tally(), 0)
    for name in (BUSY, WAITING):  # the first few requests; the running job's `fleet stop` starts
        wire = Wire(server.port, STOPPER_SOURCE)
        await warm.well_formed(wire, "warm", "SageMaker.StopProcessingJob", {"ProcessingJobName": name},
                               lambda r: r.status == 200)
        await warm.well_formed(wire, "warm", "SageMaker.DescribeProcessingJob", {"ProcessingJobName": name},
                               lambda r: r.status == 200)
        await wire.close()
    await asyncio.sleep(1)
    first = usage(pid)

    # Warm-up: the whole load for a few seconds grows the heap to its working size (Python's
    # allocator keeps its arenas); a leak shows as growth beyond it over the soak.
    warm.until = loop.time() + WARM_SECONDS
    await warm.run()
    assert not warm.tally.failures, warm.tally.failures[:20]
    warmed = await settled(pid, first.fds, 10**9)
    assert warmed.fds <= first.fds, (first, warmed)

    tally = Tally()
    samples = await sampled(pid, Load(server, tally, loop.time() + SOAK_SECONDS).run())
    assert server.process.poll() is None, server.log.read_text()[-3000:]
    end = await settled(pid, warmed.fds, warmed.rss_kib)
    return {"tally": tally, "first": first, "warmed": warmed, "peak": Usage(max(s.fds for s in samples),
                                                                             max(s.rss_kib for s in samples)),
            "end": end}


def test_serve_answers_every_well_formed_request_through_a_minute_of_load_and_gives_back_what_it_took(tmp_path):
    server = Served(tmp_path, extra=("--max-connections", str(CONNECTIONS),
                                     "--max-connections-per-client", str(PER_CLIENT)))
    try:
        for name in SOAK_JOBS:  # waiting for the host BUSY holds
            created = server.call("SageMaker.CreateProcessingJob", _job(name))
            assert created.status == 200, created

        async def bounded() -> dict:
            async with asyncio.timeout(WARM_SECONDS + SOAK_SECONDS + 2 * SETTLE_SECONDS + 60):
                return await soak(server)

        result = asyncio.run(bounded())
        tally: Tally = result["tally"]
        first, warmed, peak, end = result["first"], result["warmed"], result["peak"], result["end"]
        latencies = sorted(tally.latencies)
        print(f"\nsoak: {len(latencies)} well-formed requests answered "
              f"({sum(n for (kind, _, _), n in tally.answered.items() if kind == 'poll')} polls, "
              f"{sum(n for (kind, _, _), n in tally.answered.items() if kind == 'stop')} stops), "
              f"{sum(n for (kind, _, _), n in tally.answered.items() if kind == 'malformed')} malformed answered, "
              f"{tally.refused_greedy} greedy connections refused, {tally.idle_reopened} idle ones reopened; "
              f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        print(f"soak: fds first {first.fds}, warmed {warmed.fds}, peak {peak.fds}, end {end.fds}; "
              f"RSS KiB first {first.rss_kib}, warmed {warmed.rss_kib}, peak {peak.rss_kib}, end {end.rss_kib}")
        print(f"soak: answers {dict(sorted(tally.answered.items()))}")

        assert not tally.failures, f"{len(tally.failures)} failures: {tally.failures[:20]}"
        assert tally.answered["poll", 200, ""] > POLLERS * 10  # the pollers did poll throughout
        assert tally.refused_greedy >= GREEDY - PER_CLIENT
        assert end.fds <= warmed.fds, (warmed, peak, end)
        assert end.rss_kib <= warmed.rss_kib * 1.1, (warmed, peak, end)
        server.alive()
        assert "Traceback" not in server.log.read_text()

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log.read_text()[-3000:]
    finally:
        server.close()
