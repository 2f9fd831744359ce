"""Images pushed from the controller to hosts with no registry, with real parts: images built
on the bed's controller dockerd, pushed by the real CLI over each host's SSH connection into
its own dockerd (`docker load`), cut links, `docker save` archives.

Each test checks what the container printed (a token only the pushed image holds), what the
user saw (exit code, messages, describe.json) and what each host's dockerd holds afterwards.
Every image made here has a fresh unique tag and is removed (by that tag and its ID) from
the controller and every host at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import make_job
from support.procwatch import processes


@pytest.fixture
def images(cluster, controller_docker):
    """Tags and IDs this test made: removed from the controller and every host afterwards
    (the controller's by tag, children first; the hosts' by tag and by ID)."""
    made: list[tuple[str, str]] = []  # (tag, image ID), in the order built
    yield made
    for tag, image_id in reversed(made):
        for host in cluster.hosts:
            host.docker("rmi", "-f", tag, check=False)
            host.docker("rmi", "-f", image_id, check=False)
        controller_docker.remove(tag)
        controller_docker.remove(image_id)


def _tag(what: str) -> str:
    return f"fleet-push-test/{what}-{uuid.uuid4().hex[:12]}:v1"


def _build(controller_docker, images, what: str, files: dict[str, bytes], base: str | None = None) -> tuple[str, str]:
    tag = _tag(what)
    image_id = controller_docker.build_image(tag, files, **({"base": base} if base else {}))
    images.append((tag, image_id))
    return tag, image_id


def _job(tag: str, script: str, count: int = 3) -> dict:
    job = make_job(script, count=count)
    job["AppSpecification"]["ImageUri"] = tag
    return job


def _run(fleet, job: dict, *args: str, inventory: Path | None = None, docker_host: str | None,
         timeout: float = 120):
    """`fleet run` with the controller's Docker at `docker_host` (None: no DOCKER_HOST at all)."""
    env = fleet.env()
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CONTEXT", None)
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    path = fleet.write_job(job)
    return fleet("run", "--inventory", str(inventory or fleet.cluster.inventory), str(path), *args,
                 env=env, timeout=timeout)


def _host_image_id(host, ref: str) -> str | None:
    out = host.docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).strip()
    return out or None


def _deliveries(record: dict) -> dict[str, str]:
    return {algo: h["Delivery"] for algo, h in record["Image"]["Hosts"].items()}


# -- 1. an image only the controller has ---------------------------------------------------------

def test_an_image_only_the_controller_has_is_pushed_to_every_host_and_runs(fleet, cluster, controller_docker,
                                                                           images):
    token = uuid.uuid4().hex
    tag, image_id = _build(controller_docker, images, "marker", {"/fleet-marker": token.encode() + b"\n"})
    assert all(_host_image_id(h, image_id) is None for h in cluster.hosts)
    job = _job(tag, "cat /fleet-marker")
    name = job["ProcessingJobName"]

    run = _run(fleet, job, docker_host=controller_docker.host)

    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == token + "\n", f"algo-{k}'s log"
        assert f"[algo-{k}] {token}" in run.stdout
    notice = next((line for line in run.stderr.splitlines() if f"image {tag}: " in line), "")
    assert "pushed to algo-1 (" in notice and "algo-2 (" in notice and "algo-3 (" in notice, run.stderr
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Completed"
    assert record["AppSpecification"]["ImageDigest"] == image_id
    assert record["Image"]["ImageDigest"] == image_id
    hosts = record["Image"]["Hosts"]
    assert sorted(hosts) == ["algo-1", "algo-2", "algo-3"]
    for algo, seen in hosts.items():
        assert seen["Delivery"] == "pushed", (algo, seen)
        assert seen["ImageId"] == image_id, (algo, seen)
        assert seen["BytesSent"] > 0, (algo, seen)
    for host in cluster.hosts:
        assert _host_image_id(host, image_id) == image_id, host.name
        assert _host_image_id(host, tag) == image_id, host.name  # `docker save REF` keeps the tag


