"""Image archives (fleet.image.archive): both `docker save` layouts indexed, each host sent the
archive without the layer files it has, hostile archives refused; and, when a real dockerd
answers, a filtered archive loaded into it."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.errors import InvalidInput
from fleet.image.archive import MANIFEST, ImageArchive, fleet_tag, open_archive

# -- archives built here, as docker writes them ---------------------------------------------------


def layer_tar(name: str, content: bytes) -> bytes:
    """A layer: a tar of one file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_of(layers: list[bytes]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                       "rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]},
                       "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}).encode()


def add(tar: tarfile.TarFile, name: str, content: bytes | None = None, *, link: str | None = None,
        kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = kind if kind != tarfile.REGTYPE else tarfile.SYMTYPE, link
        tar.addfile(info)
    elif content is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))


def legacy_archive(path: Path, layers: list[bytes], tag: str = "fleet-unit:top", *,
                   duplicate: dict[int, int] | None = None, long_names: bool = False,
                   fmt: int = tarfile.GNU_FORMAT) -> Path:
    """As `docker save` of docker < 25: `<v1id>/layer.tar` per layer (layer i a symlink to
    layer j's file for duplicate {i: j}), the config, manifest.json, repositories.
    `long_names`: v1 folders of 120 characters (GNU long names or pax headers, per `fmt`)."""
    duplicate = duplicate or {}
    config = config_of(layers)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    v1 = [hashlib.sha256(f"v1 {i} {digest(layer)}".encode()).hexdigest() + ("x" * 56 if long_names else "")
          for i, layer in enumerate(layers)]
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, layer in enumerate(layers):
            add(tar, f"{v1[i]}/")
            add(tar, f"{v1[i]}/VERSION", b"1.0")
            add(tar, f"{v1[i]}/json", json.dumps({"id": v1[i]}).encode())
            if i in duplicate:
                add(tar, f"{v1[i]}/layer.tar", link=f"../{v1[duplicate[i]]}/layer.tar")
            else:
                add(tar, f"{v1[i]}/layer.tar", layer)
        add(tar, config_name, config)
        add(tar, MANIFEST, json.dumps([{"Config": config_name, "RepoTags": [tag],
                                        "Layers": [f"{v}/layer.tar" for v in v1]}]).encode())
        add(tar, "repositories", json.dumps({tag.split(":")[0]: {tag.split(":")[1]: v1[-1]}}).encode())
    return path


def oci_archive(path: Path, layers: list[bytes], tag: str = "docker.io/library/fleet-unit:top", *,
                with_manifest: bool = True, platforms: int = 1) -> Path:
    """As `docker save` of docker >= 25 (`with_manifest`), or an OCI layout without
    manifest.json (buildx, skopeo); `platforms` > 1: an image index of several."""
    config = config_of(layers)
    blobs: dict[str, bytes] = {digest(layer): layer for layer in layers}
    blobs[digest(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": digest(layer), "size": len(layer)} for layer in layers]}).encode()
    blobs[digest(manifest)] = manifest
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                  "size": len(manifest), "annotations": {"io.containerd.image.name": tag}}
    if platforms > 1:
        descriptors = []
        for arch in ["amd64", "arm64", "s390x"][:platforms]:
            descriptors.append({**descriptor, "platform": {"os": "linux", "architecture": arch}})
        descriptors[1] = {**descriptors[0], "platform": {"os": "linux", "architecture": "amd64"}} if platforms > 2 \
            else descriptors[1]
        index_blob = json.dumps({"schemaVersion": 2, "manifests": descriptors}).encode()
        blobs[digest(index_blob)] = index_blob
        descriptor = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(index_blob),
                      "size": len(index_blob), "annotations": {"io.containerd.image.name": tag}}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "blobs/")
        add(tar, "blobs/sha256/")
        for name, blob in sorted(blobs.items()):
            add(tar, "blobs/sha256/" + name.removeprefix("sha256:"), blob)
        add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode())
        if with_manifest:
            add(tar, MANIFEST, json.dumps([{
                "Config": "blobs/sha256/" + digest(config).removeprefix("sha256:"), "RepoTags": [tag.split("/")[-1]],
                "Layers": ["blobs/sha256/" + digest(layer).removeprefix("sha256:") for layer in layers]}]).encode())
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return path


