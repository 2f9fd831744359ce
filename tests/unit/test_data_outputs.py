"""Outputs from the hosts: Uploader.upload_host reads a real `tar -c` of the host's output
directory (LocalTransport, in tmp_path) and sends each regular file to S3Uri + its path
relative to LocalPath (a fake S3 records what arrives) or to a file:// directory."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from fleet.data import outputs, tarstream
from fleet.data.locations import S3Location, parse_location
from fleet.data.outputs import OutputCount, Uploader
from fleet.errors import ClientError
from fleet.host import command as host_command
from fleet.inventory import LocalHost
from fleet.transport.base import Transport
from fleet.transport.local import LocalTransport
from fleet.transport.scripted import ScriptedCommand, ScriptedTransport

from localcommands import RecordingTransport, alarm, reap_commands  # noqa: F401  (reap_commands: autouse fixture)
from support.fake_s3 import FakeS3

PART = 64 * 1024  # outputs.PART for these tests: many parts from small files
@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(outputs, "PART", PART)


def transport(algo: str = "algo-1") -> LocalTransport:
    return RecordingTransport(LocalHost(address="localhost", name=algo), f"{algo} (h1, 127.0.0.1)")


def content(seed: int, size: int) -> bytes:
    return (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]


REGULAR = {
    "a.txt": content(1, 6),
    "empty.txt": b"",
    "sub/deep/b.csv": content(2, 1025),
    "sub/big.bin": content(3, 10 * PART + 123),  # 11 parts
    "exact.bin": content(4, PART),  # the largest single PUT
    "double.bin": content(5, 2 * PART),  # two parts, no empty third
    "ü/日本語.csv": "données".encode(),
    "d" * 120 + "/" + "f" * 150: content(6, 700),
    "hard-1": content(7, 600),
    "hard-2": content(7, 600),  # a hard link to hard-1
}


@pytest.fixture
def host_output(tmp_path) -> Path:
    """A container's output directory: regular files, a symlink, a FIFO, a hard link."""
    root = tmp_path / "host" / "outputs" / "1"
    for relative, data in REGULAR.items():
        if relative == "hard-2":
            continue
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    os.link(root / "hard-1", root / "hard-2")
    (root / "empty-dir").mkdir()
    (root / "link").symlink_to("a.txt")
    (root / "sub" / "escape").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo")
    return root


async def upload(s3, root: Path, uri: str = "s3://b/out/", algo: str = "algo-1", count: OutputCount | None = None,
                 only: set[str] | None = None, via: Transport | None = None) -> tuple[list[str], OutputCount]:
    warnings: list[str] = []
    count = count if count is not None else OutputCount()
    await Uploader(s3, warnings.append).upload_host(via or transport(algo), algo, str(root), parse_location(uri),
                                                   "model", count, only=only)
    return warnings, count


# -- to S3 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, prefix", [("s3://b/out/", "s3://b/out/"), ("s3://b/out", "s3://b/out/"),
                                         ("https://b.s3.us-east-1.amazonaws.com/out/", "s3://b/out/"),
                                         ("s3://b", "s3://b/")])
async def test_every_regular_file_goes_to_the_prefix_plus_its_relative_path(host_output, uri, prefix):
    s3 = FakeS3()
    await upload(s3, host_output, uri)
    assert s3.objects == {prefix + relative: data for relative, data in REGULAR.items()}