# -- 2. only the layer a host lacks moves ---------------------------------------------------------

def test_an_image_one_small_layer_apart_moves_only_that_layer(fleet, cluster, controller_docker, images):
    v1, v1_id = _build(controller_docker, images, "layers", {"/payload.bin": os.urandom(1 << 20),
                                                             "/fleet-version": b"v1\n"})
    token = uuid.uuid4().hex
    v2, v2_id = _build(controller_docker, images, "layers", {"/fleet-v2": token.encode() + b"\n"}, base=v1)
    first = _job(v1, "cat /fleet-version")
    run = _run(fleet, first, docker_host=controller_docker.host)
    assert run.returncode == 0, run.stderr
    sent_v1 = {a: h["BytesSent"] for a, h in fleet.record(first["ProcessingJobName"])["Image"]["Hosts"].items()}
    assert all(sent > 1 << 20 for sent in sent_v1.values()), sent_v1  # the 1 MiB random layer

    second = _job(v2, "cat /fleet-v2 /fleet-version")
    run = _run(fleet, second, docker_host=controller_docker.host)

    assert run.returncode == 0, run.stderr
    name = second["ProcessingJobName"]
    for k in (1, 2, 3):
        assert fleet.log(name, f"algo-{k}") == f"{token}\nv1\n", f"algo-{k}'s log"
    record = fleet.record(name)
    assert record["AppSpecification"]["ImageDigest"] == v2_id
    for algo, seen in record["Image"]["Hosts"].items():
        assert seen["Delivery"] == "pushed", (algo, seen)
        assert 0 < seen["BytesSent"] < sent_v1[algo] / 10, (algo, seen["BytesSent"], sent_v1[algo])
    for host in cluster.hosts:
        assert _host_image_id(host, v2_id) == v2_id, host.name


# -- 3. a push cut mid-stream ---------------------------------------------------------------------

def _load_processes(host) -> list[int]:
    """The `docker ... load` commands running in the host's network namespace (fleet-load's)."""
    ns = Path(f"/var/run/netns/fleet-h{host.index}")
    found = []
    for pid, cmdline in processes():
        argv = cmdline.split(b"\0")
        if os.path.basename(argv[0]) != b"docker" or b"load" not in argv:
            continue
        try:
            if os.path.samefile(f"/proc/{pid}/ns/net", ns):
                found.append(pid)
        except OSError:
            continue
    return found


