"""An image archive: the tar `docker save` writes, indexed once, then sent to hosts, each
without the layer files it already has.

Two layouts are read, both with a `manifest.json` that `docker load` follows:
  legacy (docker < 25)   `<v1id>/layer.tar` (a duplicate layer a symlink to another's),
                         `<v1id>/json`, `<configid>.json`, manifest.json, repositories
  OCI (docker >= 25)     `blobs/sha256/<digest>`, index.json, oci-layout, manifest.json
An OCI layout without manifest.json (buildx, skopeo) gets one made here, from index.json.

What a host is sent is the same on every engine (Docker 20.10 to 28 on either image store,
Podman): the image's config and layer files, nothing else of the archive (no index.json,
whose manifest the containerd store would load instead, no legacy `<v1id>/json`,
VERSION or repositories), then a manifest.json made here, last: the archive's own, its
RepoTags plus `fleet-image:HEX` (HEX: the config's digest), the tag through which the
containerd store, whose image IDs are manifest digests, finds the image by its config
(fleet/host/images.sh). Measured on all four engines: a stream cut at any entry boundary
has no manifest.json, and none of them loads anything from it (docker's legacy loader
finds no v1 json to load).

A classic Docker store's `docker load` opens a layer's file only when the host lacks that
layer's chain: a host that has the first K layers of the image loads an archive without
their files (measured on dockerd 20.10 and 28: the image loads, same ID). So such a host
is sent the archive's entries minus those files (`bytes_for(K)` bytes). The containerd
store and Podman read every layer file the manifest names: their hosts get K = 0.

The file may be a user's: headers are parsed one block at a time, extended headers and the
JSON files read are bounded, names must stay inside the archive, sizes inside the file.
InvalidInput, naming the file, for anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import posixpath
import re
import tarfile
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fleet.data.tarstream import BLOCK, END_OF_ARCHIVE
from fleet.errors import InvalidInput
from fleet.image.local import DIGEST, LocalImage

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # docker save writes 3-4 per layer; images have at most 127 layers
MAX_HEADER_DATA = 1024 * 1024  # a pax header's records or a GNU long name
MAX_MANIFEST = 1024 * 1024  # manifest.json, index.json, an OCI manifest
MAX_CONFIG = 16 * 1024 * 1024  # an image's config (its history can be long)
MAX_SIZE = 2 ** 63 - 1
LINK_DEPTH = 8  # symlinks followed from a manifest's path
CHUNK = 1024 * 1024  # bytes read from the file at once

MANIFEST = "manifest.json"
FLEET_TAG = "fleet-image"  # fleet-image:HEX, the image whose config has the digest sha256:HEX
_OCI_INDEX = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_OCI_MANIFEST = ("application/vnd.oci.image.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v2+json")
_TAG = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]{0,254}$")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _file_entry(name: str, content: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT) + content + b"\0" * (-len(content) % BLOCK)


def fleet_tag(config_id: str) -> str:
    """The tag a pushed image is loaded with: its config digest, readable on every engine."""
    return f"{FLEET_TAG}:{config_id.removeprefix('sha256:')}"


def load_manifest(item: Mapping[str, Any], config_id: str, tags: Iterable[str]) -> bytes:
    """The manifest.json entry a host loads the image by: `item` (the archive's manifest
    entry: Config, Layers, ...) with RepoTags `tags` and fleet's tag."""
    wanted = [t for t in tags if isinstance(t, str) and _TAG.match(t) and not t.startswith(f"{FLEET_TAG}:")]
    made = {**item, "RepoTags": [*dict.fromkeys(wanted), fleet_tag(config_id)]}
    return _file_entry(MANIFEST, json.dumps([made], separators=(",", ":")).encode())