async def test_a_file_up_to_part_is_one_put_and_a_larger_one_is_multipart(host_output):
    s3 = FakeS3()
    await upload(s3, host_output)
    large = {relative for relative, data in REGULAR.items() if len(data) > PART}
    assert sorted(u.location.key for u in s3.uploads) == sorted(f"out/{r}" for r in large)
    assert sorted(s3.puts) == sorted(f"s3://b/out/{r}" for r in REGULAR if r not in large)
    for multipart in s3.uploads:
        data = REGULAR[multipart.location.key[len("out/"):]]
        parts = [multipart.parts[n] for n in sorted(multipart.parts)]
        assert b"".join(parts) == data
        assert len(parts) == -(-len(data) // PART)
        assert all(len(p) == PART for p in parts[:-1]) and 0 < len(parts[-1]) <= PART
        assert multipart.completed and not multipart.aborted


async def test_symlinks_and_special_files_are_skipped_with_a_warning(host_output):
    s3 = FakeS3()
    warnings, _ = await upload(s3, host_output)
    assert not any(key.endswith(("link", "fifo", "escape", "empty-dir")) for key in s3.objects)
    assert len(warnings) == 3
    assert any("symlink" in w and "algo-1:link" in w for w in warnings)
    assert any("symlink" in w and "algo-1:sub/escape" in w for w in warnings)
    assert any("algo-1:fifo" in w and "not a regular file" in w for w in warnings)
    assert all(w.startswith("output model:") for w in warnings)


async def test_what_moved_is_counted(host_output):
    _, count = await upload(FakeS3(), host_output)
    assert (count.objects, count.bytes) == (len(REGULAR), sum(len(d) for d in REGULAR.values()))
    assert len(count.written_by) == len(REGULAR)
    assert all(count.wrote(relative, "algo-2") == "algo-1" for relative in REGULAR)


async def test_two_hosts_writing_the_same_path_warn_that_the_last_upload_wins(tmp_path):
    s3 = FakeS3()
    count = OutputCount()
    for algo, body in (("algo-1", b"one"), ("algo-2", b"two")):
        root = tmp_path / algo
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "model.bin").write_bytes(body)
        (root / f"{algo}.log").write_bytes(body)
        warnings, _ = await upload(s3, root, algo=algo, count=count)
    assert warnings == ["output model: algo-1 and algo-2 both wrote sub/model.bin; the last upload wins"]
    assert s3.objects == {"s3://b/out/sub/model.bin": b"two", "s3://b/out/algo-1.log": b"one",
                          "s3://b/out/algo-2.log": b"two"}


async def test_a_failing_part_aborts_the_upload_and_is_a_client_error(host_output):
    s3 = FakeS3(failing_parts={3})
    with pytest.raises(ClientError, match="part 3"):
        await upload(s3, host_output)
    big = next(u for u in s3.uploads if u.location.key == "out/sub/big.bin")  # the one file with a part 3
    assert big.aborted and not big.completed
    assert "s3://b/out/sub/big.bin" not in s3.objects


async def test_a_failing_put_is_a_client_error(host_output):
    s3 = FakeS3(failing_puts={"s3://b/out/a.txt"})
    with pytest.raises(ClientError, match="s3://b/out/a.txt"):
        await upload(s3, host_output)


async def test_a_missing_output_directory_is_a_client_error_naming_the_output_and_the_host(tmp_path):
    with pytest.raises(ClientError) as caught:
        await upload(FakeS3(), tmp_path / "missing")
    assert "output model" in caught.value.message and "algo-1 (h1, 127.0.0.1)" in caught.value.message


async def test_only_the_named_files_are_uploaded_when_asked(host_output):
    s3 = FakeS3()
    await upload(s3, host_output, only={"a.txt", "sub/deep/b.csv", "sub/big.bin"})
    assert s3.objects == {f"s3://b/out/{r}": REGULAR[r] for r in ("a.txt", "sub/deep/b.csv", "sub/big.bin")}


# -- to a file:// directory --------------------------------------------------------------------

async def test_file_destination_gets_every_regular_file_under_the_directory(host_output, tmp_path):
    destination = tmp_path / "controller" / "out"
    destination.mkdir(parents=True)
    warnings, _ = await upload(None, host_output, f"file://{destination}")
    found = {p.relative_to(destination).as_posix(): p.read_bytes()
             for p in destination.rglob("*") if p.is_file() and not p.is_symlink()}
    assert found == REGULAR
    assert not any(p.is_symlink() for p in destination.rglob("*"))
    assert not any(p.name.startswith(".fleet-") for p in destination.rglob("*"))  # no temporary left
    assert len(warnings) == 3


async def test_file_destination_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "a.txt").write_bytes(b"from the host")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "a.txt").symlink_to(outside)
    await upload(None, host, f"file://{destination}")
    assert outside.read_bytes() == b"precious"
    assert not (destination / "a.txt").is_symlink()
    assert (destination / "a.txt").read_bytes() == b"from the host"


async def test_file_destination_creates_nothing_through_a_symlinked_directory(tmp_path):
    host = tmp_path / "host"
    (host / "sub" / "deep").mkdir(parents=True)
    (host / "sub" / "deep" / "b.csv").write_bytes(b"b")
    outside = tmp_path / "outside"
    outside.mkdir()
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ClientError, match="outside"):
        await upload(None, host, f"file://{destination}")
    assert list(outside.iterdir()) == []


