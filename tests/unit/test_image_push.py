"""Pushing an image to hosts (fleet.image.push): read once, each host sent what it lacks,
every load checked; a host that fails fails alone; a source that fails cuts every load."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import pytest
from test_image_archive import LAYERS, legacy_archive

from fleet.errors import ClientError, HostError
from fleet.host import Status
from fleet.image import push
from fleet.image.archive import MANIFEST, fleet_tag, open_archive
from fleet.image.local import LocalImage, parse_inspect
from fleet.image.push import DockerSource, PushCount, PushTarget, host_has, push_image, source_for
from fleet.inventory import LocalHost
from fleet.transport.scripted import ScriptedCommand, ScriptedTransport

DOCKER = ["docker"]


class Docker:
    """A host's docker as the load script uses it: what it was sent, what it answers."""

    def __init__(self, status: int = 0, words: bytes = b"Loaded image: fleet-unit:top\n", *,
                 lose_after: int | None = None) -> None:
        self.status = status
        self.words = words
        self.lose_after = lose_after  # bytes of stdin, then the connection is lost
        self.received = b""
        self.argv: list[str] = []

    async def __call__(self, command: ScriptedCommand) -> int:
        self.argv = command.argv
        assert command.script == "fleet-load"
        if self.lose_after is not None:
            self.received = await command.read_stdin_bytes(self.lose_after)
            command.lose("connection reset")
            return -1
        self.received = await command.read_stdin()
        command.write_stderr(self.words)
        if self.status == 0:
            command.write_stderr(b"fleet:loaded sha256:" + b"e" * 64 + b"\n")
        return self.status


async def target(label: str, handler, have: int = 0) -> PushTarget:
    transport = ScriptedTransport(LocalHost(address="localhost", name=label), label, handler)
    await transport.connect()
    return PushTarget(label, transport, DOCKER, have)


def loaded_members(stream: bytes) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        for member in tar:
            file = tar.extractfile(member) if member.isfile() else None
            found[member.name] = file.read() if file else b""
    return found


@pytest.fixture
def archive(tmp_path):
    return open_archive(legacy_archive(tmp_path / "a.tar", LAYERS))


# -- from an archive -------------------------------------------------------------------------------

async def test_each_host_is_sent_its_part_of_the_archive_read_once(archive, tmp_path):
    dockers = {label: Docker() for label in ("algo-1", "algo-2", "algo-3")}
    targets = [await target(label, docker, have) for (label, docker), have in zip(dockers.items(), (0, 1, 3))]
    count = PushCount()
    failed = await push_image(archive, targets, count, docker_timeout=20, spool_dir=tmp_path / "spool")
    assert failed == {}
    for t in targets:
        received = dockers[t.label].received
        assert received == b"".join([c async for c, _ in archive.pieces({"x": t.have})])
        assert count.sent[t.label] == len(received) == archive.bytes_for(t.have)
        assert dockers[t.label].argv[4:] == ["20", "1", "docker", archive.image.id, *archive.image.layers]
    assert count.total == sum(archive.bytes_for(t.have) for t in targets)
    assert count.read == archive.bytes_for(0)  # each byte once, whatever the hosts


async def test_a_failed_load_fails_its_host_alone_with_dockers_words(archive, tmp_path):
    bad = Docker(Status.LOAD_FAILED, b"Error processing tar file(exit status 1): no space left on device\n")
    targets = [await target("algo-1", Docker()), await target("algo-2", bad)]
    failed = await push_image(archive, targets, PushCount(), docker_timeout=20, spool_dir=tmp_path)
    assert list(failed) == ["algo-2"]
    error = failed["algo-2"]
    assert isinstance(error, HostError)  # the machinery's: exit 75
    assert "algo-2" in error.message and archive.image.id in error.message and "no space left" in error.message


async def test_a_host_lost_mid_push_fails_alone(archive, tmp_path):
    good = Docker()
    targets = [await target("algo-1", good), await target("algo-2", Docker(lose_after=3000))]
    failed = await push_image(archive, targets, PushCount(), docker_timeout=20, spool_dir=tmp_path)
    assert list(failed) == ["algo-2"]
    assert isinstance(failed["algo-2"], HostError) and "algo-2" in failed["algo-2"].message
    assert len(good.received) == archive.bytes_for(0)


async def test_a_host_refusing_the_channel_fails_alone(archive, tmp_path):
    async def refuse(command: ScriptedCommand) -> int:
        raise HostError(command.label, "channel open failed")
    targets = [await target("algo-1", Docker()), await target("algo-2", refuse)]
    failed = await push_image(archive, targets, PushCount(), docker_timeout=20, spool_dir=tmp_path)
    assert list(failed) == ["algo-2"] and isinstance(failed["algo-2"], HostError)


