"""Inputs onto the hosts: stage_input streams a tar archive into each destination's real
`sh -c '... tar -x'` (LocalTransport, into tmp_path), fed by a fake source. What every
destination directory ends up holding is the contract."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.contract.job import S3InputSpec
from fleet.data import staging
from fleet.data.locations import S3Location
from fleet.data.sources import InputObject, list_input, shard
from fleet.data.staging import Destination, Sources, TransferCount, stage_input
from fleet.errors import ClientError, HostError
from fleet.inventory import LocalHost
from fleet.transport.scripted import ScriptedCommand, ScriptedTransport

from localcommands import reap_commands, tree  # noqa: F401  (reap_commands: autouse fixture)


class FakeSources(Sources):
    """Serves {key: bytes} in chunks the way S3 does; `short` objects stop early."""

    def __init__(self, objects: dict[str, bytes], chunk: int = 64 * 1024, short: dict[str, int] | None = None):
        super().__init__(None)
        self.objects = objects
        self.chunk = chunk
        self.short = short or {}
        self.reads: list[str] = []

    async def stream(self, obj: InputObject) -> AsyncIterator[bytes]:
        self.reads.append(obj.source.key)
        data = self.objects[obj.source.key][:self.short.get(obj.source.key)]
        for start in range(0, len(data), self.chunk):
            yield data[start:start + self.chunk]


TRANSPORTS: list[ScriptedTransport] = []  # closed after each test (close_transports)


async def local_transport(label: str, failures: int = 0) -> ScriptedTransport:
    """Runs each command for real, on this machine; `started` holds every argv started (one
    per lane and attempt). The first `failures` starts lose the host (HostError)."""
    left = [failures]

    async def handler(command: ScriptedCommand) -> int:
        if left[0]:
            left[0] -= 1
            raise HostError(command.label, "ssh channel lost")
        return await command.run_locally()
    transport = ScriptedTransport(LocalHost(address="localhost", name=label), label, handler)
    await transport.connect()
    TRANSPORTS.append(transport)
    return transport


@pytest.fixture(autouse=True)
async def close_transports():
    """Every local command a test started has ended (killed if needed) before its loop closes."""
    yield
    for transport in TRANSPORTS:
        await transport.close()
    TRANSPORTS.clear()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(staging, "TAR_STREAMS", replace(staging.TAR_STREAMS, first=0, cap=0))


def attempts(monkeypatch, n: int) -> None:
    """Each lane sent at most n times (TAR_STREAMS.attempts)."""
    monkeypatch.setattr(staging, "TAR_STREAMS", replace(staging.TAR_STREAMS, attempts=n))


def inputs_dir(tmp_path: Path, host: int) -> Path:
    """A host's job directory's inputs/, as its session writes it before staging starts."""
    path = tmp_path / f"host{host}" / "inputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def destinations(tmp_path: Path, hosts: int) -> list[Destination]:
    return [Destination(f"algo-{i} (h{i}, 127.0.0.1)", await local_transport(f"algo-{i}"),
                        str(inputs_dir(tmp_path, i) / "1.partial"))
            for i in range(1, hosts + 1)]


def content(seed: int, size: int) -> bytes:
    return (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]


def dataset(small: int = 0, large: int = 0, empty: int = 0) -> dict[str, bytes]:
    """{key: bytes} under in/: many small objects, a few over staging.SMALL, some empty."""
    objects = {}
    for i in range(small):
        objects[f"in/small/{i % 7}/part-{i:04d}.csv"] = content(i, 100 + (i * 397) % 4000)
    for i in range(large):
        objects[f"in/large/blob-{i}.bin"] = content(1000 + i, staging.SMALL + 1 + i * 200_003)
    for i in range(empty):
        objects[f"in/empty/{i}.txt"] = b""
    return objects


def input_objects(objects: dict[str, bytes]) -> list[InputObject]:
    return [InputObject(S3Location("b", key), key[len("in/"):], len(data)) for key, data in objects.items()]


def expected(objects: list[InputObject], data: dict[str, bytes]) -> dict[str, bytes]:
    return {o.relative: data[o.source.key] for o in objects}


# -- FullyReplicated ---------------------------------------------------------------------------

@pytest.mark.parametrize("small, large, empty", [(0, 0, 1), (1, 0, 0), (300, 0, 0), (0, 3, 0), (250, 3, 4)],
                         ids=["one-empty", "one-small", "many-small", "few-large", "mixed"])
async def test_fully_replicated_every_destination_holds_every_object_byte_for_byte(tmp_path, small, large, empty):
    data = dataset(small, large, empty)
    objects = input_objects(data)
    dests = await destinations(tmp_path, 3)
    await stage_input([objects] * 3, dests, FakeSources(data), TransferCount(), replicated=True)
    for dest in dests:
        assert tree(dest.directory) == expected(objects, data)


@pytest.mark.parametrize("replicated", [True, False], ids=["replicated", "sharded"])
async def test_each_object_is_read_from_the_source_once_and_counted(tmp_path, replicated):
    data = dataset(small=250, large=3, empty=4)
    objects = input_objects(data)
    per_host = [objects] * 3 if replicated else shard(objects, 3)
    count = TransferCount()
    sources = FakeSources(data)
    await stage_input(per_host, await destinations(tmp_path, 3), sources, count, replicated=replicated)
    assert sorted(sources.reads) == sorted(data)
    total = sum(len(d) for d in data.values())
    assert (count.objects, count.bytes, count.host_bytes) == (len(data), total, (3 if replicated else 1) * total)
    assert (count.total_objects, count.total_bytes) == (len(data), total)


async def test_one_destination_never_fails_on_subdirectories_created_concurrently(tmp_path, monkeypatch):
    # Regression: with two `tar -x` per destination (LANES=2), GNU tar failed "Cannot open: No such
    # file or directory" when the other tar created a missing subdirectory between its open() and
    # its mkdir(); retries hid it, re-reading every object of the lane. Near certain here with two.
    attempts(monkeypatch, 1)  # a race shows as a failure, not a silent re-send
    data = {f"in/{i}/{leaf}": b"z" for i in range(500) for leaf in "ab"}
    objects = input_objects(data)
    dests = await destinations(tmp_path, 3)
    await stage_input([objects] * 3, dests, FakeSources(data), TransferCount(), replicated=True)
    for dest in dests:
        assert tree(dest.directory) == expected(objects, data)


# -- ShardedByS3Key ----------------------------------------------------------------------------

@pytest.mark.parametrize("hosts", [1, 2, 3])
async def test_sharded_each_destination_holds_exactly_its_shard(tmp_path, hosts):
    data = dataset(small=120, large=2, empty=2)
    objects = input_objects(data)
    per_host = shard(objects, hosts)
    dests = await destinations(tmp_path, hosts)
    await stage_input(per_host, dests, FakeSources(data), TransferCount(), replicated=False)
    for dest, share in zip(dests, per_host):
        assert tree(dest.directory) == expected(share, data)


async def test_sharded_host_without_objects_gets_an_empty_directory(tmp_path):
    data = dataset(small=2)
    objects = input_objects(data)
    dests = await destinations(tmp_path, 4)
    per_host = shard(objects, 4)
    await stage_input(per_host, dests, FakeSources(data), TransferCount(), replicated=False)
    for dest, share in zip(dests, per_host):
        assert os.path.isdir(dest.directory)
        assert tree(dest.directory) == expected(share, data)
    assert sorted(len(tree(d.directory)) for d in dests) == [0, 0, 1, 1]


# -- names that need care on the host ----------------------------------------------------------

async def test_awkward_relative_paths_arrive_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a name run as a command would leave its MARKER
    names = ["x" * 150, "/".join(["d"] * 60) + "/f", "ü/日本語.csv", "with space/it's \"q\".txt", "-rf",
             "$(touch MARKER)", "new\nline", "a" * 255]
    data = {f"in/{n}": content(i, 700 * i) for i, n in enumerate(names)}
    objects = input_objects(data)
    dests = await destinations(tmp_path, 2)
    await stage_input([objects] * 2, dests, FakeSources(data), TransferCount(), replicated=True)
    for dest in dests:
        assert tree(dest.directory) == expected(objects, data)
    assert not any(tmp_path.rglob("MARKER"))


async def test_controller_files_are_staged_through_the_real_sources(tmp_path):
    source = tmp_path / "controller" / "data"
    (source / "sub").mkdir(parents=True)
    (source / "a.csv").write_bytes(content(1, 10))
    (source / "sub" / "big.bin").write_bytes(content(2, staging.SMALL + staging.FILE_CHUNK + 3))
    (source / "sub" / "empty").write_bytes(b"")
    spec = S3InputSpec(S3Uri=f"file://{source}", LocalPath="/opt/ml/processing/input/d", S3DataType="S3Prefix")
    objects = await list_input(spec, None)
    dests = await destinations(tmp_path, 2)
    await stage_input([objects] * 2, dests, Sources(None), TransferCount(), replicated=True)
    for dest in dests:
        assert tree(dest.directory) == tree(source)


# -- failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["in/small/3/part-0003.csv", "in/large/blob-1.bin"], ids=["small", "large"])
@pytest.mark.parametrize("replicated", [True, False], ids=["replicated", "sharded"])
async def test_source_shorter_than_its_listed_size_is_a_client_error_naming_the_object(tmp_path, key, replicated):
    data = dataset(small=10, large=2)
    objects = input_objects(data)
    sources = FakeSources(data, short={key: len(data[key]) // 2})
    per_host = [objects] * 2 if replicated else shard(objects, 2)
    with pytest.raises(ClientError) as caught:
        await stage_input(per_host, await destinations(tmp_path, 2), sources, TransferCount(), replicated=replicated)
    assert f"s3://b/{key}" in caught.value.message
    assert f"read {len(data[key]) // 2} bytes" in caught.value.message


@pytest.mark.parametrize("blocker", ["file-as-directory", "file-as-parent"])
async def test_destination_whose_tar_fails_is_a_client_error_naming_it_after_retries(tmp_path, monkeypatch,
                                                                                     blocker):
    attempts(monkeypatch, 2)
    data = dataset(small=20, large=1)
    objects = input_objects(data)
    dests = await destinations(tmp_path, 3)
    bad = Path(dests[1].directory)
    if blocker == "file-as-directory":
        bad.write_bytes(b"in the way")
    else:
        bad.parent.rmdir()
        bad.parent.write_bytes(b"in the way")
    with pytest.raises(ClientError) as caught:
        await stage_input([objects] * 3, dests, FakeSources(data), TransferCount(), replicated=True)
    assert dests[1].label in caught.value.message
    assert dests[0].label not in caught.value.message and dests[2].label not in caught.value.message
    assert len(dests[1].transport.started) == 2 * staging.LANES  # every lane tried TAR_STREAMS.attempts times
    assert len(dests[0].transport.started) == staging.LANES  # the good ones were not re-sent anything
    for good in (dests[0], dests[2]):
        assert tree(good.directory) == expected(objects, data)


async def test_destination_lost_once_is_retried_and_ends_up_complete(tmp_path):
    data = dataset(small=30, large=1, empty=1)
    objects = input_objects(data)
    dests = await destinations(tmp_path, 2)
    flaky = Destination("algo-3 (h3, 127.0.0.1)", await local_transport("algo-3", failures=1),
                        str(inputs_dir(tmp_path, 3) / "1.partial"))
    await stage_input([objects] * 3, dests + [flaky], FakeSources(data), TransferCount(), replicated=True)
    for dest in dests + [flaky]:
        assert tree(dest.directory) == expected(objects, data)
    assert len(flaky.transport.started) == staging.LANES + 1


async def test_a_job_directory_that_is_gone_is_not_recreated(tmp_path, monkeypatch):
    # A data channel that runs after a failed preparation removed the job directory.
    attempts(monkeypatch, 1)
    data = dataset(small=3)
    objects = input_objects(data)
    dests = await destinations(tmp_path, 1)
    host = tmp_path / "host1"
    for path in sorted(host.rglob("*"), reverse=True):
        path.rmdir()
    host.rmdir()
    with pytest.raises(ClientError):
        await stage_input([objects], dests, FakeSources(data), TransferCount(), replicated=True)
    assert not host.exists()
