"""The engine's API over the host's SSH connection (fleet.engine), against the bed's real
sshd and engines (Docker 20.10, 28.5 on both image stores, Podman 5.8's compatible API):
a direct-streamlocal channel to the engine's socket, `docker system dial-stdio` on one exec
channel where sshd will not forward it, and what `fleet check` says of each host's way."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from fleet.engine import Engine, NoSuchObject
from fleet.engine.connect import engine_for, engine_path
from fleet.image.local import LocalImage
from fleet.image.push import host_has
from fleet.inventory import Host, load_inventory
from fleet.transport.ssh import SSHTransport

from conftest import IMAGE, make_job

pytestmark = pytest.mark.engines
TIMEOUT = 30
# Each test on each host: on a bed mixing engines (FLEET_BED_ENGINES=docker28,docker28c,podman)
# every engine meets every test.
each_host = pytest.mark.parametrize("index", [0, 1, 2], ids=["h1", "h2", "h3"])


def _hosts(inventory: Path) -> list[Host]:
    return list(load_inventory(inventory).hosts)


async def _engine(host: Host, transport: SSHTransport) -> Engine:
    engine = await engine_for(transport, host, TIMEOUT)
    assert engine is not None, engine_path(transport)
    return engine


def _config_image(host) -> LocalImage:
    """The bed image as the controller would push it: its config digest and layers (on the
    containerd store the ID is a manifest's: found by it all the same)."""
    found = host.docker("image", "inspect", "-f", "{{.Id}} {{range .RootFS.Layers}}{{.}} {{end}}", IMAGE).split()
    return LocalImage(id=found[0], layers=tuple(found[1:]), size=0, tags=(), config_known=True)


@each_host
async def test_the_engine_answers_through_the_ssh_connection_itself(cluster, index):
    host = _hosts(cluster.inventory)[index]
    async with SSHTransport(host, host.title) as transport:
        engine = await _engine(host, transport)
        assert engine.path == f"socket {host.engine_socket}"
        assert engine.server is not None and engine.server.api <= (1, 47)
        found = await engine.image_inspect(IMAGE)
        assert found is not None
        assert found["Id"] == cluster.hosts[index].docker("image", "inspect", "-f", "{{.Id}}", IMAGE).strip()
        assert await engine.image_inspect("fleet-test:no-such-tag") is None


@each_host
async def test_a_containers_bytes_come_back_exactly_and_resume_at_any_byte(cluster, index):
    host = _hosts(cluster.inventory)[index]
    name = f"fleet-engine-test-{uuid.uuid4().hex[:8]}"
    # Bytes that are not UTF-8 do not survive the engines' json-file log (U+FFFD in their place):
    # control bytes and UTF-8 beyond ASCII do.
    script = ("printf 'out one\\n'; printf 'err \\303\\251 \\001\\t\\r\\n' >&2; sleep 1; "
              "printf 'out two, no newline'; printf 'err two' >&2; exit 3")
    async with SSHTransport(host, host.title) as transport:
        engine = await _engine(host, transport)
        try:
            await engine.create(name, {"Image": IMAGE, "Entrypoint": ["/bin/sh", "-c", script],
                                       "HostConfig": {"NetworkMode": "none"}})
            await engine.start(name)
            followed = [piece async for piece in engine.logs(name, follow=True)]  # from start to exit
            assert await engine.wait(name, timeout=60) == 3
            assert (await engine.inspect(name))["State"]["ExitCode"] == 3
            out = b"".join(p for stream, p in followed if stream == 1)
            err = b"".join(p for stream, p in followed if stream == 2)
            assert out == b"out one\nout two, no newline"
            assert err == b"err \xc3\xa9 \x01\t\r\nerr two"
            whole = b"".join(p for _, p in [piece async for piece in engine.logs(name, follow=False)])
            assert sorted(whole) == sorted(out + err) and len(whole) == len(out + err)
            for offset in (0, 1, 8, 9, len(whole) - 1, len(whole), len(whole) + 5):
                resumed = b"".join(p for _, p in [piece async for piece in
                                                  engine.logs(name, follow=True, skip=offset)])
                assert resumed == whole[offset:], offset
        finally:
            await engine.remove(name)
        with pytest.raises(NoSuchObject, match=name):
            await engine.inspect(name)


@each_host
async def test_a_tty_containers_log_is_its_raw_bytes(cluster, index):
    host = _hosts(cluster.inventory)[index]
    name = f"fleet-engine-test-{uuid.uuid4().hex[:8]}"
    async with SSHTransport(host, host.title) as transport:
        engine = await _engine(host, transport)
        try:
            await engine.create(name, {"Image": IMAGE, "Tty": True, "HostConfig": {"NetworkMode": "none"},
                                       "Entrypoint": ["/bin/sh", "-c", "printf 'a\\001\\000\\000\\000b'"]})
            await engine.start(name)
            assert await engine.wait(name, timeout=60) == 0
            logged = b"".join(p for _, p in [piece async for piece in engine.logs(name, follow=False)])
            assert logged == b"a\x01\x00\x00\x00b"
        finally:
            await engine.remove(name)


@each_host
async def test_the_image_have_probe_needs_no_command_on_the_host(cluster, index):
    """The probe is API calls over the forwarded socket: sshd starts no session for it. The
    one command is the engine's identity (is the socket's engine the docker command's?),
    asked once per connection, not per probe (fleet.engine.connect)."""
    image = _config_image(cluster.hosts[index])
    host = _hosts(cluster.inventory)[index]
    async with SSHTransport(host, host.title) as transport:
        started = []
        original = transport.start

        async def counted(argv):
            started.append(argv[3] if len(argv) > 3 else argv[0])
            return await original(argv)
        transport.start = counted  # type: ignore[method-assign]
        assert await host_has(transport, host.docker_command, image, TIMEOUT) is None
        absent = LocalImage(id="sha256:" + "e" * 64, layers=(*image.layers, "sha256:" + "f" * 64), size=0,
                            tags=())
        have = await host_has(transport, host.docker_command, absent, TIMEOUT)
        classic = cluster.hosts[index].engine in ("docker20", "docker28")
        assert have == (len(image.layers) if classic else 0)
        assert started == ["fleet-engine-id"]


@each_host
async def test_where_no_socket_is_there_the_api_goes_through_dial_stdio(cluster, tmp_path, index):
    """Without engine_socket the default /var/run/docker.sock is tried: on the bed nothing
    listens there (each host's engine is at its DOCKER_HOST): dial-stdio, with the CLI's way."""
    doc = cluster.inventory_doc()
    for entry in doc["hosts"]:
        entry.pop("engine_socket", None)
    host = _hosts(cluster.write_inventory(tmp_path / "hosts.yaml", doc))[index]
    async with SSHTransport(host, host.title) as transport:
        engine = await _engine(host, transport)
        assert engine.path == "dial-stdio (no socket /var/run/docker.sock)"
        assert await host_has(transport, host.docker_command, _config_image(cluster.hosts[index]), TIMEOUT) is None


@pytest.fixture
def restricted_key(cluster, tmp_path):
    """A key of its own, marked `restrict` in the bed's authorized_keys (no forwarding of any
    kind, commands still run); the other keys are untouched, its line removed afterwards."""
    key = tmp_path / "id_restricted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-restricted", "-f", str(key)],
                   check=True)
    line = "restrict " + key.with_suffix(".pub").read_text().strip() + "\n"
    authorized = cluster.state / "authorized_keys"
    with authorized.open("a") as file:
        file.write(line)
    try:
        yield key
    finally:
        authorized.write_text(authorized.read_text().replace(line, ""))


