"""tar is the wire format between the controller and a host's `tar`: what fleet writes must
extract exactly with Python's tarfile and GNU `tar -x`; what GNU `tar -c` sends must be
parsed exactly by TarReader, however the bytes are chunked on the way."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.data import tarstream
from fleet.data.tarstream import (
    BLOCK,
    END_OF_ARCHIVE,
    TarEndedEarly,
    TarEntry,
    TarReader,
    TarStreamError,
    file_header,
    padding,
)

from localcommands import alarm, tree

C_LOCALE = {**os.environ, "LC_ALL": "C", "LANG": "C"}  # what a non-interactive SSH session often has

NAMES = [
    "a.csv",
    "x" * 99,
    "x" * 100,
    "x" * 101,
    "y" * 255,
    "/".join(["dir"] * 40) + "/f.bin",  # 163 characters, deep
    "long-" + "z" * 200 + "/" + "w" * 200 + ".parquet",  # over 255: no ustar prefix/name split fits
    "ü/日本語/données.csv",
    "é" * 60,  # 60 characters, 120 bytes
    "with space/it's \"quoted\".txt",
    "new\nline",
    "-rf",
]
SIZES = [0, 1, 511, 512, 513, 1023, 1024, 1025, 70_000]


def content(i: int, size: int) -> bytes:
    return bytes((i * 7 + k * 13) % 251 for k in range(size))


def entries() -> list[tuple[str, bytes]]:
    """Every name with a few sizes and every size with a few names: ~30 files."""
    result = []
    for i, name in enumerate(NAMES):
        result.append((name, content(i, SIZES[i % len(SIZES)])))
    for i, size in enumerate(SIZES):
        result.append((f"sizes/{size}.bin", content(100 + i, size)))
    return result


def archive(files: list[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    for name, data in files:
        out += file_header(name, len(data)) + data + padding(len(data))
    return bytes(out + END_OF_ARCHIVE)


def chunked(data: bytes, size: int):
    position = 0

    async def read() -> bytes:
        nonlocal position
        chunk = data[position:position + size]
        position += len(chunk)
        return chunk
    return read


async def read_archive(data: bytes, chunk: int) -> list[tuple[TarEntry, bytes]]:
    reader = TarReader(chunked(data, chunk))
    found = []
    while (entry := await reader.next()) is not None:
        found.append((entry, b"".join([c async for c in reader.chunks()])))
    return found


# -- writing: file_header, padding, END_OF_ARCHIVE ---------------------------------------------

@pytest.mark.parametrize("size, pad", [(0, 0), (1, 511), (511, 1), (512, 0), (513, 511), (1024, 0), (70_000, 144)])
def test_padding_fills_the_last_block(size, pad):
    assert padding(size) == b"\0" * pad
    assert (size + len(padding(size))) % BLOCK == 0


def test_a_header_is_whole_blocks():
    for name, data in entries():
        assert len(file_header(name, len(data))) % BLOCK == 0
    assert END_OF_ARCHIVE == b"\0" * 1024


def test_python_tarfile_reads_back_exactly_what_was_written():
    files = entries()
    with tarfile.open(fileobj=io.BytesIO(archive(files)), mode="r:") as tar:
        members = tar.getmembers()
        assert [(m.name, m.size, m.isfile()) for m in members] == [(n, len(d), True) for n, d in files]
        assert [tar.extractfile(m).read() for m in members] == [d for _, d in files]


@pytest.mark.parametrize("env", [None, C_LOCALE], ids=["default-locale", "C-locale"])
def test_gnu_tar_extracts_exactly_what_was_written(tmp_path, env):
    files = entries()
    result = subprocess.run(["tar", "-x", "-f", "-", "-C", str(tmp_path)], input=archive(files),
                            capture_output=True, env=env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == dict(files)


def test_gnu_tar_extracts_an_archive_holding_nothing(tmp_path):
    result = subprocess.run(["tar", "-x", "-f", "-", "-C", str(tmp_path)], input=END_OF_ARCHIVE,
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("chunk", [1, 511, 513, 7000])
async def test_tar_reader_reads_back_what_was_written(chunk):
    files = entries()
    found = await read_archive(archive(files), chunk)
    assert [(e.name, e.kind, e.size) for e, _ in found] == [(n, "file", len(d)) for n, d in files]
    assert [data for _, data in found] == [d for _, d in files]


# -- reading GNU tar -c ------------------------------------------------------------------------

LONG_DIR = "d" * 90 + "/" + "e" * 90  # a path over 100 characters
LONG_FILE = LONG_DIR + "/" + "f" * 120 + ".bin"  # over 255


@pytest.fixture(scope="module")
def host_tree(tmp_path_factory) -> Path:
    """An output directory as a container might leave it."""
    root = tmp_path_factory.mktemp("host") / "out"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / LONG_DIR).mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "block.bin").write_bytes(content(1, 512))
    (root / "sub" / "deep" / "odd.bin").write_bytes(content(2, 1025))
    (root / "sub" / "deep" / "large.bin").write_bytes(content(3, 70_000))
    (root / LONG_FILE).write_bytes(content(4, 3000))
    (root / "ü-日本語.csv").write_bytes("données\n".encode())
    (root / "link").symlink_to("a.txt")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.mkfifo(root / "fifo")
    (root / "hard-1").write_bytes(content(5, 600))
    os.link(root / "hard-1", root / "hard-2")
    return root


def gnu_tar_c(root: Path, *options: str) -> bytes:
    result = subprocess.run(["tar", "-c", "-f", "-", *options, "."], cwd=root, capture_output=True, check=True)
    return result.stdout


def expected_entries(root: Path) -> dict[str, tuple[str, bytes]]:
    expected = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                expected[relative] = ("symlink", b"")
            elif path.is_dir():
                expected[relative] = ("dir", b"")
            elif path.is_file():
                expected[relative] = ("file", path.read_bytes())
            else:
                expected[relative] = ("other", b"")
    return expected


@pytest.mark.parametrize("chunk", [1, 511, 513, 7000])
@pytest.mark.parametrize("options", [[], ["--format=pax"], ["--format=gnu"], ["--format=posix"]],
                         ids=["default", "pax", "gnu", "posix"])
async def test_tar_reader_parses_gnu_tar_output_exactly(host_tree, options, chunk):
    found = await read_archive(gnu_tar_c(host_tree, "--hard-dereference", *options), chunk)
    seen = {e.name: (e.kind, data) for e, data in found if e.name != "."}
    assert seen == expected_entries(host_tree)
    assert LONG_FILE in seen and "ü-日本語.csv" in seen
    for entry, data in found:
        if entry.kind != "file":
            assert entry.size == 0 and data == b""
        else:
            assert entry.size == len(data)


async def test_tar_reader_reports_symlinks_fifos_and_directories_by_kind(host_tree):
    kinds = {e.name: e.kind for e, _ in await read_archive(gnu_tar_c(host_tree, "--hard-dereference"), 7000)}
    assert kinds["link"] == kinds["dangling"] == "symlink"
    assert kinds["fifo"] == "other"
    assert kinds["sub"] == kinds["sub/deep"] == kinds["empty-dir"] == kinds[LONG_DIR] == "dir"
    assert kinds["hard-1"] == kinds["hard-2"] == "file"


async def test_tar_reader_reports_a_hard_link_without_hard_dereference_as_a_hardlink(host_tree):
    found = {e.name: (e.kind, data) for e, data in await read_archive(gnu_tar_c(host_tree), 7000)}
    kinds = sorted([found["hard-1"][0], found["hard-2"][0]])
    assert kinds == ["file", "hardlink"]
    assert b"" in (found["hard-1"][1], found["hard-2"][1])


async def test_an_entrys_content_need_not_be_read_before_the_next_entry(host_tree):
    data = gnu_tar_c(host_tree, "--hard-dereference")
    reader = TarReader(chunked(data, 513))
    names = []
    while (entry := await reader.next()) is not None:
        names.append(entry.name)
    assert set(names) - {"."} == set(expected_entries(host_tree))


# -- truncation --------------------------------------------------------------------------------

TRUNCATED_NAME = "t" * 150  # a pax header, then the ustar header
TRUNCATED_SIZE = 1000
PAX_BLOCKS = len(file_header(TRUNCATED_NAME, TRUNCATED_SIZE)) - BLOCK  # pax header + its records
FIRST_CONTENT = PAX_BLOCKS + BLOCK
NEXT_HEADER = FIRST_CONTENT + TRUNCATED_SIZE + len(padding(TRUNCATED_SIZE))
NEXT_CONTENT = NEXT_HEADER + BLOCK


def truncated_archive(cut: int) -> bytes:
    data = archive([(TRUNCATED_NAME, content(9, TRUNCATED_SIZE)), ("next.txt", b"next")])
    return data[:cut]


@pytest.mark.parametrize("chunk", [1, 513, 7000])
@pytest.mark.parametrize("cut", [
    BLOCK + 10,  # inside the pax records
    FIRST_CONTENT + 1,  # after the first byte of the content
    FIRST_CONTENT + 700,  # inside the content
    FIRST_CONTENT + TRUNCATED_SIZE + 5,  # inside the padding
    NEXT_CONTENT + 2,  # inside the next file's content
], ids=["pax-records", "content-start", "content", "padding", "next-content"])
async def test_a_truncated_stream_raises_eof_error(cut, chunk):
    with pytest.raises(EOFError):
        await read_archive(truncated_archive(cut), chunk)


@pytest.mark.parametrize("cut", [
    100,  # inside the first (pax) header
    PAX_BLOCKS + 100,  # inside the ustar header after the pax records
    NEXT_HEADER + 100,  # inside the next file's header
], ids=["pax-header", "ustar-header", "next-header"])
async def test_a_stream_truncated_inside_a_header_raises_eof_error(cut):
    with pytest.raises(EOFError):
        await read_archive(truncated_archive(cut), 513)


@pytest.mark.parametrize("name", ["a", "a/b.csv", "x" * 99, "x" * 100, "dir/ü.txt", "sp ace/%$'\"", "a" * 300])
@pytest.mark.parametrize("size", [0, 1, 4096, 8 ** 11 - 1, 8 ** 11])
def test_file_header_is_the_one_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    assert file_header(name, size) == info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8",
                                                           errors="surrogateescape")


# -- a hostile stream --------------------------------------------------------------------------
# The stream comes from a host, and through it from a container: whatever it holds, the reader
# raises TarStreamError, never loops, never buffers more than a header's cap, never fails in
# another way. A reader that loops without awaiting blocks the event loop, which no asyncio
# timeout can interrupt: `bounded` also sets an alarm, whose handler interrupts pure Python.

async def bounded(data: bytes, chunk: int = 7000) -> list[tuple[TarEntry, bytes]]:
    with alarm(5):
        async with asyncio.timeout(5):
            return await read_archive(data, chunk)


def header(name: bytes = b"f.bin", size: bytes | int = 0, kind: bytes = b"0", checksum: int | None = None) -> bytes:
    """A ustar header block with any size field (12 bytes, or a number as octal) and the
    right checksum unless one is given."""
    field = size if isinstance(size, bytes) else b"%011o\0" % size
    assert len(field) == 12
    head = (name.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" + b"0000000\0" + field + b"00000000000\0")
    tail = kind + b"\0" * 100 + b"ustar\x0000" + b"\0" * 247
    if checksum is None:
        checksum = sum(head) + 8 * 0x20 + sum(tail)
    return head + b"%06o\0 " % checksum + tail


def extended(kind: bytes, data: bytes) -> bytes:
    """A pax (`x`) or GNU long name (`L`) header and its data."""
    return header(b"././@PaxHeader", len(data), kind) + data + padding(len(data))


def record(text: bytes) -> bytes:
    """A well-formed pax record: its length counts itself."""
    length = len(text) + 3
    while len(b"%d %s\n" % (length, text)) != length:
        length += 1
    return b"%d %s\n" % (length, text)


def then_a_file(body: bytes = b"data") -> bytes:
    return header(b"f.bin", len(body)) + body + padding(len(body)) + END_OF_ARCHIVE


def test_the_hostile_stream_helpers_make_a_stream_the_reader_reads():
    data = extended(b"x", record(b"path=named by pax")) + then_a_file()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("named by pax", 4)]


async def test_helpers_stream_is_read_by_the_tar_reader():
    found = await bounded(extended(b"x", record(b"path=named by pax")) + then_a_file())
    assert [(e.name, e.kind, e.size, d) for e, d in found] == [("named by pax", "file", 4, b"data")]


@pytest.mark.parametrize("data", [
    extended(b"x", record(b"size=-5")) + then_a_file(),
    header(size=b"-0000000005\0") + b"\0" * 1024,  # octal, with a sign Python's int() takes
    header(size=b"\xff" * 12) + b"x" * 512 + END_OF_ARCHIVE,  # base-256: -1
    header(size=b"\xff" + b"\0" * 10 + b"\x05") + b"\0" * 1024,  # base-256, negative
], ids=["pax", "octal", "base-256-minus-one", "base-256"])
async def test_a_negative_size_is_refused_instead_of_looping_forever(data):
    with pytest.raises(TarStreamError, match="size '?-"):
        await bounded(data)


@pytest.mark.parametrize("data", [
    extended(b"x", record(b"size=%d" % 2 ** 63)) + then_a_file(),
    extended(b"x", record(b"size=" + b"9" * 5000)) + then_a_file(),  # int() of it raises ValueError
    header(size=b"\x80" + b"\x7f" + b"\xff" * 10) + then_a_file(),  # base-256, over off_t
], ids=["pax-2**63", "pax-5000-digits", "base-256"])
async def test_a_size_beyond_off_t_is_refused(data):
    with pytest.raises(TarStreamError, match="size"):
        await bounded(data)


@pytest.mark.parametrize("value", [b"+5", b" 5", b"5x", b"", b"\xd9\xa3", b"1_0"])
async def test_a_pax_size_that_is_not_decimal_digits_is_refused(value):
    with pytest.raises(TarStreamError, match="size"):
        await bounded(extended(b"x", record(b"size=" + value)) + then_a_file())


@pytest.mark.parametrize("records", [
    b"0 path=x\n",  # a length of 0 never moved on
    b"00 path=x\n",
    b"3 path=x\n",  # shorter than its own text
    b"99 path=x\n",  # longer than the header's data
    b"11 path=x\n6 k=v\n",  # one too many: does not end at a newline
    b"8 path=x\n",  # one too few
    b"path=x\n",  # no length
    b"-9 path=x\n",
    b"9 pathx\n\n",  # no '='
    b"5 =x\n",  # no key
    b"7 \xff\xfe=x\n",  # a key that is not UTF-8
], ids=["zero", "zeros", "too-short", "past-the-end", "no-newline", "cut-short", "no-length", "negative",
        "no-equals", "no-key", "key-not-utf-8"])
async def test_a_malformed_pax_record_is_refused(records):
    with pytest.raises(TarStreamError, match="extended header record"):
        await bounded(extended(b"x", records) + then_a_file())


@pytest.mark.parametrize("kind", [b"x", b"g", b"L", b"K"], ids=["pax", "pax-global", "gnu-long-name",
                                                                "gnu-long-link"])
async def test_an_extended_header_over_1_mib_is_refused_before_it_is_read(kind):
    big = record(b"path=" + b"n" * (tarstream.MAX_HEADER_DATA + 10)) if kind in b"xg" else b"n" * (2 << 20)
    data = extended(kind, big) + then_a_file()
    served = 0

    async def read() -> bytes:  # 64 KiB a read, counted
        nonlocal served
        chunk = data[served:served + 65536]
        served += len(chunk)
        return chunk
    with alarm(5), pytest.raises(TarStreamError, match="extended header of"):
        await TarReader(read).next()
    assert served <= 65536  # only its header block's chunk: the data was never buffered


async def test_an_extended_header_up_to_the_cap_is_read():
    name = "n" * 4000 + "/" + "é" * 100
    found = await bounded(extended(b"x", record(f"path={name}".encode())) + then_a_file())
    assert [e.name for e, _ in found] == [name]


@pytest.mark.parametrize("change", [1, -1, 0o200])
async def test_a_header_with_a_wrong_checksum_is_refused(change):
    good = header(b"f.bin", 4)
    data = header(b"f.bin", 4, checksum=int(good[148:154], 8) + change) + b"data" + padding(4) + END_OF_ARCHIVE
    with pytest.raises(TarStreamError, match="checksum"):
        await bounded(data)


async def test_a_flipped_byte_in_a_header_is_refused():
    data = bytearray(then_a_file())
    data[3] ^= 0x01  # inside the name
    with pytest.raises(TarStreamError, match="checksum"):
        await bounded(bytes(data))


async def test_a_header_that_is_not_a_tar_header_is_refused():
    with pytest.raises(TarStreamError):
        await bounded(b"<html>" + b"x" * 1000 + END_OF_ARCHIVE)


@pytest.mark.parametrize("cut", [100, FIRST_CONTENT + 700, NEXT_HEADER + 100])
async def test_a_truncated_stream_is_a_tar_stream_error_too(cut):
    with pytest.raises(TarEndedEarly, match="ended early"):
        await bounded(truncated_archive(cut), 513)
    assert issubclass(TarEndedEarly, TarStreamError) and issubclass(TarEndedEarly, EOFError)
