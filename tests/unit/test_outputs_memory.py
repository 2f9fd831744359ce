"""An output's per-file state on the controller is compact (issue 19, point 12): the final
upload and the Continuous passes keep no Python object per file, so an output of 300,000 files
with long names stays far below 200 MB (scripts/bench-outputs-memory measures the RSS).

Memory is measured with tracemalloc (what Python allocated, not the RSS: no threshold that load
could move) while JobData uploads a real host directory through a LocalTransport's `tar -c` and
`find`, on files whose relative paths are ~1,000 bytes long: keeping the paths (a set, a dict)
costs more than 1,000 bytes a file; the tables cost tens."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import tracemalloc
from pathlib import Path

import pytest

from fleet.contract.job import parse_job
from fleet.data import outputs
from fleet.data.locations import S3Location
from fleet.data.outputs import ChangedFiles, OutputCount
from fleet.data.pathtable import PathTable
from fleet.inventory import LocalHost
from fleet.plan import plan_cluster
from fleet.runtime.console import Console
from fleet.runtime.transfers import JobData
from fleet.transport.local import LocalTransport

from localcommands import reap_commands  # noqa: F401  (autouse fixture)

FILES = 3000
PER_FILE = 200  # bytes of Python memory a file may cost (a path here is ~1,000 bytes)
FIXED = 2**20  # bytes any upload may allocate whatever the file count (tar reader, part buffers)


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(outputs, "PART", 64 * 1024)  # part buffers of 64 KiB: the per-file cost shows


class CountingS3:
    """The upload half of fleet.data.s3.S3, keeping counts only (its own memory is O(1))."""

    def __init__(self) -> None:
        self.puts = 0
        self.checksum = 0  # sum of hash(key) of every PUT: which keys, without keeping them

    async def put(self, location: S3Location, data) -> None:
        await asyncio.sleep(0)
        self.puts += 1
        self.checksum += hash(location.key)

    async def multipart(self, location: S3Location):
        raise AssertionError("only small files here")


class RecordingS3(CountingS3):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    async def put(self, location: S3Location, data) -> None:
        await super().put(location, data)
        self.keys.append(location.key)


def _relative(k: int) -> str:
    # four components of ~250 bytes (a name holds 255 at most): ~1,000-byte paths
    return "/".join(f"{part}-{k // 100 if part < 3 else k}-" + "x" * 240 for part in range(4))


def _setup(tmp_path: Path, mode: str, files: int = FILES):
    job = parse_job({
        "ProcessingJobName": "many",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox"},
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
            "S3Uri": "s3://b/out/", "LocalPath": "/opt/ml/processing/out", "S3UploadMode": mode}}]},
    }, "job.json")
    host = LocalHost(address="localhost", name="h1", workdir=str(tmp_path / "work"))
    plan = plan_cluster(job, [host], ["127.0.0.1"], stop_grace=1, region="r", account="1").hosts[0]
    root = Path(plan.output_dir(1))
    for k in range(files):
        path = root / _relative(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    data = JobData(job, Console(out=io.BytesIO(), err=io.StringIO()))
    return data, plan, LocalTransport(host, "algo-1 (h1, 127.0.0.1)"), root


def _expected_checksum(files: int = FILES) -> int:
    return sum(hash(f"out/{_relative(k)}") for k in range(files))


async def _peak_of(work) -> int:
    """Bytes Python allocated at the peak of `work`, above what it held before."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


async def test_an_end_of_job_upload_keeps_no_memory_per_file(tmp_path):
    data, plan, transport, _ = _setup(tmp_path, "EndOfJob")
    s3 = data.s3 = CountingS3()
    try:
        await data.upload([(plan, transport)], completed=True)  # warm: imports, the part buffer
        s3.puts = s3.checksum = 0
        data.output_counts["out"] = OutputCount()
        peak = await _peak_of(lambda: data.upload([(plan, transport)], completed=True))
    finally:
        await transport.close()
    assert (s3.puts, s3.checksum) == (FILES, _expected_checksum())
    assert peak < FIXED + PER_FILE * FILES, f"{peak / FILES:.0f} bytes a file"


async def test_continuous_passes_keep_no_memory_per_file(tmp_path):
    data, plan, transport, _ = _setup(tmp_path, "Continuous")
    s3 = data.s3 = CountingS3()

    async def passes() -> None:
        for final in (False, False, False, True):  # look, upload (stable since), nothing new, final
            await data._upload_one(_uploader(data), plan, transport, 1, "out", S3Location("b", "out/"),
                                   data.output_counts["out"], True, final=final)
    try:
        peak = await _peak_of(passes)
    finally:
        await transport.close()
    assert (s3.puts, s3.checksum) == (FILES, _expected_checksum())  # each file once
    assert peak < FIXED + PER_FILE * FILES, f"{peak / FILES:.0f} bytes a file"


