"""Lanes: one remote command per host, fed one stream; a host that fails is set aside with
the caller's error and the others get every byte (fleet.transport.lanes)."""

from __future__ import annotations

import asyncio

from fleet.errors import FleetError, HostError
from fleet.fanout import task_group
from fleet.inventory import SshHost
from fleet.transport.lanes import Lanes
from fleet.transport.scripted import ScriptedCommand, ScriptedTransport


def _failed(label: str, exc: FleetError | None) -> FleetError:
    return HostError(label, f"cannot write: {exc.message if exc else 'stalled'}")


async def _status_and_stderr(label, process, stderr) -> FleetError | None:
    status = await process.wait()
    said = await stderr
    return None if status == 0 else HostError(label, f"status {status}: {said.decode().strip()}")


async def _hosts(handlers) -> list[ScriptedTransport]:
    transports = [ScriptedTransport(SshHost(address=f"10.0.0.{k}"), f"algo-{k}", handler)
                  for k, handler in enumerate(handlers, start=1)]
    for transport in transports:
        await transport.connect()
    return transports


async def test_a_host_that_cannot_start_is_set_aside_and_the_others_get_every_byte():
    received: dict[str, bytes] = {}

    async def reader(command: ScriptedCommand) -> int:
        received[command.label] = await command.read_stdin()
        return 0

    async def refused(command: ScriptedCommand) -> int:
        raise HostError(command.label, "channel refused")

    transports = await _hosts([reader, refused, reader])
    async with asyncio.timeout(10), task_group() as tasks:
        lanes = Lanes(tasks)
        try:
            await lanes.open((t.label, t, ["cat"]) for t in transports)
            assert lanes.live == ["algo-1", "algo-3"]
            assert lanes.failed["algo-2"].message == "algo-2: channel refused"
            assert await lanes.write(b"one ", _failed) == ["algo-1", "algo-3"]
            assert await lanes.write(b"two", _failed, labels=["algo-3", "algo-2"]) == ["algo-3"]
            assert set(await lanes.finish(_status_and_stderr)) == {"algo-2"}
        finally:
            lanes.abandon()
    assert received == {"algo-1": b"one ", "algo-3": b"one two"}


async def test_a_lost_channel_is_set_aside_with_the_callers_words_and_a_failed_end_too():
    async def lost(command: ScriptedCommand) -> int:
        await command.read_stdin_bytes(1)
        command.lose("connection reset")
        return -1

    async def complains(command: ScriptedCommand) -> int:
        await command.read_stdin()
        command.write_stderr(b"tar: no space left\n")
        return 2

    transports = await _hosts([lost, complains])
    async with asyncio.timeout(10), task_group() as tasks:
        lanes = Lanes(tasks, close_failed=True)
        try:
            await lanes.open((t.label, t, ["cat"]) for t in transports)
            await lanes.write(b"x", _failed)
            while "algo-1" not in lanes.failed:  # the loss reaches a later write
                await lanes.write(b"y" * 65536, _failed)
            assert lanes.failed["algo-1"].message.startswith("algo-1: cannot write: ")
            failed = await lanes.finish(_status_and_stderr)
        finally:
            lanes.abandon()
    assert failed["algo-2"].message == "algo-2: status 2: tar: no space left"
    assert lanes.live == []