# -- a stream that breaks mid-file -------------------------------------------------------------

async def _cut_transport(data: bytes) -> ScriptedTransport:
    """A host whose `tar -c` channel ends after `data` without an exit status (-1): the data is
    there at once (reads don't yield), then EOF."""
    async def archive(command: ScriptedCommand) -> int:
        command.write_stdout(data)
        return -1
    transport = ScriptedTransport(LocalHost(address="localhost", name="algo-1"),
                                  "algo-1 (h1, 127.0.0.1)", archive)
    await transport.connect()
    return transport


def cut_archive(size: int, sent: int) -> bytes:
    """A tar stream announcing a `size`-byte file, broken after `sent` bytes of it."""
    return tarstream.file_header("model.bin", size) + content(9, sent)


async def test_a_stream_that_breaks_inside_a_multipart_file_aborts_the_upload(tmp_path):
    s3 = FakeS3()
    with pytest.raises(ClientError, match="ended early"):
        await upload(s3, tmp_path, via=await _cut_transport(cut_archive(100 * PART, 2 * PART)))
    assert [(u.aborted, u.completed) for u in s3.uploads] == [(True, False)]
    assert s3.objects == {}


async def test_a_broken_stream_does_not_starve_later_uploads(monkeypatch, host_output):
    monkeypatch.setattr(outputs, "PART_BUFFERS", 4)
    s3 = FakeS3()
    uploader = Uploader(s3, lambda warning: None)
    # Regression: a part task cancelled before it started never gave its place (now: its buffer) back,
    # so a long-lived Uploader (Continuous outputs) hung after a few broken streams.
    for _ in range(2):  # each breaks with two parts queued, not yet started
        with pytest.raises(ClientError):
            await uploader.upload_host(await _cut_transport(cut_archive(100 * PART, 2 * PART)), "algo-1", "/unused",
                                       S3Location("b", "out/"), "model", OutputCount())
    async with asyncio.timeout(5):  # instant unless the places leaked
        await uploader.upload_host(transport(), "algo-1", str(host_output), S3Location("b", "out/"), "model",
                                   OutputCount(), only={"sub/big.bin"})
    assert s3.objects == {"s3://b/out/sub/big.bin": REGULAR["sub/big.bin"]}


# -- a container that swaps what was listed (Continuous outputs) --------------------------------

async def listing(root: Path) -> set[str]:
    """The host's changed-files listing of `root`, as JobData reads it."""
    result = await transport().run(host_command("changed-files", [str(root)]))
    return {r.decode("utf-8", "surrogateescape").split(" ", 2)[2] for r in result.stdout.split(b"\0") if r}


@pytest.fixture
def host_secret(tmp_path) -> Path:
    """A host directory the container cannot see: it only knows the path."""
    secret = tmp_path / "host-secret"
    secret.mkdir()
    (secret / "model.bin").write_bytes(b"HOST SECRET")
    (secret / "deeper").mkdir()
    (secret / "deeper" / "model.bin").write_bytes(b"HOST SECRET, DEEPER")
    return secret


@pytest.mark.parametrize("destination", ["s3", "file"])
async def test_a_directory_swapped_for_a_symlink_after_the_listing_sends_nothing_of_the_host(
        tmp_path, host_secret, destination):
    root = tmp_path / "out"
    for relative in ("a/model.bin", "b/deeper/model.bin", "kept.txt"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"the container's own")
    listed = await listing(root)
    assert listed == {"a/model.bin", "b/deeper/model.bin", "kept.txt"}
    # Between the listing and the archive, the container swaps `a` and `b` for symlinks.
    shutil.rmtree(root / "a")
    (root / "a").symlink_to(host_secret, target_is_directory=True)
    shutil.rmtree(root / "b")
    (root / "b").symlink_to(host_secret, target_is_directory=True)
    s3 = FakeS3()
    target = tmp_path / "collected"
    target.mkdir()
    warnings, count = await upload(s3 if destination == "s3" else None, root,
                                   "s3://b/out/" if destination == "s3" else f"file://{target}", only=listed)
    stored = list(s3.objects.values()) + [p.read_bytes() for p in target.rglob("*") if p.is_file()]
    assert not any(b"HOST SECRET" in data for data in stored)
    assert stored == [b"the container's own"]  # kept.txt alone
    assert (count.objects, warnings) == (1, [])


