"""Attacks on a real `fleet serve` (a subprocess on a free loopback port, a temp FLEET_HOME, a
`transport: local` inventory: no host is touched), each sent over raw sockets with requests
signed by botocore's SigV4Auth: the server refuses each in AWS's shape, stays up, and answers
well-formed requests afterwards (issue 19, points 1, 2, 3, 5, 8)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fleet.inventory import parse_inventory
from fleet.plan import record_hosts
from fleet.runtime.store import JobStore, RunOptions, RunRecord
from fleet.serve.auth import Principal
from fleet.serve.logs.shapes import LOG_GROUP
from fleet.serve.scheduler import STOP_ASKED, Scheduler
from fleet.serve.server import client_of
from fleet.serve.services import Services

from support.serving import free_port, serve_argv, served_fixture, stop, wait_listening

KEY, SECRET = "AKIDFLEETATTACK00001", "fleet-attack-test-secret"
ROOT = Path(__file__).resolve().parents[2]
JSON = "application/x-amz-json-1.1"
BUSY, WAITING = "zq-busy", "zq-wait"  # a job holding the only host, and one waiting for it


def _job(name: str) -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict

    @property
    def code(self) -> str:
        return str(self.body.get("__type", ""))


class _Signer(SigV4Auth):
    """botocore's signer, signing only the headers named (an attacker's or a sloppy client's)."""

    def __init__(self, credentials: Credentials, service: str, region: str, only: tuple[str, ...] | None) -> None:
        super().__init__(credentials, service, region)
        self._only = only

    def headers_to_sign(self, request):
        headers = super().headers_to_sign(request)
        if self._only is not None:
            for name in list(headers.keys()):
                if name.lower() not in self._only:
                    del headers[name]
        return headers


class Served:
    """A `fleet serve` process, its FLEET_HOME seeded with BUSY (placed on the only host, owned
    by a lock-holding process that ignores SIGTERM, as a worker in its graceful stop) and
    WAITING (waiting for that host): nothing ever starts a container."""

    def __init__(self, tmp: Path, *, open_files: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.port = free_port()
        inventory = {"hosts": [{"address": "localhost", "name": "h1", "transport": "local"}]}
        (tmp / "hosts.yaml").write_text(json.dumps(inventory))
        (tmp / "credentials").write_text(f"[alice]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
        self.store = JobStore(self.home)
        self._seed(parse_inventory(inventory, "hosts.yaml"))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        self.env.update(FLEET_HOME=str(self.home), PYTHONPATH=str(ROOT), AWS_CONFIG_FILE="/dev/null",
                        AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
                        AWS_REGION="us-east-1")
        self.holder = subprocess.Popen(
            [sys.executable, "-c", "import signal, sys, time\n"
             "from pathlib import Path\nfrom fleet.runtime.store import JobStore\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "ownership = JobStore(Path(sys.argv[1])).claim(sys.argv[2])\n"
             "print('held', flush=True)\n"
             "time.sleep(600)\n", str(self.home), BUSY],
            env=self.env, stdout=subprocess.PIPE, start_new_session=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline() == b"held\n"
        self.log = tmp / "serve.log"
        limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                             (open_files, open_files)))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                serve_argv(tmp / "hosts.yaml", self.port, "--credentials", str(tmp / "credentials"), *extra),
                env=self.env, stdout=log, stderr=log, cwd=tmp, preexec_fn=limit)
        wait_listening(self.process, self.port, self.log.read_text)

    def _seed(self, inventory) -> None:
        api = Services(self.store, Scheduler(self.store, inventory, RunOptions()), "us-east-1", "000000000000")
        for name in (BUSY, WAITING):
            asyncio.run(api.sagemaker.create(_job(name), Principal("alice")))  # the key the tests sign with
        record = self.store.record(BUSY)
        record.save_run(RunRecord(RunId="r", Controller="c", Request=_job(BUSY), Hosts=inventory.hosts))
        record.update(Hosts=record_hosts(inventory.hosts), SecondaryStatus=None,
                      ProcessingStartTime="2026-11-29T10:00:00+00:00")

    def close(self) -> None:
        stop(self.process)
        # the `fleet stop` processes serve started poll the record: an end lets them exit
        if self.store.load(BUSY).ProcessingJobStatus not in ("Stopped", "Completed", "Failed"):
            self.store.record(BUSY).update(ProcessingJobStatus="Stopped")
        self.holder.kill()
        self.holder.wait(timeout=10)

    def status(self, name: str) -> str:
        return str(self.store.load(name).ProcessingJobStatus)

    # -- the wire ---------------------------------------------------------------------------
    def sign(self, target: str, document: dict | bytes, *, only: tuple[str, ...] | None = None,
             secret: str = SECRET) -> tuple[dict[str, str], bytes]:
        """The headers and body a client sends for `target`, signed by botocore (only the
        headers `only` names, if given)."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        service = "logs" if target.startswith("Logs_") else "sagemaker"
        request = AWSRequest(method="POST", url=f"http://127.0.0.1:{self.port}/", data=body,
                             headers={"X-Amz-Target": target, "Content-Type": JSON})
        _Signer(Credentials(KEY, secret), service, "us-east-1", only).add_auth(request)
        headers = {name: value.decode() if isinstance(value, bytes) else value
                   for name, value in request.headers.items()}
        headers["Host"] = f"127.0.0.1:{self.port}"
        return headers, body

    def send(self, head: list[tuple[str, str]], body: bytes, *, pieces: int = 1, chunked: bool = False,
             pause: float = 0.05) -> Answer:
        """One request on a fresh connection, the body in `pieces` writes (chunked if asked)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            lines = ["POST / HTTP/1.1", *(f"{k}: {v}" for k, v in head if k.lower() != "content-length"),
                     "Connection: close"]
            lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            step = -(-len(body) // pieces) if body else 0
            for at in range(0, len(body), step or 1):
                piece = body[at:at + step]
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                time.sleep(pause)
            if chunked:
                conn.sendall(b"0\r\n\r\n")
            return _read_answer(conn)

    def call(self, target: str, document: dict | bytes, **options) -> Answer:
        headers, body = self.sign(target, document)
        return self.send(list(headers.items()), body, **options)

    def alive(self) -> None:
        assert self.process.poll() is None, self.log.read_text()
        answer = self.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING})
        assert answer.status == 200, answer


