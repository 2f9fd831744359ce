"""One image identity on every engine (fleet/host/images.sh, fleet.image.archive): Docker's
classic stores and Podman name an image by its config's digest, the containerd store by a
manifest's; what a host loads is the same stream on all of them, and `docker save`'s own
output is made into it as it arrives."""

from __future__ import annotations

import json
import random
import tarfile

import pytest
from test_image_archive import LAYERS, config_of, digest, legacy_archive, members, oci_archive, stream_for

from fleet.errors import InvalidInput
from fleet.host import image_have
from fleet.image.archive import MANIFEST, LoadStream, fleet_tag, open_archive
from fleet.image.local import LocalImage, parse_inspect
from fleet.image.push import host_has
from fleet.inventory import LocalHost
from fleet.transport.local import LocalTransport

IMAGE_ID = digest(config_of(LAYERS))
IMAGE = LocalImage(IMAGE_ID, tuple(digest(layer) for layer in LAYERS), 1, ())


def through(stream: LoadStream, data: bytes, seed: int = 0) -> bytes:
    """`data` fed in chunks of random sizes (1 byte to 3 blocks), as a pipe delivers it."""
    rng = random.Random(seed)
    out = bytearray()
    position = 0
    while position < len(data):
        step = rng.randint(1, 1600)
        for piece in stream.feed(data[position:position + step]):
            out += piece
        position += step
    return bytes(out + stream.end())


@pytest.mark.parametrize("seed", range(5))
async def test_a_legacy_save_is_sent_as_the_indexed_archive_would_be(tmp_path, seed):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    live = through(LoadStream(IMAGE_ID, "docker save fleet-unit:top"), path.read_bytes(), seed)
    assert live == await stream_for(open_archive(path), 0)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_keep_their_extended_headers(tmp_path, fmt):
    path = legacy_archive(tmp_path / "a.tar", LAYERS, long_names=True, fmt=fmt)
    got = members(through(LoadStream(IMAGE_ID, "docker save x"), path.read_bytes(), 3))
    layers = json.loads(got[MANIFEST])[0]["Layers"]
    assert len(layers[0]) > 100 and [got[name] for name in layers] == LAYERS


def test_an_oci_save_loses_its_index_and_gets_fleets_manifest_last(tmp_path):
    path = oci_archive(tmp_path / "o.tar", LAYERS)
    live = through(LoadStream(IMAGE_ID, "docker save x"), path.read_bytes(), 1)
    got = members(live)
    assert "index.json" not in got and "oci-layout" not in got  # the containerd store would load index.json's
    assert list(got)[-1] == MANIFEST
    manifest = json.loads(got[MANIFEST])
    assert manifest[0]["RepoTags"] == ["fleet-unit:top", fleet_tag(IMAGE_ID)]
    assert [got[name] for name in manifest[0]["Layers"]] == LAYERS and digest(got[manifest[0]["Config"]]) == IMAGE_ID


def test_a_save_of_another_image_than_inspected_is_refused(tmp_path):
    path = legacy_archive(tmp_path / "a.tar", LAYERS)
    stream = LoadStream(digest(b"another config"), "docker save x")
    with pytest.raises(InvalidInput, match="not the image"):
        through(stream, path.read_bytes())


