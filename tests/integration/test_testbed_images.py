"""The image test bed works with real parts: the controller's dockerd, a registry that wants
a password (as 10.251.7.1 and as the fake ECR host), the fake ECR endpoint.
No fleet code here: these tests check the fixtures (tests/integration/registries.py)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import uuid

import pytest
from registries import ECR_HOST, ECR_TARGET, TEST_IMAGE


@pytest.fixture(scope="module")
def pushed(auth_registry, controller_docker):
    """A small image built on the controller and pushed: (repo, digest)."""
    repo = f"fleet/testbed-{uuid.uuid4().hex[:8]}"
    tag = f"{repo}:build"
    controller_docker.build_image(tag, {"/fleet-version": b"v1\n"})
    try:
        digest = auth_registry.push(tag, f"{auth_registry.address}/{repo}:1")
    finally:
        controller_docker.remove(tag)
    return repo, digest


def test_controller_dockerd_runs_with_the_test_image(cluster, controller_docker):
    assert cluster.controller_docker_host.startswith("unix://") and "/var/run/docker.sock" not in \
        cluster.controller_docker_host
    assert controller_docker.image_id(TEST_IMAGE).startswith("sha256:")
    out = controller_docker.docker("run", "--rm", "--network", "none", TEST_IMAGE, "hi")
    assert out.strip() == "default entrypoint hi"


def test_ecr_host_resolves_to_the_bridge(cluster):
    assert cluster.ecr_host == ECR_HOST
    assert socket.gethostbyname(ECR_HOST) == "10.251.7.1"


def test_host_pulls_private_image_only_with_credentials(cluster, auth_registry, pushed, tmp_path):
    repo, digest = pushed
    ref = f"{auth_registry.address}/{repo}:1"
    host = cluster.hosts[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    wrong = auth_registry.docker_config(tmp_path / "wrong", password="not-the-password")
    for config in (empty, wrong):
        result = subprocess.run(["docker", "-H", host.docker_host, "--config", str(config), "pull", ref],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, result.stdout
        assert "auth" in result.stderr.lower() or "unauthorized" in result.stderr.lower(), result.stderr
    good = auth_registry.docker_config(tmp_path / "good")
    host.docker("--config", str(good), "pull", ref)
    try:
        assert f"{repo}@{digest}" in host.docker("image", "inspect", "-f", "{{json .RepoDigests}}", ref)
        assert host.docker("run", "--rm", "--network", "none", "--entrypoint", "cat", ref,
                           "/fleet-version") == "v1\n"
    finally:
        host.docker("rmi", ref, check=False)


def test_host_pulls_from_the_ecr_host_as_aws(cluster, auth_registry, pushed, tmp_path):
    repo, digest = pushed
    ref = f"{ECR_HOST}/{repo}:1"
    host = cluster.hosts[1]
    as_fleetuser = auth_registry.docker_config(tmp_path / "u", user="fleetuser", host=ECR_HOST)
    result = subprocess.run(["docker", "-H", host.docker_host, "--config", str(as_fleetuser), "pull", ref],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # the same registry: any of its users
    host.docker("rmi", ref)
    aws = auth_registry.docker_config(tmp_path / "aws", user="AWS")
    assert ECR_HOST in (aws / "config.json").read_text()
    host.docker("--config", str(aws), "pull", ref)
    try:
        assert digest in host.docker("image", "inspect", "-f", "{{json .RepoDigests}}", ref)
    finally:
        host.docker("rmi", ref, check=False)


def test_move_tag_and_a_second_version(auth_registry, controller_docker, pushed):
    repo, v1 = pushed
    controller_docker.build_image(f"{repo}:v2", {"/fleet-version": b"v2\n"})
    try:
        v2 = auth_registry.push(f"{repo}:v2", f"{auth_registry.address}/{repo}:2")
    finally:
        controller_docker.remove(f"{repo}:v2")
    assert v2 != v1
    auth_registry.move_tag(repo, "latest", v2)
    assert auth_registry.manifest_digest(f"{repo}:latest") == v2
    auth_registry.move_tag(repo, "latest", f"{auth_registry.address}/{repo}:1")
    assert auth_registry.manifest_digest(f"{repo}:latest") == v1
    # v1 and v2 share the base layer, only the top one differs
    l1 = json.loads(auth_registry.manifest(f"{repo}:1")[0])["layers"]
    l2 = json.loads(auth_registry.manifest(f"{repo}:2")[0])["layers"]
    assert [x["digest"] for x in l1[:-1]] == [x["digest"] for x in l2[:-1]] and l1[-1] != l2[-1]
    assert l2[-1]["size"] < 10_000


def test_big_base_is_one_incompressible_layer(controller_docker):
    tag = f"fleet-test-big:{uuid.uuid4().hex[:8]}"
    controller_docker.make_big_base(tag, size_mb=4)
    try:
        layers = controller_docker.docker("image", "inspect", "-f", "{{len .RootFS.Layers}}", tag).strip()
        assert layers == "1"
        size = controller_docker.docker("run", "--rm", "--network", "none", "--entrypoint", "wc", tag,
                                        "-c", "/big/random.bin")
        assert size.split()[0] == str(4 << 20)
    finally:
        controller_docker.remove(tag)


async def test_get_authorization_token_from_fake_ecr(fake_ecr, auth_registry, monkeypatch):
    from aiobotocore.session import get_session
    from botocore.exceptions import ClientError

    for k, v in fake_ecr.env.items():
        monkeypatch.setenv(k, v)
    session = get_session()
    async with session.create_client("ecr", region_name="us-east-1") as ecr:
        answer = await ecr.get_authorization_token()
        fake_ecr.expired = True
        stale = await ecr.get_authorization_token(registryIds=["123456789012"])
        fake_ecr.error = ("AccessDeniedException", "not allowed here")
        with pytest.raises(ClientError) as denied:
            await ecr.get_authorization_token()
    data = answer["authorizationData"][0]
    assert base64.b64decode(data["authorizationToken"]).decode() == f"AWS:{auth_registry.aws_password}"
    assert data["proxyEndpoint"] == f"http://{ECR_HOST}"
    assert 11 * 3600 < data["expiresAt"].timestamp() - time.time() <= 12 * 3600
    assert stale["authorizationData"][0]["expiresAt"].timestamp() < time.time()
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert [(r.target, r.registry_ids, r.signed) for r in fake_ecr.requests] == [
        (ECR_TARGET, None, True), (ECR_TARGET, ["123456789012"], True), (ECR_TARGET, None, True)]
