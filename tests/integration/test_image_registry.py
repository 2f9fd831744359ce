"""Images pulled from private registries with the controller's credentials, one digest for
the whole job: a real registry (Debian's docker-registry, htpasswd) on the bed, credentials
only in the controller's DOCKER_CONFIG or from ECR (a fake GetAuthorizationToken server
speaking AWS JSON 1.1), the test hosts' real dockerd pulling."""

from __future__ import annotations

import base64
import http.client
import http.server
import secrets
import threading
import uuid
from pathlib import Path

import pytest

from conftest import make_job
from support.procwatch import ProcWatch, files_holding

pytestmark = pytest.mark.integration


def _marked_image(controller_docker, token: str) -> str:
    tag = f"fleet-reg-{uuid.uuid4().hex[:10]}:1"
    controller_docker.build_image(tag, {"/fleet-marker": token.encode()})
    return tag


def _inventory(fleet, cluster, count: int, **top) -> Path:
    doc = cluster.inventory_doc()
    doc["hosts"] = doc["hosts"][:count]
    doc.update(top)
    return cluster.write_inventory(fleet.tmp / "hosts.yaml", doc)


def _host_side_files(cluster) -> list[Path]:
    """Where a host could keep a file: its workdir and state (not its image store), and the
    SSH user's Docker config."""
    return [cluster.state, Path.home() / ".docker"]


SKIP = ("docker-data", "docker-exec", "containerd", "controller")
LARGEST = 50 * 2**20  # bytes: a larger file (an image layer) is not read


def test_a_private_registrys_image_runs_on_3_hosts_with_the_controllers_docker_login_only(
        fleet, cluster, controller_docker, auth_registry, tmp_path):
    token = secrets.token_hex(8)
    local = _marked_image(controller_docker, token)
    ref = f"{auth_registry.address}/fleet/private-{uuid.uuid4().hex[:8]}:1"
    digest = auth_registry.push(local, ref)
    controller_docker.remove(local)  # the controller has no copy: the hosts must pull
    config = auth_registry.docker_config(tmp_path / "docker-config")
    inventory = _inventory(fleet, cluster, 3, insecure_registries=[auth_registry.address])
    job = make_job("cat /fleet-marker; echo", count=3)
    job["AppSpecification"]["ImageUri"] = ref
    password = auth_registry.password
    basic = base64.b64encode(f"{auth_registry.user}:{password}".encode()).decode()
    env = fleet.env(DOCKER_CONFIG=str(config))
    try:
        with ProcWatch(password, basic) as watch:
            result = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), env=env, timeout=180)
        assert result.returncode == 0, result.stderr
        name = job["ProcessingJobName"]
        for algo in ("algo-1", "algo-2", "algo-3"):
            assert token in fleet.log(name, algo)
        record = fleet.record(name)
        assert record["AppSpecification"]["ImageUri"] == ref
        assert record["AppSpecification"]["ImageDigest"] == digest
        assert {h["Delivery"] for h in record["Image"]["Hosts"].values()} == {"pulled"}
        assert "auth: docker config" in result.stderr and digest[:19] in result.stderr
        # The secret was never in an argv, and is in no file of the hosts nor of FLEET_HOME.
        assert watch.scans > 3 and watch.seen == []
        needles = [password.encode(), basic.encode()]
        assert files_holding([fleet.home, *_host_side_files(cluster)], needles, skip=SKIP, largest=LARGEST) == []
        assert password not in result.stdout + result.stderr
    finally:
        for host in cluster.hosts:
            host.docker("image", "rm", "-f", f"{ref.rsplit(':', 1)[0]}@{digest}", check=False)


def test_an_ecr_image_is_pulled_with_a_token_from_ecr(fleet, cluster, controller_docker, auth_registry,
                                                      fake_ecr, tmp_path):
    token = secrets.token_hex(8)
    local = _marked_image(controller_docker, token)
    ref = f"{cluster.ecr_host}/fleet/ecr-{uuid.uuid4().hex[:8]}:1"
    digest = auth_registry.push(local, ref, user="AWS")
    controller_docker.remove(local)
    empty = tmp_path / "no-docker-config"
    empty.mkdir()
    inventory = _inventory(fleet, cluster, 2)
    job = make_job("cat /fleet-marker; echo", count=2)
    job["AppSpecification"]["ImageUri"] = ref
    env = fleet.env(DOCKER_CONFIG=str(empty), **fake_ecr.env)
    try:
        with ProcWatch(auth_registry.aws_password, fake_ecr.token) as watch:
            result = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), env=env, timeout=180)
        assert result.returncode == 0, result.stderr
        name = job["ProcessingJobName"]
        assert token in fleet.log(name, "algo-1") and token in fleet.log(name, "algo-2")
        assert fleet.record(name)["AppSpecification"]["ImageDigest"] == digest
        # One signed GetAuthorizationToken for the image's account.
        asked = [r for r in fake_ecr.requests if r.target.endswith("GetAuthorizationToken")]
        assert len(asked) == 1 and asked[0].signed and asked[0].registry_ids == ["123456789012"]
        assert "auth: ECR" in result.stderr
        assert watch.seen == []
        needles = [auth_registry.aws_password.encode(), fake_ecr.token.encode()]
        assert files_holding([fleet.home, *_host_side_files(cluster)], needles, skip=SKIP, largest=LARGEST) == []
    finally:
        for host in cluster.hosts:
            host.docker("image", "rm", "-f", f"{ref.rsplit(':', 1)[0]}@{digest}", check=False)


