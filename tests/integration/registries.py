"""Registries for the image tests: a registry that wants a password, a fake ECR, and the
controller's own Docker engine to build and push images with.

Pytest fixtures, which tests/integration/conftest.py imports (as it does s3server's):

  controller_docker  session: the controller's dockerd that scripts/local-cluster runs in the
                     root network namespace (a `ControllerDocker`): `host` (unix://..., also
                     FLEET_CONTROLLER_DOCKER_HOST in hosts.env), `env` (DOCKER_HOST for a
                     subprocess), `docker(*args)`, `build_image(tag, files, base=...)`
                     (one small extra top layer, no network), `make_big_base(tag, size_mb)`
                     (one layer of incompressible random data plus busybox), `image_id`,
                     `remove`.
  auth_registry      session: Debian's docker-registry 2.8 on 10.251.7.1:80, plain HTTP,
                     htpasswd (bcrypt, made with the `bcrypt` PyPI package) users `fleetuser`
                     and `AWS` with random passwords (an `AuthRegistry`). The test daemons
                     trust 10.251.7.0/24 as insecure, and the fake ECR host name
                     123456789012.dkr.ecr.fleet-test-1.amazonaws.com resolves to 10.251.7.1
                     (local-cluster's /etc/hosts line), so `10.251.7.1/REPO:TAG` and
                     `ECR_HOST/REPO:TAG` are the same image here, each pulled with its own user.
  fake_ecr           function: ECR's GetAuthorizationToken (AWS JSON 1.1) on 127.0.0.1:PORT
                     (a `FakeEcr`): `endpoint` (for AWS_ENDPOINT_URL_ECR), `env`, `requests`,
                     and `error` / `expired` to make it refuse or hand out a stale token.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REGISTRY_HOST = "10.251.7.1"  # the bridge address; the registry listens on port 80 there
REGISTRY_PORT = 80
ECR_ACCOUNT = "123456789012"
ECR_REGION = "fleet-test-1"  # made up: never a real region
ECR_HOST = f"{ECR_ACCOUNT}.dkr.ecr.{ECR_REGION}.amazonaws.com"  # resolves to 10.251.7.1 (/etc/hosts)
ECR_USER = "AWS"
USER = "fleetuser"
TEST_IMAGE = "fleet-test:busybox"
ENTRYPOINT = 'ENTRYPOINT ["/bin/sh","-c","echo default entrypoint \\"$@\\"","--"]'  # as local-cluster's
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (MANIFEST_V2, "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.index.v1+json")
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
STOP_TIMEOUT = 10.0


# ------------------------------------------------------------------ the controller's dockerd

class ControllerDocker:
    """The controller's own dockerd (root network namespace; never the system's one)."""

    def __init__(self, host: str, image_tar: Path | None = None) -> None:
        self.host = host  # unix:///.../controller/docker.sock
        self.image_tar = image_tar  # local-cluster's busybox rootfs tarball (for make_big_base)

    @property
    def env(self) -> dict[str, str]:
        """os.environ with DOCKER_HOST pointing at this dockerd (for a subprocess)."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, input: bytes | None = None, check: bool = True,
               timeout: float = 300, config: str | Path | None = None) -> str:
        cmd = ["docker", "-H", self.host, *(["--config", str(config)] if config else []), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on the controller: "
                                 f"{result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def image_id(self, image: str) -> str:
        return self.docker("image", "inspect", "-f", "{{.Id}}", image).strip()

    def remove(self, *images: str) -> None:
        if images:
            self.docker("rmi", "-f", *images, check=False)

    def build_image(self, tag: str, files: dict[str, bytes], base: str = TEST_IMAGE,
                    changes: tuple[str, ...] = ()) -> str:
        """`base` plus one small top layer holding `files` ({"/path/in/image": content});
        no network, no build context: create a container of `base`, copy a tarball into it,
        commit it as `tag` (Dockerfile-like `changes`, e.g. 'ENV A=1', go to `docker commit -c`).
        Returns the image id. Two calls with different files give images that differ only
        in their top layer."""
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            dirs: set[str] = set()
            for path in sorted(files):
                parts = path.strip("/").split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                        tar.addfile(info)
                info = tarfile.TarInfo("/".join(parts))
                info.size, info.mode, info.mtime = len(files[path]), 0o644, now
                tar.addfile(info, io.BytesIO(files[path]))
        container = self.docker("create", "--network", "none", base, "true").strip()
        try:
            self.docker("cp", "-", f"{container}:/", input=buf.getvalue())
            args = [a for c in changes for a in ("-c", c)]
            self.docker("commit", *args, container, tag)
        finally:
            self.docker("rm", "-f", container, check=False)
        return self.image_id(tag)

    def make_big_base(self, tag: str, size_mb: int = 300, path: str = "/big/random.bin") -> str:
        """A one-layer image: the busybox test image's files plus `size_mb` MiB of random
        (incompressible) bytes at `path`, imported (`docker import`, streamed: never all in
        memory) with the test image's ENTRYPOINT. Returns the image id."""
        if self.image_tar is None or not self.image_tar.exists():
            raise AssertionError(f"no busybox rootfs tarball at {self.image_tar}")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(["docker", "-H", self.host, "import", "-c", ENTRYPOINT, "-", tag],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            try:
                with tarfile.open(self.image_tar) as src, tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                    for member in src:
                        tar.addfile(member, src.extractfile(member) if member.isfile() else None)
                    parts = path.strip("/").split("/")
                    for i in range(1, len(parts)):
                        info = tarfile.TarInfo("./" + "/".join(parts[:i]))
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    info = tarfile.TarInfo("./" + "/".join(parts))
                    info.size, info.mode, info.mtime = size_mb << 20, 0o644, time.time()
                    tar.addfile(info, _RandomReader(info.size))
                proc.stdin.close()
                proc.wait(timeout=600)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.returncode != 0:
                err.seek(0)
                raise AssertionError(f"docker import {tag}: {err.read().decode(errors='replace')}")
        return self.image_id(tag)


class _RandomReader(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


# ------------------------------------------------------------------ a registry process

def spawn_registry(state: Path, name: str, config: dict[str, Any], log: Path) -> subprocess.Popen:
    """`docker-registry serve` of `config`, recorded under the bed's state dir: its config
    in STATE/registries/NAME.yml (so its command line names the state dir) and its pid in
    NAME.pid. A test run killed before its teardown leaves the registry listening on the
    bridge address, where the next run's would answer; scripts/local-cluster up stops it by
    that pid (never by name: another user's docker-registry is not ours)."""
    folder = state / "registries"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / f"{name}.yml").write_text(yaml.safe_dump(config))
    with open(log, "ab") as err:
        process = subprocess.Popen(["docker-registry", "serve", str(folder / f"{name}.yml")],
                                   stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    (folder / f"{name}.pid").write_text(f"{process.pid}\n")
    return process


def forget_registry(state: Path, name: str) -> None:
    """The registry NAME has stopped: its pid is no longer one to stop."""
    (state / "registries" / f"{name}.pid").unlink(missing_ok=True)


# ------------------------------------------------------------------ the password registry

def _split_ref(ref: str) -> tuple[str, str]:
    """'10.251.7.1/fleet/x:1', 'ECR_HOST/fleet/x@sha256:..' or 'fleet/x:1' -> (repo, tag or digest)."""
    for host in (f"{REGISTRY_HOST}/", f"{ECR_HOST}/"):
        ref = ref.removeprefix(host)
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


@dataclass
class AuthRegistry:
    """docker-registry with htpasswd users (see the module's docstring)."""

    root: Path
    controller: ControllerDocker
    users: dict[str, str]  # user -> password: USER ("fleetuser") and ECR_USER ("AWS")
    state: Path  # the bed's state dir, where the registry's pid is recorded (spawn_registry)
    address: str = REGISTRY_HOST  # the reference host of private images: 10.251.7.1/REPO:TAG
    ecr_host: str = ECR_HOST  # the fake ECR registry host (same registry, user AWS)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def user(self) -> str:
        return USER

    @property
    def password(self) -> str:
        return self.users[USER]

    @property
    def aws_password(self) -> str:
        return self.users[ECR_USER]

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _user_for(self, host: str) -> str:
        return ECR_USER if host == self.ecr_host else USER

    def auth(self, user: str = USER, password: str | None = None) -> str:
        """base64(user:password): config.json's `auth`, HTTP Basic's credentials."""
        pw = self.users[user] if password is None else password
        return base64.b64encode(f"{user}:{pw}".encode()).decode()

    def docker_config(self, dir: str | Path, user: str = USER, host: str | None = None,
                      password: str | None = None) -> Path:
        """Write DIR/config.json, a Docker client config (`docker --config DIR`) holding
        `user`'s credentials for `host` (default: the ECR host for AWS, else 10.251.7.1);
        `password` overrides (a wrong one, say). Returns DIR."""
        path = Path(dir)
        path.mkdir(parents=True, exist_ok=True)
        host = host or (self.ecr_host if user == ECR_USER else self.address)
        (path / "config.json").write_text(json.dumps({"auths": {host: {"auth": self.auth(user, password)}}}))
        return path

    def push(self, image: str, ref: str, user: str | None = None) -> str:
        """Tag `image` (on the controller's dockerd) as `ref` ('10.251.7.1/REPO:TAG' or
        'ECR_HOST/REPO:TAG'), push it with credentials in a temporary --config dir (deleted
        after; user by default: AWS for the ECR host, else fleetuser), untag. Returns the
        manifest digest."""
        host = ref.split("/", 1)[0]
        with tempfile.TemporaryDirectory(prefix="fleet-push-") as tmp:
            self.docker_config(tmp, user or self._user_for(host), host=host)
            self.controller.docker("tag", image, ref)
            try:
                self.controller.docker("push", ref, config=tmp, timeout=600)
            finally:
                self.controller.docker("rmi", ref, check=False)
        return self.manifest_digest(ref)

    def _request(self, method: str, path: str, headers: dict[str, str] | None = None,
                 data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Authorization": f"Basic {self.auth()}", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"registry {method} {path}: HTTP {e.code} {e.read()[:500]!r}") from None

    def manifest(self, ref: str) -> tuple[bytes, str, str]:
        """(manifest bytes, media type, digest) of `ref`, schema 2 or OCI preferred."""
        repo, tag = _split_ref(ref)
        _, headers, body = self._request("GET", f"/v2/{repo}/manifests/{tag}",
                                         {"Accept": ", ".join(MANIFEST_TYPES)})
        return body, headers["Content-Type"], headers["Docker-Content-Digest"]

    def manifest_digest(self, ref: str) -> str:
        """The Docker-Content-Digest of `ref`'s schema-2 manifest (HEAD /v2/REPO/manifests/TAG)."""
        repo, tag = _split_ref(ref)
        _, headers, _ = self._request("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_V2})
        return headers["Docker-Content-Digest"]

    def move_tag(self, repo: str, tag: str, to: str) -> str:
        """Point REPO:TAG at another manifest: `to` is a digest ('sha256:...', in REPO) or a
        reference ('[HOST/]OTHER:TAG' or '...@sha256:..', any repository: its blobs are mounted
        into REPO first). GET that manifest, PUT it as REPO:TAG. Returns its digest."""
        if to.startswith("sha256:"):
            to = f"{repo}@{to}"
        src_repo, _ = _split_ref(to)
        body, media_type, digest = self.manifest(to)
        if src_repo != repo:
            doc = json.loads(body)
            for blob in [doc.get("config"), *doc.get("layers", [])]:
                if blob:
                    status, _, _ = self._request(
                        "POST", f"/v2/{repo}/blobs/uploads/?mount={blob['digest']}&from={src_repo}", data=b"")
                    if status != 201:
                        raise AssertionError(f"could not mount {blob['digest']} from {src_repo} into {repo}")
        self._request("PUT", f"/v2/{repo}/manifests/{tag}", {"Content-Type": media_type}, body)
        return digest

    def tags(self, repo: str) -> list[str]:
        _, _, body = self._request("GET", f"/v2/{repo}/tags/list")
        return json.loads(body).get("tags") or []

    # -------------------------------------------------------------- process

    def start(self) -> None:
        import bcrypt  # the test extras' (pyproject.toml): registry 2.8 takes bcrypt hashes only

        (self.root / "htpasswd").write_text("".join(
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
            for user, pw in self.users.items()))
        config = {
            "version": 0.1, "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"{self.address}:{REGISTRY_PORT}", "secret": secrets.token_hex(16)},
            "auth": {"htpasswd": {"realm": "fleet-test", "path": str(self.root / "htpasswd")}}}
        try:  # a registry another run left (a pytest killed before its teardown) would answer in its place
            socket.create_connection((self.address, REGISTRY_PORT), timeout=0.2).close()
        except OSError:
            pass
        else:
            raise AssertionError(f"something listens on {self.address}:{REGISTRY_PORT} already (a registry an "
                                 "earlier, killed test run left? scripts/local-cluster up stops those it "
                                 "recorded): stop it by its pid (ss -ltnp)")
        self.process = spawn_registry(self.state, "auth", config, self.root / "registry.log")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.address, REGISTRY_PORT), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("docker-registry did not start: "
                                         + (self.root / "registry.log").read_text()[-2000:]) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        forget_registry(self.state, "auth")
        self.process = None


# ------------------------------------------------------------------ fake ECR

@dataclass
class EcrRequest:
    target: str | None
    registry_ids: list[str] | None  # the body's registryIds (None: not sent)
    signed: bool  # an `Authorization: AWS4-HMAC-SHA256 ...` header was there
    headers: dict[str, str]
    body: Any


class FakeEcr:
    """GetAuthorizationToken of ECR, AWS JSON 1.1, on 127.0.0.1:PORT, in a thread.

    The token is base64("AWS:" + the `password`); `expires_in` seconds (12 h) from now, or
    already expired (`expired = True`, an hour ago); `error = ("AccessDeniedException",
    "message")` answers that error instead, HTTP `error_status` (400). `requests` records
    every request (an `EcrRequest`)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.requests: list[EcrRequest] = []
        self.error: tuple[str, str] | None = None
        self.error_status = 400
        self.expired = False
        self.expires_in = 12 * 3600.0
        self.proxy_endpoint = f"http://{ECR_HOST}"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ecr", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token(self) -> str:
        return base64.b64encode(f"{ECR_USER}:{self.password}".encode()).decode()

    @property
    def env(self) -> dict[str, str]:
        """What a boto3/aiobotocore ECR client (and fleet) needs to use this fake."""
        return {"AWS_ENDPOINT_URL_ECR": self.endpoint, "AWS_ACCESS_KEY_ID": "fleet-test-ecr",
                "AWS_SECRET_ACCESS_KEY": "fleet-test-ecr-secret", "AWS_DEFAULT_REGION": "us-east-1"}

    def answer(self, target: str | None, body: Any) -> tuple[int, dict]:
        if self.error is not None:
            return self.error_status, {"__type": self.error[0], "message": self.error[1]}
        if target != ECR_TARGET:
            return 400, {"__type": "UnknownOperationException", "message": f"unknown target {target}"}
        expires = time.time() + (-3600.0 if self.expired else self.expires_in)
        ids = (body or {}).get("registryIds") or [ECR_ACCOUNT]
        return 200, {"authorizationData": [{
            "authorizationToken": self.token, "expiresAt": expires,
            "proxyEndpoint": self.proxy_endpoint.replace(ECR_ACCOUNT, str(i))} for i in ids]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = raw.decode(errors="replace")
                target = self.headers.get("X-Amz-Target")
                fake.requests.append(EcrRequest(
                    target, body.get("registryIds") if isinstance(body, dict) else None,
                    (self.headers.get("Authorization") or "").startswith("AWS4-HMAC-SHA256"),
                    dict(self.headers), body))
                status, doc = fake.answer(target, body if isinstance(body, dict) else None)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", secrets.token_hex(8))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def controller_docker(cluster) -> ControllerDocker:
    """The controller's dockerd of the test bed (has the busybox test image)."""
    return ControllerDocker(cluster.controller_docker_host, cluster.state / "image.tar")


@pytest.fixture(scope="session")
def auth_registry(cluster, controller_docker, tmp_path_factory) -> Iterator[AuthRegistry]:
    """docker-registry with htpasswd auth on 10.251.7.1:80 (and as the fake ECR host)."""
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry is not installed (run scripts/setup)")
    registry = AuthRegistry(tmp_path_factory.mktemp("auth-registry"), controller_docker,
                            {USER: secrets.token_urlsafe(18), ECR_USER: secrets.token_urlsafe(18)}, cluster.state)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def fake_ecr(auth_registry) -> Iterator[FakeEcr]:
    """A fresh fake ECR endpoint whose tokens open auth_registry as user AWS."""
    server = FakeEcr(auth_registry.aws_password)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