async def test_continuous_passes_upload_each_file_once_per_change(tmp_path):
    data, plan, transport, root = _setup(tmp_path, "Continuous", files=5)
    s3 = data.s3 = RecordingS3()
    count = data.output_counts["out"]

    async def one_pass(final: bool = False) -> list[str]:
        s3.keys.clear()
        await data._upload_one(_uploader(data), plan, transport, 1, "out", S3Location("b", "out/"), count, True,
                               final=final)
        return sorted(s3.keys)

    everything = sorted(f"out/{_relative(k)}" for k in range(5))
    changed = root / _relative(3)
    try:
        assert await one_pass() == []  # first look: nothing is known to be settled yet
        assert await one_pass() == everything  # unchanged since: uploaded
        assert await one_pass() == []
        changed.write_bytes(b"more")
        assert await one_pass() == []  # changed since the last look: may still be written
        assert await one_pass() == [f"out/{_relative(3)}"]  # settled: uploaded again, alone
        os.utime(changed, ns=(1, 1))  # same size, another mtime
        (root / "new.txt").write_bytes(b"new")
        assert await one_pass(final=True) == sorted([f"out/{_relative(3)}", "out/new.txt"])  # final: no wait
        assert await one_pass(final=True) == []
    finally:
        await transport.close()
    assert count.objects == 8


def test_a_path_table_holds_arrays_only_whatever_the_paths_length():
    table = PathTable(value="Q")
    paths = [f"{k}/" + "y" * 1000 for k in range(10_000)]
    for k, path in enumerate(paths):
        slot = table.add(path)  # (an add may grow the table: its columns are new arrays then)
        table.columns["value"][slot] = k + 1
    assert len(table) == 10_000
    assert all(table.columns["value"][table.find(p)] == k + 1 for k, p in enumerate(paths))
    assert table.find("0/" + "y" * 999) == -1 and table.find("") == -1
    assert table.add(paths[5]) == table.find(paths[5]) and len(table) == 10_000
    assert table.nbytes() <= 24 * 10_000 / 0.375  # 16 bytes of key, 8 of value, at the lowest load


def test_a_path_table_keeps_no_python_object_per_path():
    paths = [f"{k}/" + "y" * 1000 for k in range(10_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        table = PathTable(value="Q")
        for path in paths:
            table.add(path)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # its arrays, and nothing per path beside them (a path here: 1,000 bytes)
    assert held - before < table.nbytes() + 8 * len(paths)


def test_changed_files_says_what_a_pass_asks_for():
    changes = ChangedFiles()
    changes.begin()
    assert changes.listed("a", "1 10.0", stable_only=True) is False  # no earlier look
    assert changes.listed("b", "1 10.0", stable_only=False) is True
    assert "b" in changes and "a" not in changes and "c" not in changes
    changes.uploaded("b")
    changes.begin()
    assert changes.listed("a", "1 10.0", stable_only=True) is True  # as at the last look
    assert changes.listed("b", "1 10.0", stable_only=True) is False  # as uploaded
    assert changes.wanted == 1 and "b" not in changes
    changes.begin()  # "a" was not uploaded (say, gone from the stream): asked for again
    assert changes.listed("a", "1 10.0", stable_only=True) is True
    changes.uploaded("a")
    changes.begin()
    assert changes.listed("a", "2 11.0", stable_only=True) is False  # changed since the last look
    changes.begin()
    changes.begin()  # a pass that did not list it: its last look is two passes ago
    assert changes.listed("a", "2 11.0", stable_only=True) is False
    changes.begin()
    assert changes.listed("a", "2 11.0", stable_only=True) is True


def _uploader(data: JobData):
    from fleet.data.outputs import Uploader
    return Uploader(data.s3, data.console.notice)


def test_an_output_count_remembers_who_wrote_each_path_in_arrays_only():
    # Both data paths note each uploaded file here (to warn when two hosts write one path).
    paths = [f"{k}/" + "y" * 1000 for k in range(10_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        count = OutputCount()
        assert all(count.wrote(path, "algo-1") is None for path in paths)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count.wrote(paths[7], "algo-2") == "algo-1" and count.wrote(paths[7], "algo-2") is None
    assert held - before < 50 * len(paths), f"{(held - before) / len(paths):.0f} bytes a path"