def _bytes_read(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _connected(pid: int, address: str) -> bool:
    """Process `pid` has an established TCP connection to `address` port 22."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"{address}:22"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return f"pid={pid}," in out


def _started_containers(host, name: str, since: str) -> list[str]:
    """Every `start` event of a container of job `name` on the host since `since`."""
    out = host.docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                      "--filter", "type=container", "--filter", f"label=fleet.job={name}",
                      "--filter", "event=start", "--format", "{{.Actor.Attributes.name}}")
    return out.split()


def test_a_push_cut_mid_stream_fails_the_job_before_any_container_and_loads_nothing(fleet, cluster,
                                                                                    controller_docker, images):
    tag = _tag("big")
    image_id = controller_docker.make_big_base(tag, size_mb=200)
    images.append((tag, image_id))
    cut = cluster.hosts[1]
    before = set(cut.docker("images", "-aq", "--no-trunc").split())
    since = str(int(time.time()))
    job = _job(tag, "echo ran on $(hostname)")
    name = job["ProcessingJobName"]
    env = fleet.env(DOCKER_HOST=controller_docker.host)
    started = time.monotonic()
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                          "--host-timeout", "4", env=env)
    try:
        # Mid-stream: h2's `docker load` has read 20 MB of the 200.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not any(_bytes_read(p) > 20e6 for p in _load_processes(cut)):
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        else:
            assert time.monotonic() < deadline, "h2's docker load never got 20 MB"
        cut.link(False)
        try:
            # Until fleet gives up on h2's connection (its keepalives: ~9 s); the link then
            # comes back, so that the cleanup reaches h2 and its stale session is reset.
            deadline = time.monotonic() + 30
            while _connected(process.pid, cut.address) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            cut.link(True)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    took = time.monotonic() - started

    assert process.returncode == 75, err
    label = f"algo-2 (h2, {cut.address})"
    failed = f"{label}: lost while pushing the image {tag}: "
    assert f"{name}: Failed: ClientError: {failed}" in err, err
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Failed"
    assert record["FailureReason"].startswith(f"ClientError: {failed}"), record["FailureReason"]
    assert record["FailureReason"].count(label) == 1, record["FailureReason"]  # said once
    assert "ran on" not in out
    for host in cluster.hosts:
        assert _started_containers(host, name, since) == [], host.name
    # Once back, the cut host's load ends (its stream cut: nothing loads).
    deadline = time.monotonic() + 30
    while _load_processes(cut) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _load_processes(cut) == [], "h2's docker load still runs 30 s after its link came back"
    assert _host_image_id(cut, image_id) is None
    assert set(cut.docker("images", "-aq", "--no-trunc").split()) == before
    assert took < 60, took


# -- 4. from a `docker save` archive, with no docker on the controller ----------------------------

def test_an_image_archive_is_pushed_with_no_docker_on_the_controller(fleet, cluster, controller_docker, images,
                                                                     tmp_path):
    token = uuid.uuid4().hex
    tag, image_id = _build(controller_docker, images, "archive", {"/fleet-marker": token.encode() + b"\n"})
    archive = tmp_path / "image.tar"
    controller_docker.docker("save", "-o", str(archive), tag)
    job = _job(tag, "cat /fleet-marker", count=2)
    name = job["ProcessingJobName"]

    run = _run(fleet, job, "--image-archive", str(archive), docker_host=None)

    assert run.returncode == 0, run.stderr
    for k in (1, 2):
        assert fleet.log(name, f"algo-{k}") == token + "\n", f"algo-{k}'s log"
    assert f"--image-archive {archive}: image {image_id}" in run.stderr
    record = fleet.record(name)
    assert record["AppSpecification"]["ImageDigest"] == image_id
    assert _deliveries(record) == {"algo-1": "pushed", "algo-2": "pushed"}
    assert all(h["BytesSent"] > 0 and h["ImageId"] == image_id for h in record["Image"]["Hosts"].values())
    assert [_host_image_id(h, image_id) for h in cluster.hosts[:2]] == [image_id, image_id]
    assert _host_image_id(cluster.hosts[2], image_id) is None


# -- 5. image_source: pull never pushes ------------------------------------------------------------

def test_image_source_pull_does_not_push_an_image_only_the_controller_has(fleet, cluster, controller_docker,
                                                                          images, tmp_path):
    tag, image_id = _build(controller_docker, images, "pull", {"/fleet-marker": b"pull\n"})
    doc = cluster.inventory_doc()
    doc.setdefault("defaults", {})["image_source"] = "pull"
    inventory = cluster.write_inventory(tmp_path / "pull.yaml", doc)
    job = _job(tag, "cat /fleet-marker")
    name = job["ProcessingJobName"]

    run = _run(fleet, job, inventory=inventory, docker_host=controller_docker.host)

    assert run.returncode == 75, run.stderr
    assert "pushed to" not in run.stderr
    record = fleet.record(name)
    assert record["ProcessingJobStatus"] == "Failed"
    reason = record["FailureReason"]
    assert reason.startswith("ClientError: "), reason
    for k, host in enumerate(cluster.hosts, start=1):
        said = f"algo-{k} ({host.name}, {host.address}): cannot pull image {tag}: "
        assert said in reason and said in run.stderr, run.stderr
    assert "pushed" not in json.dumps(record.get("Image"))
    for host in cluster.hosts:
        assert _host_image_id(host, image_id) is None, host.name
