"""One image on every engine, with real engines (scripts/local-cluster --engines): Docker
20.10, Docker 28.5 on its classic store and on the containerd image store (Docker 29's
default for new installs), Podman 5.8's Docker-compatible service. "The same image" is the
same config digest, whatever ID an engine gives it.

The tests marked `engines` run on a bed of each engine in turn (scripts/test); those
marked `mixed_engines` on a bed whose hosts run different engines."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from fleet.image.archive import open_archive

from conftest import make_job

CLASSIC = ("docker20", "docker28")  # engines whose `docker load` skips the layers a host has


def config_image(host, config_id: str) -> str | None:
    """The engine's ID of the host's image of this config digest: by that ID (classic
    stores, Podman) or through the tag fleet loads it with (the containerd store)."""
    for ref in (config_id, "fleet-image:" + config_id.removeprefix("sha256:")):
        found = host.docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).strip()
        if found:
            return found
    return None


@pytest.fixture
def images(cluster, controller_docker):
    """Tags and config digests this test made: removed from the controller and every host."""
    made: list[tuple[str, str]] = []
    yield made
    for tag, config_id in reversed(made):
        for host in cluster.hosts:
            host.docker("rmi", "-f", tag, "fleet-image:" + config_id.removeprefix("sha256:"), check=False)
            host.docker("rmi", "-f", config_id, check=False)
        controller_docker.remove(tag)


def _build(controller_docker, images, files: dict[str, bytes], base: str | None = None) -> tuple[str, str]:
    tag = f"fleet-engines/{uuid.uuid4().hex[:12]}:v1"
    config_id = controller_docker.build_image(tag, files, **({"base": base} if base else {}))
    images.append((tag, config_id))
    return tag, config_id


def _run(fleet, cluster, controller_docker, tag: str, script: str):
    job = make_job(script, count=len(cluster.hosts))
    job["AppSpecification"]["ImageUri"] = tag
    run = fleet("run", "--inventory", str(cluster.inventory), "--push-image", str(fleet.write_job(job)),
                env=fleet.env(DOCKER_HOST=controller_docker.host), timeout=180)
    return job["ProcessingJobName"], run


def _pushed_and_identical(fleet, cluster, controller_docker, images) -> None:
    token = uuid.uuid4().hex
    tag, config_id = _build(controller_docker, images, {"/fleet-marker": token.encode() + b"\n"})
    name, run = _run(fleet, cluster, controller_docker, tag, "cat /fleet-marker")
    assert run.returncode == 0, run.stderr
    record = fleet.record(name)
    assert record["AppSpecification"]["ImageDigest"] == config_id
    for k, host in enumerate(cluster.hosts, 1):
        assert fleet.log(name, f"algo-{k}") == token + "\n", (host.engine, run.stderr)
        seen = record["Image"]["Hosts"][f"algo-{k}"]
        assert seen["Delivery"] == "pushed" and seen["ImageId"] == config_id and seen["BytesSent"] > 0, seen
        engine_id = config_image(host, config_id)
        assert engine_id is not None, host.engine
        # The engine's own ID is recorded where it is not the config's (the containerd store).
        assert seen.get("EngineImageId", config_id) == engine_id, (host.engine, seen)
        assert host.docker("image", "inspect", "-f", "{{.Id}}", tag).strip() == engine_id  # the user's tag too

    # Again: every host has it, on every engine; nothing moves.
    again, run = _run(fleet, cluster, controller_docker, tag, "cat /fleet-marker")
    assert run.returncode == 0, run.stderr
    hosts = fleet.record(again)["Image"]["Hosts"]
    assert {algo: (h["Delivery"], h["BytesSent"], h["ImageId"]) for algo, h in hosts.items()} == {
        f"algo-{k}": ("present", 0, config_id) for k in range(1, len(cluster.hosts) + 1)}


@pytest.mark.engines
def test_a_pushed_image_runs_and_is_found_again_by_its_config_on_this_engine(fleet, cluster, controller_docker,
                                                                             images):
    _pushed_and_identical(fleet, cluster, controller_docker, images)


@pytest.mark.mixed_engines
def test_hosts_of_different_engines_run_one_pushed_image_known_by_one_identity(fleet, cluster, controller_docker,
                                                                               images):
    assert len(set(cluster.engines)) > 1, cluster.engines
    _pushed_and_identical(fleet, cluster, controller_docker, images)


@pytest.mark.engines
@pytest.mark.mixed_engines
def test_a_new_top_layer_moves_alone_where_the_engine_skips_layers_and_whole_elsewhere(fleet, cluster,
                                                                                     controller_docker, images):
    base, _ = _build(controller_docker, images, {"/payload.bin": uuid.uuid4().bytes * 65536})  # 1 MiB
    name, run = _run(fleet, cluster, controller_docker, base, "true")
    assert run.returncode == 0, run.stderr
    first = {a: h["BytesSent"] for a, h in fleet.record(name)["Image"]["Hosts"].items()}
    token = uuid.uuid4().hex
    top, config_id = _build(controller_docker, images, {"/fleet-top": token.encode()}, base=base)
    name, run = _run(fleet, cluster, controller_docker, top, "cat /fleet-top")
    assert run.returncode == 0, run.stderr
    hosts = fleet.record(name)["Image"]["Hosts"]
    for k, host in enumerate(cluster.hosts, 1):
        algo = f"algo-{k}"
        assert fleet.log(name, algo) == token and hosts[algo]["ImageId"] == config_id, host.engine
        sent = hosts[algo]["BytesSent"]
        if host.engine in CLASSIC:
            assert 0 < sent < first[algo] / 10, (host.engine, sent, first[algo])
        else:  # the containerd store and Podman read every layer the manifest names
            assert sent > first[algo] * 0.9, (host.engine, sent, first[algo])


@pytest.mark.engines
def test_a_push_cut_before_its_manifest_leaves_no_image_on_this_engine(cluster, controller_docker, images,
                                                                      tmp_path: Path):
    """What a host is sent, cut where a lost connection can cut it (at an entry boundary,
    before the manifest that comes last): the engine loads nothing, and says so."""
    tag, config_id = _build(controller_docker, images, {"/fleet-marker": b"cut\n"})
    path = tmp_path / "image.tar"
    controller_docker.docker("save", "-o", str(path), tag)
    archive = open_archive(path)

    async def stream() -> bytes:
        return b"".join([chunk async for chunk, _ in archive.pieces({"h": 0})])
    whole = asyncio.run(stream())
    cut = whole[:-len(archive.manifest) - 1024]
    for host in cluster.hosts:
        before = set(host.docker("images", "-aq", "--no-trunc").split())
        loaded = subprocess.run(["docker", "-H", host.docker_host, "load"], input=cut, capture_output=True,
                                timeout=120)
        assert loaded.returncode != 0, (host.engine, loaded.stdout, loaded.stderr)
        assert set(host.docker("images", "-aq", "--no-trunc").split()) == before, host.engine
        assert config_image(host, config_id) is None, host.engine