@dataclass(frozen=True)
class Entry:
    """One member of the archive, as bytes of the file: [start, end) holds its headers
    (extended ones included), its content and its padding."""

    name: str  # normalized: no "./", no trailing "/"
    kind: str  # "file", "dir", "symlink", "hardlink"
    target: str  # a link's target as an archive path (symlinks resolved from their folder)
    start: int
    data: int  # its content's offset
    size: int
    end: int


@dataclass(frozen=True)
class ImageArchive:
    """An indexed archive of one image (see the module's docstring)."""

    path: Path
    image: LocalImage  # its ID (the config's digest), diff IDs, size (its layer files), tags
    entries: tuple[Entry, ...]
    layer_entries: tuple[tuple[int, ...], ...]  # per layer: the entries load opens for it
    needed: frozenset[int]  # entries every host gets (the config, and the links to it)
    manifest: bytes  # the manifest.json entry sent last (load_manifest)
    stat: tuple[int, int]  # the file's size and mtime (ns) when indexed

    def sent(self, have: int) -> frozenset[int]:
        """The entries a host with the first `have` layers is sent: the config's, and those
        of the layers it lacks."""
        have = max(0, min(have, len(self.image.layers)))
        return frozenset({index for layer in self.layer_entries[have:] for index in layer} | self.needed)

    def bytes_for(self, have: int) -> int:
        """The bytes a host with the first `have` layers receives: every entry it is sent,
        the manifest, the end of the archive."""
        entries = sum(self.entries[i].end - self.entries[i].start for i in self.sent(have))
        return entries + len(self.manifest) + len(END_OF_ARCHIVE)

    async def pieces(self, haves: Mapping[str, int]) -> AsyncGenerator[tuple[bytes, tuple[str, ...]], None]:
        """Every host's stream (host → the layers it has), in one pass over the file: chunks
        in order, each with the hosts it goes to. An entry no host needs is never read."""
        everyone = tuple(haves)
        sent = {key: self.sent(have) for key, have in haves.items()}
        with open(self.path, "rb") as file:  # noqa: ASYNC230 (opening is instant; reads go to a thread)
            status = os.fstat(file.fileno())
            if (status.st_size, status.st_mtime_ns) != self.stat:
                raise InvalidInput(f"{self.path}: the image archive changed while fleet was sending it")
            for start, end, keys in self._ranges(sent):
                position = start
                while position < end:
                    chunk = await asyncio.to_thread(os.pread, file.fileno(), min(CHUNK, end - position), position)
                    if not chunk:
                        raise InvalidInput(f"{self.path}: the image archive got shorter while fleet was sending it")
                    position += len(chunk)
                    yield chunk, keys
        yield self.manifest + END_OF_ARCHIVE, everyone

    def _ranges(self, sent: Mapping[str, frozenset[int]]) -> Iterable[tuple[int, int, tuple[str, ...]]]:
        """Byte ranges of the file and their hosts, neighbours with the same hosts joined."""
        current: tuple[int, int, tuple[str, ...]] | None = None
        for index, entry in enumerate(self.entries):
            keys = tuple(key for key, entries in sent.items() if index in entries)
            if not keys:
                continue
            if current is not None and current[1] == entry.start and current[2] == keys:
                current = (current[0], entry.end, keys)
                continue
            if current is not None:
                yield current
            current = (entry.start, entry.end, keys)
        if current is not None:
            yield current


def open_archive(path: Path) -> ImageArchive:
    """Read an image archive's headers and its manifest (see the module's docstring).
    Blocking (a thread's work): the headers are read, the layers' contents skipped."""
    try:
        with open(path, "rb") as file:
            status = os.fstat(file.fileno())
            entries = _scan(file, status.st_size, path)
            return _index(path, file, entries, (status.st_size, status.st_mtime_ns))
    except OSError as exc:
        raise InvalidInput(f"cannot read the image archive {path}: {exc.strerror or exc}") from exc


def _refuse(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"{path} is not an image archive fleet reads: {why}")


