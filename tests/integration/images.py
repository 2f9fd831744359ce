"""Test images beyond local-cluster's busybox one.

  python_image   session fixture: `fleet-test:python` on the controller's dockerd and on every
                 test host, one image ID everywhere (fleet refuses hosts whose IDs differ).
                 Returns that ID.

The image is this machine's own Debian python3.11 (the python3.11-minimal and
libpython3.11-stdlib packages' files), no network: /usr/bin/python3.11, the shared libraries
it and the standard library's extension modules load (found with ldd), /usr/lib/python3.11
without what a job never uses (test/, idlelib/, tkinter/, turtledemo/, ensurepip/, pydoc_data/,
__pycache__/, the 25 MB static libpython in config-3.11-*/; lib-dynload without the test,
curses, readline, dbm and nis modules), and busybox for `sh` and the usual commands. Laid out
merged-/usr as Debian is (/bin, /lib, /lib64 -> usr/...), so the libraries sit where the
loader looks for them without an ld.so.cache.

Built lazily, the first time a test asks for it (not by `scripts/local-cluster up`, which
most test sessions need without it): the rootfs tarball is written (~1 s), `docker import`-ed
ONCE on the controller's dockerd, then `docker save` once and `docker load` into every host's
dockerd in parallel. A session that finds the image already everywhere with one ID reuses it.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PYTHON_IMAGE = "fleet-test:python"
PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "pydoc_data", "__pycache__",
             "config-3.11-x86_64-linux-gnu"}
SKIP_MODULES = re.compile(r"^(_test|_xxtest|xxlimited|_ctypes_test|_curses|readline|_dbm|_gdbm|nis|ossaudiodev"
                          r"|_tkinter)")
APPLETS = ("sh", "cat", "echo", "sleep", "ls", "env", "printf", "mkdir", "head", "tail", "wc", "sed", "grep",
           "hostname", "id", "kill", "ps", "rm", "cp", "mv", "touch", "true", "false", "test", "[", "nc")
CHANGES = ('ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
           'ENV PYTHONUNBUFFERED=1',
           'ENV PYTHONDONTWRITEBYTECODE=1',
           'ENTRYPOINT ["python3"]')


def _in_image(path: str) -> str:
    """Where a host path goes in the merged-/usr image: /lib/x -> usr/lib/x (tar names are relative)."""
    for top in ("/lib64/", "/lib/", "/bin/", "/sbin/"):
        if path.startswith(top):
            return "usr" + path
    return path.lstrip("/")


def _libraries(*objects: Path) -> set[str]:
    """Every shared library (and the loader) the objects load, as ldd names them."""
    found: set[str] = set()
    for obj in objects:
        out = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, check=True, timeout=30).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(match.group(1))
    return found


def write_python_rootfs(out: Path) -> int:
    """The image's root file system as a tarball at `out`; returns its size in bytes."""
    modules = [p for p in sorted((STDLIB / "lib-dynload").glob("*.so")) if not SKIP_MODULES.match(p.name)]
    libraries = _libraries(PYTHON, *modules)
    now = time.time()

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
        tar.addfile(info)

    def add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, now
        tar.addfile(info)

    def add_file(tar: tarfile.TarFile, name: str, source: Path | None = None, data: bytes | None = None,
                 mode: int | None = None) -> None:
        if source is not None:
            source = source.resolve()
            info = tarfile.TarInfo(name)
            stat = source.stat()
            info.size, info.mode, info.mtime = stat.st_size, mode or (stat.st_mode & 0o7777), stat.st_mtime
            with open(source, "rb") as f:
                tar.addfile(info, f)
        else:
            assert data is not None
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode or 0o644, now
            tar.addfile(info, io.BytesIO(data))

    made: set[str] = set()

    def parents(tar: tarfile.TarFile, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                add_dir(tar, d)

    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/local", "usr/local/bin", "etc",
                  "root", "opt", "var"):
            made.add(d)
            add_dir(tar, d, 0o700 if d == "root" else 0o755)
        add_dir(tar, "tmp", 0o1777)
        made.add("tmp")
        for top in ("bin", "lib", "lib64", "sbin"):
            add_link(tar, top, f"usr/{top}")
        add_file(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
        add_file(tar, "usr/bin/busybox", BUSYBOX, mode=0o755)
        for applet in APPLETS:
            add_link(tar, f"usr/bin/{applet}", "busybox")
        add_file(tar, "usr/bin/python3.11", PYTHON, mode=0o755)
        add_link(tar, "usr/bin/python3", "python3.11")
        add_link(tar, "usr/bin/python", "python3.11")
        for lib in sorted(libraries):
            name = _in_image(lib)
            parents(tar, name)
            add_file(tar, name, Path(lib))
        for path in sorted(STDLIB.rglob("*")):
            rel = path.relative_to(STDLIB)
            if any(part in SKIP_DIRS for part in rel.parts):
                continue
            if rel.parts[0] == "lib-dynload" and path.suffix == ".so" and SKIP_MODULES.match(path.name):
                continue
            name = f"usr/lib/python3.11/{rel.as_posix()}"
            parents(tar, name)
            if path.is_symlink():
                add_link(tar, name, str(path.readlink()))
            elif path.is_dir():
                made.add(name)
                add_dir(tar, name)
            elif path.is_file():
                add_file(tar, name, path)
    return out.stat().st_size


def _docker(host: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} on {host}: {result.stderr.strip()}")
    return result.stdout


def _image_id(host: str, image: str) -> str | None:
    result = subprocess.run(["docker", "-H", host, "image", "inspect", "-f", "{{.Id}}", image],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def install_python_image(controller_host: str, host_dockers: list[str], work: Path,
                         tag: str = PYTHON_IMAGE) -> tuple[str, dict]:
    """Build `tag` once on the controller's dockerd and load it into every host's; returns
    (image ID, facts: sizes and seconds). Reuses an image already everywhere with one ID."""
    facts: dict = {}
    existing = _image_id(controller_host, tag)
    if existing and all(_image_id(h, tag) == existing for h in host_dockers):
        return existing, {"reused": True}
    began = time.monotonic()
    rootfs = work / "python-rootfs.tar"
    facts["rootfs_bytes"] = write_python_rootfs(rootfs)
    facts["rootfs_seconds"] = round(time.monotonic() - began, 2)
    args = [a for change in CHANGES for a in ("-c", change)]
    _docker(controller_host, "import", *args, str(rootfs), tag)
    image_id = _docker(controller_host, "image", "inspect", "-f", "{{.Id}}", tag).strip()
    facts["image_bytes"] = int(_docker(controller_host, "image", "inspect", "-f", "{{.Size}}", tag).strip())
    saved = work / "python-image.saved.tar"
    _docker(controller_host, "save", "-o", str(saved), tag)
    facts["import_seconds"] = round(time.monotonic() - began, 2)
    with ThreadPoolExecutor(len(host_dockers) or 1) as pool:
        list(pool.map(lambda h: _docker(h, "load", "-q", "-i", str(saved)), host_dockers))
    rootfs.unlink()
    saved.unlink()
    ids = {h: _image_id(h, tag) for h in host_dockers}
    if any(i != image_id for i in ids.values()):
        raise AssertionError(f"{tag}: the hosts' image IDs differ from the controller's {image_id}: {ids}")
    facts["total_seconds"] = round(time.monotonic() - began, 2)
    return image_id, facts


@pytest.fixture(scope="session")
def python_image(cluster, controller_docker, tmp_path_factory) -> str:
    """`fleet-test:python` (python3 + busybox) on the controller and every test host; its ID."""
    if not PYTHON.exists() or not (STDLIB / "lib-dynload").is_dir():
        pytest.skip(f"{PYTHON} (Debian's python3.11-minimal) is not installed here")
    image_id, _ = install_python_image(controller_docker.host, [h.docker_host for h in cluster.hosts],
                                       tmp_path_factory.mktemp("python-image"))
    return image_id