async def test_a_listed_file_swapped_for_a_symlink_is_skipped_with_a_warning(tmp_path, host_secret):
    root = tmp_path / "out"
    root.mkdir()
    (root / "model.bin").write_bytes(b"the container's own")
    listed = await listing(root)
    (root / "model.bin").unlink()
    (root / "model.bin").symlink_to(host_secret / "model.bin")
    s3 = FakeS3()
    warnings, _ = await upload(s3, root, only=listed)
    assert s3.objects == {}
    assert warnings == ["output model: skipped the symlink algo-1:model.bin (symlinks are never followed)"]


async def test_a_file_that_appeared_after_the_listing_waits_for_the_next_pass(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "listed.txt").write_bytes(b"listed")
    listed = await listing(root)
    (root / "new.txt").write_bytes(b"new")
    s3 = FakeS3()
    uploaded: list[str] = []
    await Uploader(s3, lambda w: None).upload_host(transport(), "algo-1", str(root), parse_location("s3://b/out/"),
                                                   "model", OutputCount(), only=listed, uploaded=uploaded.append)
    assert s3.objects == {"s3://b/out/listed.txt": b"listed"}
    assert uploaded == ["listed.txt"]


AWKWARD = ["sp", "sp ", " lead", "tab\t", "new\nline", "star*", "q?", "[ab]", "back\\slash", "-rf", "é", "日本",
           "bad\udcff", "bad\udcff.txt", "d/sp", "d/sp ", "d", "x" * 200]


async def archived_names(root: Path, leave_out: set[str]) -> list[str]:
    """What the host's `archive ... except` sends, leaving out `leave_out`."""
    process = await transport().start(host_command("archive", [str(root), "except"]))
    await process.write(outputs._exclusions(leave_out))
    process.close_stdin()
    reader = tarstream.TarReader(process.read_stdout)
    names = []
    while (entry := await reader.next()) is not None:
        names.append(entry.name)
    assert await process.wait() == 0
    return names


@pytest.mark.parametrize("wanted", AWKWARD)
async def test_the_host_leaves_out_the_unwanted_files_and_never_a_wanted_one(tmp_path, wanted):
    root = tmp_path / "out"
    (root / "d").mkdir(parents=True)
    for name in AWKWARD:
        if name != "d":
            (root / os.fsencode(name).decode("utf-8", "surrogateescape")).write_bytes(b"x")
    files = set(AWKWARD) - {"d"}
    sent = await archived_names(root, files - {wanted})
    if wanted != "d":
        assert wanted in sent
    # Left out: every unwanted name tar's exclusion file can say exactly (one a line, no trailing
    # whitespace); the others are sent and skipped by the controller.
    unsayable = {n for n in files if "\n" in n or n[-1].isspace() or not n[-1].isascii()}
    assert set(sent) - {".", "d"} <= {wanted} | unsayable


async def test_only_the_wanted_awkward_names_are_uploaded(tmp_path):
    root = tmp_path / "out"
    (root / "d").mkdir(parents=True)
    for name in AWKWARD:
        if name != "d" and "\udcff" not in name:
            (root / name).write_bytes(name.encode())
    files = set(await listing(root))
    for wanted in files:
        s3 = FakeS3()
        await Uploader(s3, lambda w: None).upload_host(transport(), "algo-1", str(root), parse_location("s3://b/o/"),
                                                       "model", OutputCount(), only={wanted},
                                                       leave_out=files - {wanted})
        assert s3.objects == {f"s3://b/o/{wanted}": wanted.encode()}


async def _answering(data: bytes, status: int) -> ScriptedTransport:
    async def archive(command: ScriptedCommand) -> int:
        command.write_stdout(data)
        return status
    transport = ScriptedTransport(LocalHost(address="localhost", name="algo-1"),
                                  "algo-1 (h1, 127.0.0.1)", archive)
    await transport.connect()
    return transport


def _one_file_archive() -> bytes:
    return tarstream.file_header("a.txt", 2) + b"ok" + tarstream.padding(2) + tarstream.END_OF_ARCHIVE


