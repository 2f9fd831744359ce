"""A host chooses how many bytes its commands write; the controller keeps a bounded amount of
them (issue 19, point 12). Each attack runs in a child process with the local transport
(real subprocesses, no hosts), which reports its peak RSS (ru_maxrss) above what it had
once fleet was imported: 128 MiB of stderr cost 260 MiB, and a listing of 100,000 files
with 1,000-byte paths 332 MiB, when they were read whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROWTH_LIMIT = 64 * 2**20  # bytes of peak RSS above the child's start that the attacks may cost
NOISE = 128 * 2**20  # bytes each attack writes to stderr

CHILD = r'''
import asyncio, json, resource, sys
from fleet.data import direct
from fleet.data.locations import S3Location
from fleet.data.outputs import OutputCount
from fleet.errors import FleetError
from fleet.inventory import LocalHost
from fleet.transport import transport_for

START = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
scenario, directory, noise = sys.argv[1], sys.argv[2], int(sys.argv[3])
LOUD = ["sh", "-c", f"head -c {noise} /dev/zero | tr '\\0' x >&2; printf TAIL-END >&2; exit 3"]
ANSWER = ("import sys\n"
          "while (head := sys.stdin.readline()):\n"
          "    sys.stdin.readline(); sys.stdin.readline()\n"
          "    words = head.split()\n"
          "    print(words[0], 'done', words[1], flush=True)\n")
original = direct.host_command


async def sign(method, location, expires):
    return f"http://s3.invalid/{location.key[:20]}?X-Amz-Signature=s"


async def main():
    said = {}
    host = LocalHost(address="localhost", name="h", workdir=directory)
    async with transport_for(host, "algo-1 (h)") as transport:
        if scenario == "run-stderr":
            result = await transport.run(LOUD)
            said = {"status": result.exit_status, "stderr_bytes": len(result.stderr),
                    "tail": result.stderr[-8:].decode()}
        elif scenario in ("put-stderr", "listing"):
            # put.sh is replaced (no S3 here): by a command that fails loudly, or by one that
            # answers every request at once; list-files.sh is the real one.
            put = LOUD if scenario == "put-stderr" else [sys.executable, "-c", ANSWER]
            direct.host_command = lambda name, args: put if name == "put" else original(name, args)
            count = OutputCount()
            try:
                await direct.upload_host_direct(transport, "algo-1", directory, S3Location("b", "out"), "out",
                                                count, sign, print)
            except FleetError as exc:
                said = {"error": type(exc).__name__, "message_bytes": len(exc.message),
                        "tail": exc.message[-8:]}
            said["objects"] = count.objects
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({**said, "growth": peak - START}))

asyncio.run(main())
'''


def _attack(scenario: str, directory: Path, noise: int = NOISE) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, scenario, str(directory), str(noise)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout.decode().splitlines()[-1])


def test_a_command_writing_128_mib_to_stderr_costs_the_controller_its_last_bytes_only(tmp_path):
    said = _attack("run-stderr", tmp_path)
    assert said["status"] == 3
    assert said["stderr_bytes"] == 4096 and said["tail"] == "TAIL-END"  # what the callers use
    assert said["growth"] < GROWTH_LIMIT, said


def test_a_put_lane_writing_128_mib_to_stderr_fails_naming_its_last_bytes_in_bounded_memory(tmp_path):
    (tmp_path / "one").write_bytes(b"1")
    said = _attack("put-stderr", tmp_path)
    assert said["error"] == "HostError" and said["tail"] == "TAIL-END", said
    assert said["message_bytes"] < 4096 + 200
    assert said["growth"] < GROWTH_LIMIT, said


@pytest.mark.timeout(300)
def test_a_listing_of_100k_long_paths_goes_up_in_bounded_memory(tmp_path):
    deep = tmp_path / ("d" * 250) / ("e" * 250) / ("f" * 250)  # 753 bytes, then a 240-byte name
    deep.mkdir(parents=True)
    for number in range(100_000):
        (deep / f"{number:0240d}").touch()
    said = _attack("listing", tmp_path)
    assert said.get("error") is None, said
    assert said["objects"] == 100_000
    assert said["growth"] < GROWTH_LIMIT, said


def _local(tmp_path: Path):
    from fleet.inventory import LocalHost
    from fleet.transport import transport_for
    return transport_for(LocalHost(address="localhost", name="h", workdir=str(tmp_path)), "algo-1 (h)")


async def test_run_refuses_stdout_past_its_limit_naming_the_host_and_the_command(tmp_path):
    from fleet.errors import HostError
    async with _local(tmp_path) as transport:
        assert (await transport.run(["head", "-c", "1000", "/dev/zero"], stdout_limit=1000)).stdout == bytes(1000)
        with pytest.raises(HostError, match=r"algo-1 \(h\).*head wrote more than 1000 bytes"):
            await transport.run(["head", "-c", "1001", "/dev/zero"], stdout_limit=1000)


async def test_records_come_one_at_a_time_each_within_its_limit(tmp_path):
    from fleet.errors import HostError
    async with _local(tmp_path) as transport:
        async with transport.records(["printf", r"a\0bb\0c"], separator=b"\0") as listing:
            assert [record async for record in listing] == [b"a", b"bb", b"c"]
            assert (await listing.end()).exit_status == 0
        with pytest.raises(HostError, match="longer than 100 bytes"):
            async with transport.records(["head", "-c", "1000", "/dev/zero"], separator=b"\n",
                                         record_limit=100) as listing:
                async for _ in listing:
                    pass