LAYERS = [layer_tar("base", b"b" * 5000), layer_tar("middle", b"m" * 3000), layer_tar("top", b"t" * 700)]


async def stream_for(archive: ImageArchive, have: int) -> bytes:
    return b"".join([chunk async for chunk, _ in archive.pieces({"h": have})])


def members(stream: bytes) -> dict[str, bytes]:
    """Name → content (links: b"->TARGET") of a tar stream, the last of a name winning, as
    extraction does; checks the stream is a whole tar archive."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        for member in tar:
            file = tar.extractfile(member) if member.isfile() else None
            found[member.name.rstrip("/")] = file.read() if file else b"->" + member.linkname.encode()
    assert stream.endswith(b"\0" * 1024)
    return found


def layer_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return json.load(tar.extractfile(MANIFEST))[0]["Layers"]  # type: ignore[arg-type]


# -- what is read ----------------------------------------------------------------------------------

def test_a_legacy_archive_gives_the_image_id_its_layers_and_tags(tmp_path):
    archive = open_archive(legacy_archive(tmp_path / "a.tar", LAYERS))
    assert archive.image.id == digest(config_of(LAYERS))
    assert archive.image.layers == tuple(digest(layer) for layer in LAYERS)
    assert archive.image.tags == ("fleet-unit:top",)
    assert archive.image.size == sum(len(layer) for layer in LAYERS)


@pytest.mark.parametrize("with_manifest", [True, False])
def test_an_oci_archive_gives_the_same_image(tmp_path, with_manifest):
    archive = open_archive(oci_archive(tmp_path / "o.tar", LAYERS, with_manifest=with_manifest))
    assert archive.image.id == digest(config_of(LAYERS))
    assert archive.image.layers == tuple(digest(layer) for layer in LAYERS)


async def test_an_oci_layout_without_manifest_json_is_sent_one_that_docker_load_follows(tmp_path):
    archive = open_archive(oci_archive(tmp_path / "o.tar", LAYERS, with_manifest=False))
    got = members(await stream_for(archive, 0))
    manifest = json.loads(got[MANIFEST])
    assert manifest[0]["RepoTags"] == ["docker.io/library/fleet-unit:top", fleet_tag(archive.image.id)]
    assert [got[name] for name in manifest[0]["Layers"]] == LAYERS
    assert digest(got[manifest[0]["Config"]]) == archive.image.id


def test_an_image_index_resolves_to_this_platforms_image(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    archive = open_archive(oci_archive(tmp_path / "o.tar", LAYERS, with_manifest=False, platforms=2))
    assert archive.image.id == digest(config_of(LAYERS))
    with pytest.raises(InvalidInput, match="lists 2 images for this platform"):
        open_archive(oci_archive(tmp_path / "o3.tar", LAYERS, with_manifest=False, platforms=3))


# -- what each host is sent ------------------------------------------------------------------------

@pytest.mark.parametrize("have", [0, 1, 2, 3])
async def test_a_host_with_the_first_layers_is_sent_all_but_their_files(tmp_path, have):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    archive = open_archive(path)
    stream = await stream_for(archive, have)
    assert len(stream) == archive.bytes_for(have)
    got = members(stream)
    names = layer_names(path)
    config = archive.image.id.removeprefix("sha256:") + ".json"
    # The config and the layers it lacks, then the manifest, last: no v1 json, VERSION,
    # repositories (a stream cut before the manifest has nothing any engine loads).
    assert list(got) == [*names[have:], config, MANIFEST]
    assert [got[name] for name in names[have:]] == LAYERS[have:]
    assert got[config] == config_of(LAYERS)
    manifest = json.loads(got[MANIFEST])
    assert manifest == [{"Config": config, "RepoTags": ["fleet-unit:top", fleet_tag(archive.image.id)],
                         "Layers": names}]
    assert stream.endswith(archive.manifest + b"\0" * 1024)  # manifest.json, the last entry


def test_bytes_for_shrinks_by_the_layers_a_host_has(tmp_path):
    archive = open_archive(legacy_archive(tmp_path / "a.tar", LAYERS))
    full = archive.bytes_for(0)
    # each layer's file and the config (header and content, padded), the manifest, the end
    assert full == sum(512 + len(layer) + -len(layer) % 512 for layer in LAYERS) + 512 + 512 * (
        -(-len(config_of(LAYERS)) // 512)) + len(archive.manifest) + 1024
    for have in range(1, 4):
        dropped = sum(len(layer) + 512 for layer in LAYERS[:have])  # content and header
        assert archive.bytes_for(have) == full - dropped


async def test_a_duplicate_layer_symlinked_keeps_its_target_while_a_later_layer_needs_it(tmp_path):
    layers = [LAYERS[0], LAYERS[1], LAYERS[0]]  # the same diff ID twice: docker save links the second
    path = legacy_archive(tmp_path / "a.tar", layers, duplicate={2: 0})
    archive = open_archive(path)
    names = layer_names(path)
    for have in (1, 2):  # layer 3 (a link to layer 1's file) is still to load
        got = members(await stream_for(archive, have))
        assert got[names[0]] == LAYERS[0] and got[names[2]] == b"->../" + names[0].encode()
    got = members(await stream_for(archive, 3))
    assert names[0] not in got and names[2] not in got


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_long_names_extended_headers_go_or_stay_with_their_entry(tmp_path, fmt):
    path = legacy_archive(tmp_path / "a.tar", LAYERS, long_names=True, fmt=fmt)
    archive = open_archive(path)
    names = layer_names(path)
    assert len(names[0]) > 100
    stream = await stream_for(archive, 2)
    got = members(stream)
    assert names[0] not in got and names[1] not in got and got[names[2]] == LAYERS[2]
    assert len(stream) == archive.bytes_for(2)


async def test_one_pass_feeds_every_host_its_own_stream_reading_each_entry_once(tmp_path):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    archive = open_archive(path)
    haves = {"h0": 0, "h1": 1, "h3": 3}
    streams = {key: bytearray() for key in haves}
    read = 0
    async for chunk, keys in archive.pieces(haves):
        read += len(chunk)
        for key in keys:
            streams[key] += chunk
    for key, have in haves.items():
        assert bytes(streams[key]) == await stream_for(archive, have)
    assert read == archive.bytes_for(0)  # what the hungriest host gets: each byte read once


async def test_an_archive_changed_since_it_was_indexed_is_not_sent(tmp_path):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    archive = open_archive(path)
    path.write_bytes(path.read_bytes() + b"\0" * 512)
    with pytest.raises(InvalidInput, match="changed"):
        await stream_for(archive, 0)


# -- hostile archives ------------------------------------------------------------------------------

def raw_tar(path: Path, *entries: tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            add(tar, name, content)
    return path


def manifest_of(config: str, layers: list[str]) -> bytes:
    return json.dumps([{"Config": config, "RepoTags": None, "Layers": layers}]).encode()


def test_an_archive_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no manifest.json nor index.json"):
        open_archive(raw_tar(tmp_path / "x.tar", ("a", b"x")))


def test_a_file_that_is_no_tar_is_refused(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"hello" * 300)
    with pytest.raises(InvalidInput, match="corrupt tar header"):
        open_archive(tmp_path / "x.tar")


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b"])
def test_entries_named_outside_the_archive_are_refused(tmp_path, name):
    with pytest.raises(InvalidInput, match="an entry named"):
        open_archive(raw_tar(tmp_path / "x.tar", (name, b"x"), (MANIFEST, manifest_of("c", []))))


def test_a_manifest_naming_a_path_outside_the_archive_is_refused(tmp_path):
    config = config_of([LAYERS[0]])
    path = raw_tar(tmp_path / "x.tar", ("c.json", config), ("l/layer.tar", LAYERS[0]),
                   (MANIFEST, manifest_of("c.json", ["../../etc/passwd"])))
    with pytest.raises(InvalidInput, match="an entry named"):
        open_archive(path)


def test_a_symlink_out_of_the_archive_is_refused_when_a_layer_goes_through_it(tmp_path):
    config = config_of([LAYERS[0]])
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add(tar, "c.json", config)
        add(tar, "l/layer.tar", link="../../../etc/passwd")
        add(tar, MANIFEST, manifest_of("c.json", ["l/layer.tar"]))
    with pytest.raises(InvalidInput, match="an entry named"):
        open_archive(tmp_path / "x.tar")


def test_a_symlink_loop_is_refused(tmp_path):
    config = config_of([LAYERS[0]])
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add(tar, "c.json", config)
        add(tar, "a", link="b")
        add(tar, "b", link="a")
        add(tar, MANIFEST, manifest_of("c.json", ["a"]))
    with pytest.raises(InvalidInput, match="chain of more than"):
        open_archive(tmp_path / "x.tar")


def test_an_entry_claiming_more_bytes_than_the_file_holds_is_refused(tmp_path):
    path = raw_tar(tmp_path / "x.tar", ("big", b"x" * 600))
    data = bytearray(path.read_bytes())
    header = tarfile.TarInfo("big")
    header.size = 2 ** 40  # 1 TiB, in a file of a few KiB
    data[:512] = header.tobuf(format=tarfile.GNU_FORMAT)
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="past the end of the file"):
        open_archive(path)


def test_an_absurd_pax_size_is_refused(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"size": "-5"}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidInput, match="size"):
        open_archive(tmp_path / "x.tar")


def test_an_extended_header_beyond_a_mib_is_refused(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "n" * (2 * 1024 * 1024), b"x")
    with pytest.raises(InvalidInput, match="extended tar header of"):
        open_archive(tmp_path / "x.tar")


def test_a_manifest_of_two_images_is_refused(tmp_path):
    path = raw_tar(tmp_path / "x.tar", (MANIFEST, json.dumps([{"Config": "a", "Layers": []}] * 2).encode()))
    with pytest.raises(InvalidInput, match="lists 2 images"):
        open_archive(path)


def test_a_config_of_other_layers_than_the_manifest_is_refused(tmp_path):
    config = config_of(LAYERS[:2])
    path = raw_tar(tmp_path / "x.tar", ("c.json", config), ("l/layer.tar", LAYERS[0]),
                   (MANIFEST, manifest_of("c.json", ["l/layer.tar"])))
    with pytest.raises(InvalidInput, match="lists 1 layers, its config 2"):
        open_archive(path)


def test_a_huge_config_is_not_read(tmp_path):
    path = raw_tar(tmp_path / "x.tar", ("c.json", b" " * (17 * 1024 * 1024)),
                   (MANIFEST, manifest_of("c.json", [])))
    with pytest.raises(InvalidInput, match="at most"):
        open_archive(path)


def test_a_file_cut_inside_an_entry_is_refused(tmp_path):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InvalidInput):
        open_archive(path)


# -- a real dockerd ------------------------------------------------------------------------------

def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _docker(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=120)


@pytest.mark.skipif(not _docker_answers(), reason="no dockerd answers (DOCKER_HOST, the docker context)")
async def test_a_real_dockerd_that_has_the_base_loads_the_archive_without_its_file(tmp_path):
    """`docker save` of a 2-layer image; the host has the base; the archive without the
    base's file loads, same ID. A stream cut before its end leaves no image."""
    name = f"fleet-unit-{secrets.token_hex(4)}"
    layers = [layer_tar("base", secrets.token_bytes(20000)), layer_tar("top", secrets.token_bytes(3000))]
    try:
        made = legacy_archive(tmp_path / "made.tar", layers, tag=f"{name}:top")
        assert _docker("load", "-i", str(made)).returncode == 0
        saved = tmp_path / "saved.tar"
        assert _docker("save", "-o", str(saved), f"{name}:top").returncode == 0
        archive = open_archive(saved)
        assert archive.image.id == digest(config_of(layers))
        assert _docker("load", "-i", str(legacy_archive(tmp_path / "base.tar", layers[:1], tag=f"{name}:base"))
                       ).returncode == 0
        assert _docker("rmi", f"{name}:top").returncode == 0
        before = set(_docker("images", "-aq", "--no-trunc").stdout.split())

        cut = (await stream_for(archive, 1))[:-1024 - len(archive.manifest)]  # all but the manifest
        assert _docker("load", stdin=cut).returncode != 0
        assert set(_docker("images", "-aq", "--no-trunc").stdout.split()) == before  # nothing left

        stream = await stream_for(archive, 1)
        assert len(stream) < len(layers[0])  # the base's file is not in it
        loaded = _docker("load", stdin=stream)
        assert loaded.returncode == 0, loaded.stderr
        assert _docker("image", "inspect", "--format", "{{.Id}}", f"{name}:top").stdout.decode().strip() == \
            archive.image.id
    finally:
        _docker("rmi", "-f", f"{name}:top", f"{name}:base")