@pytest.mark.parametrize("refusal", ["denied", "expired"])
def test_ecr_refusing_fails_the_job_naming_the_image_and_what_ecr_said(fleet, cluster, fake_ecr, refusal,
                                                                       tmp_path):
    if refusal == "denied":
        fake_ecr.error = ("AccessDeniedException", "User is not authorized to perform: ecr:GetAuthorizationToken")
    else:
        fake_ecr.expired = True
    ref = f"{cluster.ecr_host}/fleet/never-{uuid.uuid4().hex[:8]}:1"
    job = make_job("echo never", count=2)
    job["AppSpecification"]["ImageUri"] = ref
    empty = tmp_path / "no-docker-config"
    empty.mkdir()
    result = fleet("run", "--inventory", str(_inventory(fleet, cluster, 2)), str(fleet.write_job(job)),
                   env=fleet.env(DOCKER_CONFIG=str(empty), **fake_ecr.env))
    assert result.returncode == 1, result.stderr
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError: ") and ref in reason and "GetAuthorizationToken" in reason
    if refusal == "denied":
        assert "AccessDeniedException: User is not authorized" in reason
    else:
        assert "expired at" in reason
    assert "Traceback" not in result.stderr
    for host in cluster.hosts:  # nothing was started anywhere
        assert host.containers(job["ProcessingJobName"]) == []


def test_a_registry_refusing_the_hosts_pull_for_want_of_credentials_is_the_users_failure_exit_1(
        fleet, cluster, auth_registry, tmp_path):
    # The controller has no credentials (an empty DOCKER_CONFIG) for the private registry:
    # every host's pull is refused ("no basic auth credentials"). A scheduler's requeue on 75
    # could never fix that: exit 1, ClientError, the host and the registry's words named.
    # (Exited 75 before: a refused pull counted as the machine's.)
    ref = f"{auth_registry.address}/fleet/refused-{uuid.uuid4().hex[:8]}:1"
    config = tmp_path / "no-docker-config"
    config.mkdir()
    job = make_job("echo never", count=2)
    job["AppSpecification"]["ImageUri"] = ref
    inventory = _inventory(fleet, cluster, 2, insecure_registries=[auth_registry.address])
    result = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)),
                   env=fleet.env(DOCKER_CONFIG=str(config)), timeout=180)
    assert result.returncode == 1, result.stderr
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    reason = record["FailureReason"]
    assert reason.startswith("ClientError: ") and "algo-1 (h1, " in reason and ref in reason, reason
    assert "no basic auth credentials" in reason, reason
    assert "Traceback" not in result.stderr
    for host in cluster.hosts:  # nothing was started anywhere
        assert host.containers(job["ProcessingJobName"]) == []


class _MovingProxy:
    """An HTTP proxy in front of the registry that moves the tag the moment the first host
    asks for the image's manifest by digest: every host's pull comes after the first
    host's pull began, and a fleet pulling the tag would split the cluster."""

    def __init__(self, registry, repo: str, tag: str, to: str) -> None:
        self.registry, self.repo, self.tag, self.to = registry, repo, tag, to
        self.moved = threading.Event()
        # Hosts ask at once (the proxy's threads): one moves the tag, the others wait for the
        # move to be over before theirs are forwarded, none moves it again.
        self.moving = threading.Lock()
        self.digest_pulls: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                if f"/v2/{proxy.repo}/manifests/sha256:" in self.path:
                    with proxy.moving:
                        proxy.digest_pulls.append(self.path)
                        if not proxy.moved.is_set():
                            proxy.registry.move_tag(proxy.repo, proxy.tag, proxy.to)
                            proxy.moved.set()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("10.251.7.1", 80, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD" else
                                                       answer.getheader("Content-Length") or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("10.251.7.1", 0), Handler)
        self.address = f"10.251.7.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_tag_moved_between_the_hosts_pulls_does_not_split_the_cluster(
        fleet, cluster, controller_docker, auth_registry, tmp_path):
    repo = f"fleet/moving-{uuid.uuid4().hex[:8]}"
    first, second = secrets.token_hex(6), secrets.token_hex(6)
    images = [_marked_image(controller_docker, first), _marked_image(controller_docker, second)]
    first_digest = auth_registry.push(images[0], f"{auth_registry.address}/{repo}:v1")
    second_digest = auth_registry.push(images[1], f"{auth_registry.address}/{repo}:v2")
    auth_registry.move_tag(repo, "current", first_digest)
    controller_docker.remove(*images)
    proxy = _MovingProxy(auth_registry, repo, "current", second_digest)
    ref = f"{proxy.address}/{repo}:current"
    config = auth_registry.docker_config(tmp_path / "docker-config", host=proxy.address)
    inventory = _inventory(fleet, cluster, 3, insecure_registries=[proxy.address])
    job = make_job("cat /fleet-marker; echo", count=3)
    job["AppSpecification"]["ImageUri"] = ref
    env = fleet.env(DOCKER_CONFIG=str(config))
    try:
        result = fleet("run", "--inventory", str(inventory), str(fleet.write_job(job)), env=env, timeout=180)
        assert result.returncode == 0, result.stderr
        # The tag moved once the first host began pulling; every host still ran the first image.
        assert proxy.moved.is_set() and len(proxy.digest_pulls) >= 3
        assert auth_registry.manifest_digest(f"{auth_registry.address}/{repo}:current") == second_digest
        name = job["ProcessingJobName"]
        for algo in ("algo-1", "algo-2", "algo-3"):
            log = fleet.log(name, algo)
            assert first in log and second not in log, (algo, log)
        assert fleet.record(name)["AppSpecification"]["ImageDigest"] == first_digest
    finally:
        proxy.close()
        for host in cluster.hosts:
            host.docker("image", "rm", "-f", f"{proxy.address}/{repo}@{first_digest}", check=False)