def _scan(file: BinaryIO, size: int, path: Path) -> list[Entry]:
    """Every entry's header, one block at a time; contents skipped."""
    entries: list[Entry] = []
    position = 0
    while True:
        start = position
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            block = _read_at(file, position, BLOCK, size, path, "inside a header")
            if block == b"\0" * BLOCK:
                if position != start:
                    raise _refuse(path, "an extended header without its entry")
                return entries
            position += BLOCK
            try:  # checks the checksum and the number fields
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.TarError, ValueError) as exc:
                raise _refuse(path, f"a corrupt tar header at byte {position - BLOCK} ({exc})") from exc
            if not 0 <= info.size <= MAX_SIZE:
                raise _refuse(path, f"a tar header gives the size {info.size}")
            if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if info.size > MAX_HEADER_DATA:
                    raise _refuse(path, f"an extended tar header of {info.size} bytes")
                data = _read_at(file, position, info.size, size, path, "inside an extended header")
                position += info.size + (-info.size % BLOCK)
                if info.type == tarfile.XHDTYPE:
                    pax.update(_pax_records(data, path))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                else:
                    long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            break
        body = info.size
        if "size" in pax:
            body = _pax_size(pax["size"], lambda why: _refuse(path, why))
        raw_name = pax.get("path") or long_name or info.name
        raw_link = pax.get("linkpath") or long_link or info.linkname
        name = _inside(raw_name, path)
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            kind, target = "file", ""
        elif info.type == tarfile.DIRTYPE:
            kind, target, body = "dir", "", 0
        elif info.type == tarfile.SYMTYPE:
            kind, body = "symlink", 0
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), raw_link))
        elif info.type == tarfile.LNKTYPE:
            kind, target, body = "hardlink", _inside(raw_link, path), 0
        else:
            raise _refuse(path, f"{name!r} is of tar type {info.type!r} (no docker save writes one)")
        data_start = position
        position += body + (-body % BLOCK)
        if position > size:
            raise _refuse(path, f"{name!r} claims {body} bytes, past the end of the file")
        entries.append(Entry(name, kind, target, start, data_start, body, position))
        if len(entries) > MAX_ENTRIES:
            raise _refuse(path, f"more than {MAX_ENTRIES} entries")


def _read_at(file: BinaryIO, position: int, count: int, size: int, path: Path, where: str) -> bytes:
    if position + count > size:
        if position == size and where == "inside a header":
            return b"\0" * BLOCK  # ends at an entry's end, without the end-of-archive blocks
        raise _refuse(path, f"it ends early, {where}")
    file.seek(position)
    data = file.read(count)
    if len(data) != count:
        raise _refuse(path, f"it ends early, {where}")
    return data


def _inside(name: str, path: Path) -> str:
    """An entry's name, normalized; refused if it leaves the archive."""
    normal = posixpath.normpath(name) if name else ""
    if (not normal or "\0" in name or normal.startswith("/") or normal == ".."
            or normal.startswith("../")):
        raise _refuse(path, f"an entry named {name[:200]!r}")
    return normal


def _pax_size(value: str, refuse: Callable[[str], InvalidInput]) -> int:
    """A pax header's size record: at most 19 ASCII digits (beyond off_t no file holds)."""
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise refuse(f"a pax header gives the size {value[:40]!r}")
    return int(value)