def test_a_restricted_key_falls_back_to_dial_stdio_and_fleet_check_says_so(cluster, fleet, tmp_path,
                                                                          restricted_key):
    job = fleet.write_job(make_job("true", count=3))
    ok = fleet("check", "--inventory", str(cluster.inventory), str(job))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ENGINE-API" in ok.stdout
    for index, test_host in enumerate(cluster.hosts):
        row = next(line for line in ok.stdout.splitlines() if line.startswith(f"h{index + 1} "))
        assert f"socket {test_host.dir / 'docker.sock'}" in row, row

    doc = cluster.inventory_doc()
    doc["defaults"]["identity_file"] = str(restricted_key)
    inventory = cluster.write_inventory(tmp_path / "restricted.yaml", doc)
    run = fleet("check", "--inventory", str(inventory), str(job))
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("h")]
    assert len(rows) == 3
    for row in rows:
        assert "dial-stdio (sshd forwards no socket to this key or host)" in row, run.stdout
    # A job runs through the restricted key too: the controller has the image, each host is
    # asked over dial-stdio whether it has it: it has (present, nothing pushed), but where the
    # containerd store knows it by no config digest nor fleet's tag (the bed imported it).
    ran = fleet("run", "--inventory", str(inventory), "--push-image", str(job), timeout=180,
                env=fleet.env(DOCKER_HOST=cluster.controller_docker_host))
    assert ran.returncode == 0, ran.stderr
    name = json.loads(job.read_text())["ProcessingJobName"]
    hosts = fleet.record(name)["Image"]["Hosts"]
    for k, test_host in enumerate(cluster.hosts, 1):
        if test_host.engine != "docker28c":
            assert hosts[f"algo-{k}"]["Delivery"] == "present", (test_host.engine, hosts)


async def test_a_socket_of_another_engine_than_the_docker_commands_is_not_used(cluster, fleet, tmp_path):
    """h1's engine_socket names h2's engine, while h1's docker command (its login's
    DOCKER_HOST) talks to h1's: the engine IDs differ, so h1 reaches its engine through
    dial-stdio (the docker command's by construction), and `fleet check` says why."""
    doc = cluster.inventory_doc()
    other = str(cluster.hosts[1].dir / "docker.sock")
    doc["hosts"][0]["engine_socket"] = other
    inventory = cluster.write_inventory(tmp_path / "hosts.yaml", doc)
    host = _hosts(inventory)[0]
    async with SSHTransport(host, host.title) as transport:
        engine = await _engine(host, transport)
        assert engine.path.startswith(f"dial-stdio ({other} is not the engine `{host.docker}` talks to ("), engine.path
        info = await engine.info()
        expected = cluster.hosts[0].docker("info", "--format", "{{.DockerRootDir}}").strip()
        assert info["DockerRootDir"] == expected  # h1's own engine
        if cluster.hosts[0].engine != "podman":
            assert info["ID"] == cluster.hosts[0].docker("info", "--format", "{{.ID}}").strip()
    job = fleet.write_job(make_job("true", count=3))
    checked = fleet("check", "--inventory", str(inventory), str(job))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rows = {line.split()[0]: line for line in checked.stdout.splitlines() if line.startswith("h")}
    assert f"{other} is not the engine" in rows["h1"], checked.stdout
    assert f"socket {cluster.hosts[1].dir / 'docker.sock'}" in rows["h2"], checked.stdout