# -- present beats pull: SageMaker's own images, preloaded ----------------------------------------

SAGEMAKER_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


def _preload(controller_docker, local: str, ref: str, hosts, tmp_path: Path) -> None:
    """Each of `hosts` holds the controller's image `local` by the name `ref`, as a mirror or
    a preload leaves it (`docker load`, `docker tag`): no registry involved."""
    saved = tmp_path / "preload.tar"
    controller_docker.docker("save", "-o", str(saved), local)
    for host in hosts:
        host.docker("load", "-i", str(saved))
        host.docker("tag", local, ref)


@pytest.mark.engines
def test_hosts_holding_a_sagemaker_image_by_name_run_it_with_no_ecr_token(fleet, cluster, controller_docker,
                                                                          fake_ecr, tmp_path):
    """The SDK's SKLearnProcessor names SageMaker's ECR image; the controller cannot reach ECR's
    registry, every host holds the image by that name: no token is asked, the job runs."""
    token = secrets.token_hex(8)
    local = _marked_image(controller_docker, token)
    _preload(controller_docker, local, SAGEMAKER_IMAGE, cluster.hosts, tmp_path)
    job = make_job("cat /fleet-marker; echo", count=3)
    job["AppSpecification"]["ImageUri"] = SAGEMAKER_IMAGE
    empty = tmp_path / "no-docker-config"
    empty.mkdir()
    try:
        result = fleet("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                       env=fleet.env(DOCKER_CONFIG=str(empty), **fake_ecr.env), timeout=180)
        assert result.returncode == 0, result.stderr
        name = job["ProcessingJobName"]
        for k in (1, 2, 3):
            assert fleet.log(name, f"algo-{k}") == token + "\n"
        assert fake_ecr.requests == []  # no GetAuthorizationToken: no host had to pull
        assert f"image {SAGEMAKER_IMAGE}: present on algo-1..algo-3" in result.stderr
        assert {h["Delivery"] for h in fleet.record(name)["Image"]["Hosts"].values()} == {"present"}
    finally:
        for host in cluster.hosts:
            host.docker("rmi", "-f", SAGEMAKER_IMAGE, local, check=False)
        controller_docker.remove(local)


def test_a_host_lacking_an_ecr_image_the_controller_cannot_get_a_token_for_fails_naming_both(
        fleet, cluster, controller_docker, tmp_path):
    token = secrets.token_hex(8)
    local = _marked_image(controller_docker, token)
    _preload(controller_docker, local, SAGEMAKER_IMAGE, [cluster.hosts[0], cluster.hosts[2]], tmp_path)
    job = make_job("echo never", count=3)
    job["AppSpecification"]["ImageUri"] = SAGEMAKER_IMAGE
    empty = tmp_path / "no-docker-config"
    empty.mkdir()
    closed = "http://127.0.0.1:9"  # ECR out of reach: nothing listens there
    try:
        result = fleet("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                       env=fleet.env(DOCKER_CONFIG=str(empty), AWS_ENDPOINT_URL_ECR=closed,
                                     AWS_ACCESS_KEY_ID="fleet-test", AWS_SECRET_ACCESS_KEY="fleet-test",
                                     AWS_DEFAULT_REGION="us-east-1"), timeout=180)
        assert result.returncode == 1, result.stderr
        reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
        h2 = cluster.hosts[1]
        assert reason.startswith(f"ClientError: algo-2 (h2, {h2.address}) has no image {SAGEMAKER_IMAGE} and "
                                 f"must pull it, but: ECR GetAuthorizationToken"), reason
        assert "Could not connect" in reason, reason
        assert "Traceback" not in result.stderr
        for host in cluster.hosts:  # nothing was started anywhere, nothing left
            assert host.containers(job["ProcessingJobName"]) == []
        assert cluster.leftovers(job["ProcessingJobName"]) == []
    finally:
        for host in cluster.hosts:
            host.docker("rmi", "-f", SAGEMAKER_IMAGE, local, check=False)
        controller_docker.remove(local)
