"""tar is the wire format between the controller and a host's `tar`: what fleet writes must
extract exactly with Python's tarfile and GNU `tar -x`; what GNU `tar -c` sends must be
parsed exactly by TarReader, however the bytes are chunked on the way."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.data.tarstream import BLOCK, END_OF_ARCHIVE, TarEntry, TarReader, file_header, padding

from localcommands import tree

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