def _pax_records(data: bytes, path: Path) -> dict[str, str]:
    """`LENGTH KEY=VALUE\n` records (path, linkpath, size kept)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position, position + 9)
        digits = data[position:space] if space > position else b""
        if not digits.isdigit():
            raise _refuse(path, "a pax header record without its length")
        end = position + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != ord("\n"):
            raise _refuse(path, "a pax header record of a wrong length")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise _refuse(path, "a pax header record that is not KEY=VALUE")
        if key in (b"path", b"linkpath", b"size"):
            records[key.decode()] = value.decode("utf-8", "surrogateescape")
        position = end
    return records


def _index(path: Path, file: BinaryIO, entries: list[Entry], stat: tuple[int, int]) -> ImageArchive:
    by_name: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.kind != "dir" and entry.name in by_name:
            raise _refuse(path, f"{entry.name!r} is in it twice")
        by_name[entry.name] = index

    def resolve(name: str, what: str) -> list[int]:
        """The entries from `name` to the file it leads to (links followed)."""
        chain: list[int] = []
        current = _inside(name, path)
        for _ in range(LINK_DEPTH):
            index = by_name.get(current)
            if index is None:
                raise _refuse(path, f"{what} {name[:200]!r} is not in it")
            chain.append(index)
            entry = entries[index]
            if entry.kind == "file":
                return chain
            if entry.kind == "dir":
                raise _refuse(path, f"{what} {name[:200]!r} is a directory")
            current = _inside(entry.target, path)
        raise _refuse(path, f"{what} {name[:200]!r} is a chain of more than {LINK_DEPTH} links")

    def content(index: int, limit: int, what: str) -> bytes:
        entry = entries[index]
        if entry.size > limit:
            raise _refuse(path, f"{what} has {entry.size} bytes (at most {limit} read)")
        file.seek(entry.data)
        return file.read(entry.size)

    manifest_entry: int | None = by_name.get(MANIFEST)
    if manifest_entry is not None:
        chain = resolve(MANIFEST, "the manifest")
        if len(chain) != 1:
            raise _refuse(path, "its manifest.json is a link")
        manifest = _json(content(manifest_entry, MAX_MANIFEST, "manifest.json"), path, "manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            count = len(manifest) if isinstance(manifest, list) else "no"
            raise _refuse(path, f"its manifest.json lists {count} images (fleet pushes one: save it alone)")
        item = manifest[0]
        config_path, layer_paths, tags = item.get("Config"), item.get("Layers"), item.get("RepoTags") or []
    elif "index.json" in by_name:
        config_path, layer_paths, tags = _from_oci(path, lambda name, limit: content(
            resolve(name, "the OCI blob")[-1], limit, name))
        item = {"Config": config_path, "Layers": layer_paths}
    else:
        raise _refuse(path, "it has no manifest.json nor index.json (is it a `docker save` archive?)")

    if not isinstance(config_path, str) or not isinstance(layer_paths, list) or \
            not all(isinstance(p, str) for p in layer_paths) or not isinstance(tags, list):
        raise _refuse(path, "its manifest.json does not name a config and layers")
    config_chain = resolve(config_path, "the config")
    config_bytes = content(config_chain[-1], MAX_CONFIG, "the image config")
    config = _json(config_bytes, path, "the image config")
    diff_ids = config.get("rootfs", {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and DIGEST.match(d) for d in diff_ids):
        raise _refuse(path, "its image config has no rootfs.diff_ids")
    if len(diff_ids) != len(layer_paths):
        raise _refuse(path, f"its manifest lists {len(layer_paths)} layers, its config {len(diff_ids)}")
    # A layer's or the config's chain: the links from the manifest's path to the file (a
    # hard link's target is the file it leads to).
    layer_entries = tuple(tuple(resolve(p, "the layer")) for p in layer_paths)
    image = LocalImage(
        id="sha256:" + hashlib.sha256(config_bytes).hexdigest(), layers=tuple(diff_ids),
        size=sum(entries[chain[-1]].size for chain in layer_entries),
        tags=tuple(t for t in tags if isinstance(t, str) and _TAG.match(t)))
    log.debug("%s: image %s, %d layers, %d entries", path, image.id, len(image.layers), len(entries))
    return ImageArchive(path, image, tuple(entries), layer_entries, frozenset(config_chain),
                        load_manifest(item, image.id, image.tags), stat)


def _json(data: bytes, path: Path, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise _refuse(path, f"{what} is not JSON ({exc})") from exc


def _from_oci(path: Path, read: Any) -> tuple[str, list[str], list[str]]:
    """The config's path, the layers' paths and the tags of the one image of an OCI layout
    (index.json → [image index →] image manifest), for this machine's platform."""
    index = _json(read("index.json", MAX_MANIFEST), path, "index.json")
    tags: list[str] = []
    for _ in range(3):  # index.json → an image index → a manifest, at most
        descriptors = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(descriptors, list):
            raise _refuse(path, "its index.json lists no manifests")
        chosen = [d for d in descriptors if isinstance(d, dict) and _wanted(d)]
        if len(chosen) != 1:
            raise _refuse(path, f"its OCI index lists {len(chosen)} images for this platform (fleet pushes one)")
        descriptor = chosen[0]
        annotations = descriptor.get("annotations") or {}
        name = annotations.get("io.containerd.image.name") if isinstance(annotations, dict) else None
        if isinstance(name, str) and _TAG.match(name) and name not in tags:
            tags.append(name)
        blob = _json(read(_blob(descriptor.get("digest"), path), MAX_MANIFEST), path, "an OCI manifest")
        if descriptor.get("mediaType") in _OCI_INDEX:
            index = blob
            continue
        if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict) or \
                not isinstance(blob.get("layers"), list):
            raise _refuse(path, "its OCI manifest names no config and layers")
        layers = [_blob(layer.get("digest") if isinstance(layer, dict) else None, path) for layer in blob["layers"]]
        return _blob(blob["config"].get("digest"), path), layers, tags
    raise _refuse(path, "its OCI indexes nest too deep")