def test_a_save_cut_short_is_refused_and_what_was_sent_has_no_manifest(tmp_path):
    data = legacy_archive(tmp_path / "a.tar", LAYERS).read_bytes()
    stream = LoadStream(IMAGE_ID, "docker save x")
    sent = b"".join(stream.feed(data[:len(data) // 2]))
    assert b"manifest.json" not in sent
    with pytest.raises(InvalidInput, match="ends early"):
        stream.end()


def test_a_hostile_extended_header_is_refused_before_it_is_held(tmp_path):
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 2 * 1024 * 1024
    stream = LoadStream(IMAGE_ID, "docker save x")
    with pytest.raises(InvalidInput, match="extended tar header of"):
        stream.feed(info.tobuf(format=tarfile.USTAR_FORMAT))


def test_a_huge_manifest_is_refused(tmp_path):
    info = tarfile.TarInfo(MANIFEST)
    info.size = 2 * 1024 * 1024
    with pytest.raises(InvalidInput, match="manifest.json has"):
        LoadStream(IMAGE_ID, "docker save x").feed(info.tobuf(format=tarfile.USTAR_FORMAT))


def test_the_containerd_stores_inspect_is_known_by_its_descriptor():
    item = {"Id": "sha256:" + "a" * 64, "RootFS": {"Layers": ["sha256:" + "1" * 64]}, "Size": 1, "RepoTags": []}
    assert parse_inspect(json.dumps([item]).encode()).config_known  # type: ignore[union-attr]
    containerd = {**item, "Descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                         "digest": item["Id"], "size": 400}}
    assert not parse_inspect(json.dumps([containerd]).encode()).config_known  # type: ignore[union-attr]


# -- images.sh, run for real against a fake docker of each kind --------------------------------------

MANIFEST_ID = "sha256:" + "d" * 64  # what the containerd store calls the image
OTHER_LAYER = "sha256:" + "9" * 64


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """A fake docker for the host scripts: $FAKE_ENGINE is classic, containerd or podman;
    it holds the image of IMAGE_ID, by that ID (classic, podman) or as fleet's tag
    (containerd) with $FAKE_TAG_LAYERS, when $FAKE_HOLDS is 1."""
    layers = " ".join(digest(layer) for layer in LAYERS)
    script = tmp_path / "docker"
    script.write_text(f"""#!/bin/sh
case "$1" in
  version) if [ "$FAKE_ENGINE" = podman ]; then echo 'Podman Engine;Conmon;';
           else echo 'Engine;containerd;'; fi; exit 0 ;;
  info) if [ "$FAKE_ENGINE" = containerd ]; then echo '[["driver-type","io.containerd.snapshotter.v1"]]';
        else echo '[["Backing Filesystem","extfs"]]'; fi; exit 0 ;;
  images) echo sha256:{'b' * 64}; exit 0 ;;
esac
ref=$(eval echo "\\${{$#}}")
if [ "$FAKE_HOLDS" = 1 ]; then
  case "$FAKE_ENGINE:$ref" in
    classic:{IMAGE_ID} | podman:{IMAGE_ID}) echo "{IMAGE_ID}"; exit 0 ;;
    containerd:{fleet_tag(IMAGE_ID)}) echo "{MANIFEST_ID} $FAKE_TAG_LAYERS "; exit 0 ;;
  esac
fi
case "$ref" in sha256:{'b' * 64}) echo "{digest(LAYERS[0])} "; exit 0 ;; esac
echo "Error response from daemon: No such image: $ref" >&2; exit 1
""")
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_TAG_LAYERS", layers)
    return monkeypatch, str(script)


@pytest.mark.parametrize(("kind", "expected"), [("classic", 1), ("containerd", 0), ("podman", 0)])
async def test_a_host_is_sent_the_layers_it_has_only_where_its_engine_skips_them(engine, kind, expected):
    monkeypatch, docker = engine
    monkeypatch.setenv("FAKE_ENGINE", kind)
    transport = LocalTransport(LocalHost(address="localhost"), "algo-1")
    assert await host_has(transport, [docker], IMAGE, 20) == expected


@pytest.mark.parametrize("kind", ["classic", "containerd", "podman"])
async def test_an_image_held_is_present_on_every_engine(engine, kind):
    monkeypatch, docker = engine
    monkeypatch.setenv("FAKE_ENGINE", kind)
    monkeypatch.setenv("FAKE_HOLDS", "1")
    transport = LocalTransport(LocalHost(address="localhost"), "algo-1")
    result = await transport.run(image_have([docker], IMAGE_ID, IMAGE.layers, 20))
    assert result.stdout.decode() == f"present {MANIFEST_ID if kind == 'containerd' else IMAGE_ID}\n"


async def test_fleets_tag_moved_to_an_image_of_other_layers_is_not_the_image(engine):
    monkeypatch, docker = engine
    monkeypatch.setenv("FAKE_ENGINE", "containerd")
    monkeypatch.setenv("FAKE_HOLDS", "1")
    monkeypatch.setenv("FAKE_TAG_LAYERS", f"{digest(LAYERS[0])} {OTHER_LAYER}")
    transport = LocalTransport(LocalHost(address="localhost"), "algo-1")
    result = await transport.run(image_have([docker], IMAGE_ID, IMAGE.layers, 20))
    assert result.stdout.decode() == "layers 0\n"