def _read_answer(conn: socket.socket) -> Answer:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    try:
        document = json.loads(body) if body else {}
    except ValueError:  # not AWS's shape (aiohttp's own 500 page): kept for the assertion's message
        document = {"raw": body[:200].decode(errors="replace")}
    return Answer(int(status_line.split()[1]), headers, document)


served = served_fixture(Served)


def _no_traceback(server: Served) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log, log


# --- 1. operation confusion ---


def test_a_second_x_amz_target_before_the_signed_one_is_refused(served):
    headers, body = served.sign("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING})
    head = [("X-Amz-Target", "SageMaker.StopProcessingJob"), *headers.items()]

    answer = served.send(head, body)

    assert (answer.status, answer.code) == (403, "IncompleteSignatureException"), answer
    assert answer.headers["x-amzn-errortype"] == "IncompleteSignatureException"
    assert served.status(WAITING) == "InProgress"  # not stopped
    served.alive()


def test_an_operation_or_content_type_left_unsigned_is_refused(served):
    headers, body = served.sign("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING},
                                only=("host", "x-amz-date"))
    assert "x-amz-target" not in headers["Authorization"]
    rewritten = {**headers, "X-Amz-Target": "SageMaker.StopProcessingJob"}  # in transit

    answer = served.send(list(rewritten.items()), body)

    assert (answer.status, answer.code) == (403, "InvalidSignatureException"), answer
    assert answer.body["message"] == "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."
    assert served.status(WAITING) == "InProgress"
    headers, body = served.sign("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING},
                                only=("host", "x-amz-date", "x-amz-target"))
    answer = served.send(list(headers.items()), body)
    assert (answer.status, answer.code) == (403, "InvalidSignatureException"), answer
    assert "'Content-Type' must be a 'SignedHeader'" in answer.body["message"]
    served.alive()


# --- 3. the whole body, up to the limit ---


def test_a_signed_200_kb_body_in_several_writes_or_chunked_passes(served):
    document = {"NameContains": "x" * 200_000}
    assert served.call("SageMaker.ListProcessingJobs", document, pieces=4).status == 200
    answer = served.call("SageMaker.ListProcessingJobs", document, pieces=4, chunked=True)
    assert answer.status == 200, answer
    assert answer.body == {"ProcessingJobSummaries": []}


def test_a_body_over_2_mib_is_refused_however_it_is_sent(served):
    document = {"NameContains": "x" * (2 * 2**20)}
    answer = served.call("SageMaker.ListProcessingJobs", document, pieces=8)
    assert (answer.status, answer.code) == (413, "SerializationException"), answer
    answer = served.call("SageMaker.ListProcessingJobs", document, pieces=64, chunked=True, pause=0.001)
    assert (answer.status, answer.code) == (413, "SerializationException"), answer
    served.alive()


# --- 5. one stop in flight per job ---


def _stoppers(server: Served, name: str) -> list[int]:
    """The `fleet stop NAME` processes of this server's FLEET_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[-4:-1] == [b"fleet", b"stop", name.encode()] and f"FLEET_HOME={server.home}".encode() in environ:
            found.append(int(entry.name))
    return found


def test_stopping_a_job_n_times_runs_one_fleet_stop_and_answers_at_once(served):
    for _ in range(5):
        started = time.monotonic()
        answer = served.call("SageMaker.StopProcessingJob", {"ProcessingJobName": BUSY})
        assert answer.status == 200, answer
        assert time.monotonic() - started < 5
    assert (served.home / "jobs" / BUSY / STOP_ASKED).exists()
    time.sleep(1)  # every spawned `fleet stop` is up (its worker ignores SIGTERM: each polls on)
    assert len(_stoppers(served, BUSY)) == 1
    described = served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": BUSY})
    assert described.body["ProcessingJobStatus"] == "Stopping"


# --- 8. malformed requests: 400/403 in AWS's shape, no traceback ---


def test_malformed_requests_are_400_or_403_in_awss_shape_without_a_traceback(served):
    unauthenticated = [("Host", f"127.0.0.1:{served.port}"), ("X-Amz-Target", "SageMaker.ListProcessingJobs"),
                       ("Content-Type", JSON), ("Date", "Fri, 31 Dec 9999 23:59:59 -0100"),
                       ("Authorization", f"AWS4-HMAC-SHA256 Credential={KEY}/99991231/us-east-1/sagemaker/"
                                         f"aws4_request, SignedHeaders=content-type;date;host;x-amz-target, "
                                         f"Signature={'0' * 64}")]
    answer = served.send(unauthenticated, b"{}")
    assert (answer.status, answer.code) == (403, "IncompleteSignatureException"), answer

    stream = f"{BUSY}/algo-1-1"
    for target, document in [
        ("SageMaker.ListProcessingJobs", {"CreationTimeAfter": "yesterday"}),
        ("SageMaker.ListProcessingJobs", {"LastModifiedTimeBefore": [1]}),
        ("SageMaker.ListProcessingJobs", {"MaxResults": "10"}),
        ("SageMaker.ListProcessingJobs", {"NameContains": 7}),
        ("Logs_20140328.GetLogEvents", {"logGroupName": LOG_GROUP, "logStreamName": stream, "limit": "x"}),
        ("Logs_20140328.GetLogEvents", {"logGroupName": LOG_GROUP, "logStreamName": stream, "startTime": "x"}),
        ("Logs_20140328.GetLogEvents", {"logGroupName": LOG_GROUP, "logStreamName": 5}),
        ("Logs_20140328.DescribeLogStreams", {"logGroupName": LOG_GROUP, "logStreamNamePrefix": BUSY,
                                              "limit": "x"}),
    ]:
        answer = served.call(target, document)
        assert (answer.status, answer.code) == (400, "ValidationException"), (target, document, answer)
        assert answer.body["message"]
    answer = served.call("SageMaker.ListProcessingJobs", b"[" * 100_000 + b"]" * 100_000)
    assert (answer.status, answer.code) == (400, "SerializationException"), answer
    served.alive()
    _no_traceback(served)


# --- 2. what clients may hold ---


def test_an_idle_or_half_sent_connection_is_closed_in_seconds(served):
    idle = socket.create_connection(("127.0.0.1", served.port))
    half = socket.create_connection(("127.0.0.1", served.port))
    half.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Ta")
    try:
        for conn in (idle, half):
            conn.settimeout(20)
            started = time.monotonic()
            assert conn.recv(1) == b""  # closed by the server
            assert time.monotonic() - started < 15
    finally:
        idle.close()
        half.close()
    served.alive()


def test_a_flood_of_idle_connections_gets_503_and_serve_stays_up(tmp_path):
    """With 256 descriptors, 400 idle connections: beyond the cap each is answered 503
    ServiceUnavailable; nothing (the scheduler's reads included) ends the server, and it
    answers once they are gone."""
    server = Served(tmp_path, open_files=256)
    flood: list[socket.socket] = []
    try:
        for _ in range(400):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.setblocking(False)
            flood.append(conn)
        refused, deadline = 0, time.monotonic() + 3  # the scheduler's rounds run meanwhile
        while time.monotonic() < deadline:
            readable, _, _ = select.select(flood, [], [], 0.2)
            for conn in readable:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 503"):
                    assert b'"__type": "ServiceUnavailable"' in data
                    refused += 1
                flood.remove(conn)
                conn.close()
        assert server.process.poll() is None, server.log.read_text()
        assert refused > 0
        for conn in flood:
            conn.close()
        flood.clear()
        # The server learns of the closes as it gets to them (under load, a moment later):
        # until then it may still answer 503, never anything else, and then it answers.
        deadline = time.monotonic() + 15
        answer = server.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING})
        while answer.status == 503 and time.monotonic() < deadline:
            assert answer.body["__type"] == "ServiceUnavailable", answer
            time.sleep(0.2)
            answer = server.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING})
        server.alive()
    finally:
        for conn in flood:
            conn.close()
        server.close()


def _connect_from(server: Served, source: str) -> socket.socket:
    """A connection to the server from loopback address `source` (another client to it)."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))


def test_one_client_beyond_its_share_of_connections_gets_503_while_another_is_served(tmp_path):
    """--max-connections 8, so one client may hold 2 (a quarter): 127.0.0.2 opens all 8; its
    first 2 are served, the other 6 are answered 503 ServiceUnavailable and closed, and
    127.0.0.1 is still answered 200 meanwhile (without the per-client cap it got 503: one
    address held the whole server)."""
    server = Served(tmp_path, extra=("--max-connections", "8"))
    greedy = [_connect_from(server, "127.0.0.2") for _ in range(8)]
    try:
        refused: list[socket.socket] = []
        deadline = time.monotonic() + 3  # each 503 is written at once; the held ones stay silent
        while time.monotonic() < deadline and len(refused) < 6:
            readable, _, _ = select.select([c for c in greedy if c not in refused], [], [], 0.2)
            for conn in readable:
                answer = _read_answer(conn)
                assert (answer.status, answer.code) == (503, "ServiceUnavailable"), answer
                assert "127.0.0.2" in answer.body["message"]
                assert answer.headers["connection"] == "close"
                refused.append(conn)
        held = [conn for conn in greedy if conn not in refused]
        assert len(refused) == 6 and len(held) == 2, (len(refused), len(held))

        for target, document in [("SageMaker.DescribeProcessingJob", {"ProcessingJobName": WAITING}),
                                 ("SageMaker.ListProcessingJobs", {})]:
            answer = server.call(target, document)  # from 127.0.0.1
            assert answer.status == 200, answer
        headers, body = server.sign("SageMaker.ListProcessingJobs", {})
        request = ("POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                   + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        held[0].sendall(request)
        answer = _read_answer(held[0])  # a held connection of the capped client is served
        assert answer.status == 200, answer

        for conn in greedy:
            conn.close()
        # once its connections are closed (and the server has seen it), the client is served again
        deadline = time.monotonic() + 15
        while True:
            with _connect_from(server, "127.0.0.2") as conn:
                conn.sendall(request)
                answer = _read_answer(conn)
            if answer.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status == 200, answer
        server.alive()
        _no_traceback(server)
    finally:
        for conn in greedy:
            conn.close()
        server.close()


def test_a_client_is_one_ipv4_address_or_one_ipv6_64():
    """An IPv6 client has a /64 of addresses to spread its connections over: they count as one."""
    assert client_of(("127.0.0.2", 5000)) == "127.0.0.2"
    assert client_of(("2001:db8::1", 5000, 0, 0)) == client_of(("2001:db8::ffff:2", 5001, 0, 0)) == "2001:db8::/64"
    assert client_of(("2001:db8:0:1::1", 5000, 0, 0)) == "2001:db8:0:1::/64"
    assert client_of(("::ffff:10.0.0.1", 5000, 0, 0)) == "10.0.0.1"
    assert client_of(("fe80::1%eth0", 5000, 0, 2)) == "fe80::/64"


# --- 6. a bounded queue ---


def test_creates_beyond_max_queued_are_refused_with_resource_limit_exceeded_and_recorded_nowhere(tmp_path):
    """--max-queued 3 with WAITING queued already: two more are queued, the next is refused in
    AWS's shape, and nothing is recorded for it; once a waiting job ends, a create passes."""
    server = Served(tmp_path, extra=("--max-queued", "3"))
    try:
        for name in ("zq-q1", "zq-q2"):
            answer = server.call("SageMaker.CreateProcessingJob", _job(name))
            assert answer.status == 200, answer
        answer = server.call("SageMaker.CreateProcessingJob", _job("zq-q3"))
        assert (answer.status, answer.code) == (400, "ResourceLimitExceeded"), answer
        assert answer.headers["x-amzn-errortype"] == "ResourceLimitExceeded"
        assert "3 jobs" in answer.body["message"]
        assert not (server.home / "jobs" / "zq-q3").exists()
        assert server.call("SageMaker.StopProcessingJob", {"ProcessingJobName": "zq-q1"}).status == 200
        answer = server.call("SageMaker.CreateProcessingJob", _job("zq-q3"))
        assert answer.status == 200, answer
        server.alive()
        _no_traceback(server)
    finally:
        server.close()