def _wanted(descriptor: dict) -> bool:
    """An image (index) for this platform; not an attestation."""
    if descriptor.get("mediaType") not in (*_OCI_INDEX, *_OCI_MANIFEST):
        return False
    annotations = descriptor.get("annotations")
    if isinstance(annotations, dict) and "vnd.docker.reference.type" in annotations:
        return False
    wanted = descriptor.get("platform")
    if not isinstance(wanted, dict):
        return True
    machine = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    return wanted.get("os") == "linux" and wanted.get("architecture") == machine


def _blob(digest: Any, path: Path) -> str:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise _refuse(path, f"an OCI descriptor's digest {str(digest)[:100]!r}")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


class LoadStream:
    """`docker save`'s output, as it arrives, made into what a host loads (the module's
    docstring) without holding more than a chunk: `feed` each chunk and send what it
    returns, then send `end()`. Entries pass through as their bytes, but for those a load
    has no use for; manifest.json (at most MAX_MANIFEST bytes) is kept back and sent last as
    load_manifest makes it. The stream is the controller's own docker's, yet parsed with the
    same bounds as a user's file: InvalidInput for anything else."""

    _DROPPED = frozenset({"repositories", "index.json", "oci-layout"})

    def __init__(self, image_id: str, what: str) -> None:
        self.image_id = image_id
        self.what = what  # names the stream in errors: "docker save REF"
        self._buffer = bytearray()
        self._head = bytearray()  # the current entry's headers (extended ones first)
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._left = 0  # the current entry's content and padding not yet seen
        self._keep = False
        self._manifest: bytearray | None = None  # manifest.json's content, while it arrives
        self._manifest_bytes = b""
        self._manifest_size = 0
        self._extended: tuple[bytes, int] | None = None  # an extended header's type and size, while it arrives
        self._entries = 0
        self._ended = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The bytes to send for `chunk` (none, some of it, or headers held back before)."""
        out: list[bytes] = []
        data = memoryview(chunk)
        while data and not self._ended:
            if self._left:
                take = data[:self._left]
                data = data[len(take):]
                self._left -= len(take)
                if self._extended is not None:
                    self._head += take
                    if not self._left:
                        self._read_extended()
                elif self._manifest is not None:
                    self._manifest += take
                    if not self._left:  # its padding dropped
                        self._manifest_bytes = bytes(self._manifest[:self._manifest_size])
                        self._manifest = None
                elif self._keep:
                    out.append(bytes(take))
                continue
            need = BLOCK - len(self._buffer)
            self._buffer += data[:need]
            data = data[need:]
            if len(self._buffer) == BLOCK:
                out += self._header(bytes(self._buffer))
                self._buffer.clear()
        return out

    def _header(self, block: bytes) -> list[bytes]:
        """One 512-byte block at an entry's start."""
        if block == b"\0" * BLOCK:
            if self._head:
                raise self._refuse("an extended header without its entry")
            self._ended = True  # what follows the end of the archive is padding
            return []
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except (tarfile.TarError, ValueError) as exc:
            raise self._refuse(f"a corrupt tar header ({exc})") from exc
        if not 0 <= info.size <= MAX_SIZE:
            raise self._refuse(f"a tar header gives the size {info.size}")
        self._head += block
        if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.size > MAX_HEADER_DATA:
                raise self._refuse(f"an extended tar header of {info.size} bytes")
            # Its records arrive as content: held with the header, read when complete.
            self._left = info.size + (-info.size % BLOCK)
            self._extended = (info.type, info.size)
            if not self._left:
                self._read_extended()
            return []
        size = info.size
        if "size" in self._pax:
            size = _pax_size(self._pax["size"], self._refuse)
        name = posixpath.normpath(self._pax.get("path") or self._long_name or info.name)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            size = 0
        head, self._head, self._pax, self._long_name = bytes(self._head), bytearray(), {}, None
        self._entries += 1
        if self._entries > MAX_ENTRIES:
            raise self._refuse(f"more than {MAX_ENTRIES} entries")
        self._left = size + (-size % BLOCK)
        parts = name.split("/")
        if name == MANIFEST:
            if size > MAX_MANIFEST:
                raise self._refuse(f"manifest.json has {size} bytes (at most {MAX_MANIFEST} read)")
            self._manifest, self._manifest_size, self._keep = bytearray(), size, False
            if not self._left:
                self._manifest_bytes, self._manifest = b"", None
            return []
        self._keep = not (info.type == tarfile.DIRTYPE or name in self._DROPPED
                          or (len(parts) == 2 and parts[1] in ("json", "VERSION")))
        return [head] if self._keep else []

    def _read_extended(self) -> None:
        """The extended header just held whole at the end of `_head`: its path and size."""
        assert self._extended is not None
        kind, size = self._extended
        self._extended = None
        start = len(self._head) - (size + (-size % BLOCK))
        data = bytes(self._head[start:start + size])
        if kind == tarfile.XHDTYPE:
            self._pax.update(_pax_records(data, Path(self.what)))
        elif kind == tarfile.GNUTYPE_LONGNAME:
            self._long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")

    def _refuse(self, why: str) -> InvalidInput:
        return InvalidInput(f"{self.what} wrote no image archive fleet reads: {why}")

    def end(self) -> bytes:
        """The manifest entry and the end of the archive; InvalidInput if the stream ended
        inside an entry, had no manifest.json, or holds another image than `image_id`."""
        if self._left or self._buffer or self._head or self._manifest is not None or not self._ended:
            raise self._refuse("it ends early, inside an entry")
        manifest = _json(self._manifest_bytes, Path(self.what), "its manifest.json") if self._manifest_bytes else None
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            raise self._refuse("its manifest.json does not list one image")
        item = manifest[0]
        config = item.get("Config")
        digest = posixpath.basename(config).removesuffix(".json") if isinstance(config, str) else ""
        if "sha256:" + digest != self.image_id:
            raise self._refuse(f"its config is {str(config)[:200]!r}, not the image {self.image_id}")
        tags = item.get("RepoTags") or []
        return load_manifest(item, self.image_id, tags if isinstance(tags, list) else []) + END_OF_ARCHIVE