async def test_a_file_changed_as_tar_read_it_fails_an_end_of_job_upload_only():
    # GNU tar exits 1 when a file changed while it read it: a running container's (Continuous)
    # files do, and are uploaded again once settled; an exited container's never do.
    s3 = FakeS3()
    uploader = Uploader(s3, lambda w: None)
    uploaded: list[str] = []
    await uploader.upload_host(await _answering(_one_file_archive(), 1), "algo-1", "/unused", S3Location("b", "out/"),
                               "model", OutputCount(), only={"a.txt"}, uploaded=uploaded.append)
    assert uploaded == ["a.txt"]
    with pytest.raises(ClientError, match="reading output model on algo-1"):
        await uploader.upload_host(await _answering(_one_file_archive(), 1), "algo-1", "/unused",
                                   S3Location("b", "out/"), "model", OutputCount())
    with pytest.raises(ClientError, match="reading output model on algo-1"):
        await uploader.upload_host(await _answering(_one_file_archive(), 2), "algo-1", "/unused",
                                   S3Location("b", "out/"), "model", OutputCount(), only={"a.txt"})


# -- a hostile tar stream ----------------------------------------------------------------------

def _ustar(size_field: bytes, kind: bytes = b"0") -> bytes:
    head = b"f.bin".ljust(100, b"\0") + b"0000644\0" * 3 + size_field + b"00000000000\0"
    tail = kind + b"\0" * 100 + b"ustar\x0000" + b"\0" * 247
    return head + b"%06o\0 " % (sum(head) + 8 * 0x20 + sum(tail)) + tail


HOSTILE = {
    "negative-size": _ustar(b"-0000000005\0") + b"x" * 1024,
    "pax-record-of-length-0": _ustar(b"%011o\0" % 10, b"x") + b"0 path=x\n".ljust(512, b"\0") + b"\0" * 1024,
    "pax-header-over-1-mib": (_ustar(b"%011o\0" % (2 << 20), b"x") + b"%d path=" % (2 << 20) + b"n" * ((2 << 20) - 14)
                              + b"\n" + _one_file_archive()),
    "bad-checksum": _one_file_archive()[:3] + b"X" + _one_file_archive()[4:],
    "not-tar": b"<html>" + b"\0" * 2000,
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_tar_stream_is_a_client_error_naming_the_output_and_the_host(data):
    s3 = FakeS3()
    with alarm(5), pytest.raises(ClientError) as caught:
        async with asyncio.timeout(5):
            await Uploader(s3, lambda w: None).upload_host(await _answering(data, 0), "algo-1", "/unused",
                                                           S3Location("b", "out/"), "model", OutputCount())
    assert caught.value.message.startswith("reading output model on algo-1 (h1, 127.0.0.1): ")
    assert s3.objects == {}


# -- names the destination cannot take ---------------------------------------------------------

@pytest.mark.parametrize("destination", ["s3", "file"])
async def test_a_file_name_that_is_not_utf_8_fails_the_output_naming_it_with_escapes(tmp_path, destination):
    root = tmp_path / "out"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.csv")).write_bytes(b"latin-1 name")
    target = tmp_path / "collected"
    target.mkdir()
    with pytest.raises(ClientError) as caught:
        await upload(FakeS3() if destination == "s3" else None, root,
                     "s3://b/out/" if destination == "s3" else f"file://{target}")
    assert "algo-1:caf\\xe9.csv" in caught.value.message and "not UTF-8" in caught.value.message
    assert caught.value.message.isascii() and "\udce9" not in caught.value.message
    assert list(target.iterdir()) == []


async def test_a_file_destination_path_too_long_for_the_filesystem_fails_the_output_naming_it(tmp_path):
    host = tmp_path / "h"
    relative = "/".join(["d" * 200] * 18) + "/model.bin"  # ~3.6 KB: fine below the host's short root
    (host / relative).parent.mkdir(parents=True)
    (host / relative).write_bytes(b"deep")
    target = tmp_path / ("t" * 250) / ("t" * 250)
    target.mkdir(parents=True)
    assert len(f"{target}/{relative}") > 4096
    with pytest.raises(ClientError) as caught:
        await upload(None, host, f"file://{target}")
    assert caught.value.message.startswith(f"cannot write output file {target}/{relative[:100]}")
    assert "name too long" in caught.value.message
    assert not any(p.is_file() for p in target.rglob("*"))