async def test_a_load_that_ends_well_without_the_image_is_a_failure(archive, tmp_path):
    async def silent(command: ScriptedCommand) -> int:
        await command.read_stdin()
        return 0  # no fleet:loaded
    failed = await push_image(archive, [await target("algo-1", silent)], PushCount(), docker_timeout=20,
                              spool_dir=tmp_path)
    assert list(failed) == ["algo-1"]


async def test_a_host_that_stops_reading_fails_after_the_stall_bound(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(push, "WRITE_STALL", 0.2)
    stuck = await target("algo-1", Docker())
    good = Docker()

    async def never(data: bytes) -> None:
        import asyncio
        await asyncio.Event().wait()

    original_start = stuck.transport.start

    async def start(argv):
        process = await original_start(argv)
        process.write = never  # type: ignore[method-assign]
        return process
    stuck.transport.start = start  # type: ignore[method-assign]
    failed = await push_image(archive, [stuck, await target("algo-2", good)], PushCount(), docker_timeout=20,
                              spool_dir=tmp_path)
    assert list(failed) == ["algo-1"] and "stopped reading" in failed["algo-1"].message
    assert len(good.received) == archive.bytes_for(0)


# -- from the controller's docker (a fake `docker save`) ----------------------------------------------

@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` on PATH whose `save` writes $FAKE_SAVE to stdout, or to FILE with `-o FILE`
    (first failing after $FAKE_FAIL bytes when that is set)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text('#!/bin/sh\n[ "$1" = save ] || exit 2\n'
                      'if [ "$2" = -o ]; then exec > "$3"; fi\n'
                      'if [ -n "$FAKE_FAIL" ]; then head -c "$FAKE_FAIL" "$FAKE_SAVE"; '
                      'echo "Error response from daemon: disk full" >&2; exit 1; fi\n'
                      'cat "$FAKE_SAVE"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return monkeypatch


async def test_hosts_lacking_the_whole_image_get_docker_save_live(archive, tmp_path, fake_docker):
    fake_docker.setenv("FAKE_SAVE", str(archive.path))
    dockers = [Docker(), Docker()]
    targets = [await target(f"algo-{i}", d) for i, d in enumerate(dockers, 1)]
    count = PushCount()
    spool = tmp_path / "spool"
    failed = await push_image(DockerSource("fleet-unit:top", archive.image), targets, count,
                              docker_timeout=20, spool_dir=spool)
    assert failed == {}
    saved = archive.path.read_bytes()
    for docker in dockers:  # what the spooled archive would send: docker's entries a load reads
        assert docker.received == b"".join([chunk async for chunk, _ in archive.pieces({"h": 0})])
        assert dockers[0].argv[-4:] == [archive.image.id, *archive.image.layers]  # what load.sh checks
    assert count.read == len(saved) and not spool.exists()  # nothing spooled


async def test_a_host_with_some_layers_gets_the_spooled_archive_without_them(archive, tmp_path, fake_docker):
    fake_docker.setenv("FAKE_SAVE", str(archive.path))
    full, part = Docker(), Docker()
    spool = tmp_path / "spool"
    failed = await push_image(DockerSource("fleet-unit:top", archive.image),
                              [await target("algo-1", full), await target("algo-2", part, have=2)], PushCount(),
                              docker_timeout=20, spool_dir=spool)
    assert failed == {}
    assert len(full.received) == archive.bytes_for(0) and len(part.received) == archive.bytes_for(2)
    got = loaded_members(part.received)
    assert json.loads(got[MANIFEST])[0]["RepoTags"][-1] == fleet_tag(archive.image.id)  # fleet's manifest, last
    assert list(spool.iterdir()) == []  # the spool folder removed


async def test_docker_save_failing_cuts_every_load_before_its_manifest(archive, tmp_path, fake_docker):
    fake_docker.setenv("FAKE_SAVE", str(archive.path))
    fake_docker.setenv("FAKE_FAIL", "7000")
    dockers = [Docker(), Docker()]
    with pytest.raises(ClientError, match="docker save fleet-unit:top on the controller failed: .*disk full"):
        await push_image(DockerSource("fleet-unit:top", archive.image),
                         [await target(f"algo-{i}", d) for i, d in enumerate(dockers, 1)], PushCount(),
                         docker_timeout=20, spool_dir=tmp_path)
    for docker in dockers:  # no manifest.json: nothing any engine loads
        assert 0 < len(docker.received) <= 7000 and b"manifest.json" not in docker.received


def test_source_for_an_archive_checks_it_holds_the_image_described(archive):
    assert source_for("x", archive.image, archive.path).image == archive.image
    other = LocalImage("sha256:" + "0" * 64, archive.image.layers, 1, ())
    with pytest.raises(ClientError, match="changed"):
        source_for("x", other, archive.path)
    assert isinstance(source_for("x", other, None), DockerSource)


# -- what a host has ---------------------------------------------------------------------------------

IMAGE = LocalImage("sha256:" + "a" * 64, ("sha256:" + "1" * 64, "sha256:" + "2" * 64), 100, ("t:1",))


@pytest.mark.parametrize(("stdout", "status", "expected"), [
    (b"present sha256:" + b"b" * 64 + b"\n", 0, None), (b"layers 0\n", 0, 0), (b"layers 2\n", 0, 2)])
async def test_host_has_reads_the_hosts_answer(stdout, status, expected):
    async def answer(command: ScriptedCommand) -> int:
        assert command.script == "fleet-image-have" and command.args[3:] == [IMAGE.id, *IMAGE.layers]
        command.write_stdout(stdout)
        return status
    transport = ScriptedTransport(LocalHost(address="localhost"), "algo-1", answer)
    await transport.connect()
    assert await host_has(transport, DOCKER, IMAGE, 20) == expected


@pytest.mark.parametrize(("stdout", "status", "match"), [
    (b"layers 3\n", 0, "gave"), (b"hello\n", 0, "gave"), (b"present\n", 0, "gave"),
    (b"present sha256:1; rm -rf /\n", 0, "gave"), (b"", Status.DOCKER_TIMEOUT, "did not answer"),
    (b"", Status.DOCKER_FAILED, "not answering")])
async def test_host_has_refuses_what_it_cannot_use(stdout, status, match):
    async def answer(command: ScriptedCommand) -> int:
        command.write_stdout(stdout)
        return status
    transport = ScriptedTransport(LocalHost(address="localhost"), "algo-1", answer)
    await transport.connect()
    with pytest.raises(HostError, match=match):
        await host_has(transport, DOCKER, IMAGE, 20)


def test_docker_inspect_output_is_read_strictly():
    good = json.dumps([{"Id": IMAGE.id, "RootFS": {"Layers": list(IMAGE.layers)}, "Size": 100,
                        "RepoTags": ["t:1"]}]).encode()
    assert parse_inspect(good) == IMAGE
    assert parse_inspect(b"[]") is None
    assert parse_inspect(good.replace(b"sha256:a", b"sha256:Z")) is None


# -- the host scripts, run for real against a fake docker --------------------------------------------

@pytest.fixture
def host_docker(tmp_path):
    """A docker for the host scripts: `image inspect` finds $FAKE_HAVE_ID only, `images`
    lists two, whose layers are given; `load` reads stdin into a file."""
    script = tmp_path / "hostdocker"
    script.write_text(f"""#!/bin/sh
case "$1 $2" in
  "image inspect")
    if [ "$3" = --format ] && [ "$4" = '{{{{.Id}}}}' ]; then
      if [ "$5" = "$FAKE_HAVE_ID" ]; then echo "$5"; exit 0; fi
      echo "Error: No such image: $5" >&2; exit 1
    fi
    printf '%s \\n' "{IMAGE.layers[0]}" "{IMAGE.layers[0]} sha256:{'9' * 64}"; exit 0 ;;
  "images -aq") echo sha256:{'b' * 64}; echo sha256:{'c' * 64} ;;
  "load ") cat > "{tmp_path}/loaded"; [ -s "{tmp_path}/loaded" ] || {{ echo "unexpected EOF" >&2; exit 1; }} ;;
esac
""")
    script.chmod(0o755)
    return str(script)


async def test_the_have_script_finds_the_longest_prefix_of_layers_some_image_has(host_docker, monkeypatch):
    from fleet.transport.local import LocalTransport
    transport = LocalTransport(LocalHost(address="localhost"), "algo-1")
    monkeypatch.setenv("FAKE_HAVE_ID", "none")
    assert await host_has(transport, [host_docker], IMAGE, 20) == 1
    monkeypatch.setenv("FAKE_HAVE_ID", IMAGE.id)
    assert await host_has(transport, [host_docker], IMAGE, 20) is None


async def test_the_load_script_checks_the_image_id_after_loading(host_docker, archive, tmp_path, monkeypatch):
    from fleet.transport.local import LocalTransport
    transport = LocalTransport(LocalHost(address="localhost"), "algo-1")
    monkeypatch.setenv("FAKE_HAVE_ID", archive.image.id)
    targets = [PushTarget("algo-1", transport, [host_docker], 0)]
    assert await push_image(archive, targets, PushCount(), docker_timeout=20, spool_dir=tmp_path) == {}
    assert (tmp_path / "loaded").read_bytes() == b"".join([c async for c, _ in archive.pieces({"x": 0})])
    monkeypatch.setenv("FAKE_HAVE_ID", "another")
    failed = await push_image(archive, targets, PushCount(), docker_timeout=20, spool_dir=tmp_path)
    assert isinstance(failed["algo-1"], HostError) and "no image of the config" in failed["algo-1"].message
