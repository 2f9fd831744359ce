"""The engine API client (fleet.engine) against a real server on a unix socket of this
machine, which answers with bytes each test chooses, cut where the test chooses: chunked
bodies, multiplexed log frames split across reads, oversize and hostile answers. What a
test asserts is what the client handed over (the container's bytes, exactly) or the error
it raised (naming the host, keeping the engine's words), and that a hostile answer cost
no memory beyond its bound."""

from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fleet.engine import Conflict, Engine, EngineFailed, EngineRefused, NoSuchObject
from fleet.engine.client import negotiate
from fleet.engine.frames import FrameError, LogFrames
from fleet.errors import MACHINERY_EXIT, ClientError, HostError
from fleet.inventory import PRIVILEGE_PROGRAMS, LocalHost, SshHost
from fleet.transport.local import LocalTransport

LABEL = "algo-1 (h1)"
VERSION = {"Version": "28.5.1", "ApiVersion": "1.51", "MinAPIVersion": "1.24", "Components": [{"Name": "Engine"}]}

Handler = Callable[[str, str, bytes, asyncio.StreamWriter], Awaitable[None]]


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">B3xI", stream, len(payload)) + payload


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def head(status: int = 200, *, length: int | None = None, extra: str = "") -> bytes:
    reason = {200: "OK", 404: "Not Found", 409: "Conflict", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_answer(doc: object, status: int = 200) -> bytes:
    body = json.dumps(doc).encode()
    return head(status, length=len(body)) + body


class FakeEngine:
    """A unix-socket server speaking just enough HTTP/1.1: GET /version answers VERSION
    (or `version`), every other request goes to `handler`. It counts connections and
    keeps the request lines it saw."""

    def __init__(self, path: Path, handler: Handler, version: dict | None = None) -> None:
        self.path = path
        self.handler = handler
        self.version = version or VERSION
        self.connections = 0
        self.requests: list[str] = []
        self.tasks: list[asyncio.Task] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.tasks.append(asyncio.current_task())
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = request.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                length = next((int(v) for k, _, v in (ln.partition(": ") for ln in lines[1:])
                               if k.lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                self.requests.append(f"{method} {target}")
                if target == "/_ping":
                    podman = any("Podman" in c["Name"] for c in self.version.get("Components", []))
                    extra = ("Libpod-API-Version: 5.8.0\r\nServer: Libpod/5.8.0 (linux)" if podman
                             else f"Server: Docker/{self.version['Version']} (linux)")
                    writer.write(head(200, length=2, extra=f"API-Version: {self.version['ApiVersion']}\r\n{extra}")
                                 + b"OK")
                elif target == "/version":
                    writer.write(json_answer(self.version))
                else:
                    await self.handler(method, target, body, writer)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # the client went; the test ended
            pass
        finally:
            writer.close()


@pytest.fixture
async def serving():
    """Serve a FakeEngine on its socket (returned); after the test its connections' tasks
    are cancelled and its server closed."""
    fakes: list[FakeEngine] = []
    servers: list[asyncio.Server] = []

    async def serve(fake: FakeEngine) -> FakeEngine:
        fakes.append(fake)
        servers.append(await asyncio.start_unix_server(fake.serve, path=str(fake.path)))
        return fake
    yield serve
    tasks = [task for fake in fakes for task in fake.tasks]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def engine_at(tmp_path, serving):
    engines: list[Engine] = []

    async def make(handler: Handler, *, version: dict | None = None, timeout: float = 10) -> tuple[Engine, FakeEngine]:
        fake = await serving(FakeEngine(tmp_path / f"engine{len(engines)}.sock", handler, version))
        transport = LocalTransport(LocalHost(address="localhost"), LABEL)
        engine = await Engine.open(lambda: transport.open_socket(str(fake.path)), LABEL, timeout=timeout,
                                   path=f"socket {fake.path}")
        engines.append(engine)
        return engine, fake
    yield make
    for engine in engines:
        engine.close()


# -- version negotiation ------------------------------------------------------------------------

def test_negotiation_speaks_the_older_of_the_two_never_below_the_servers_minimum():
    assert negotiate({"ApiVersion": "1.41", "MinAPIVersion": "1.12"}) == (1, 41)  # Docker 20.10
    assert negotiate({"ApiVersion": "1.51", "MinAPIVersion": "1.24"}) == (1, 47)  # Docker 28: ours
    assert negotiate({"ApiVersion": "1.52", "MinAPIVersion": "1.44"}) == (1, 47)  # Docker 29
    assert negotiate({"ApiVersion": "1.60", "MinAPIVersion": "1.50"}) == (1, 50)  # refuses ours
    assert negotiate({"ApiVersion": "1.41"}) == (1, 41)  # Podman without a minimum
    for bad in ({"ApiVersion": "1.20", "MinAPIVersion": "1.12"}, {"ApiVersion": "x"}, {}):
        with pytest.raises(ValueError):
            negotiate(bad)


async def test_calls_go_to_the_negotiated_version_on_one_kept_connection(engine_at):
    async def handler(method, target, body, writer):
        writer.write(json_answer({"Id": "sha256:" + "a" * 64, "RootFS": {"Layers": []}}))
    engine, fake = await engine_at(handler, version={**VERSION, "ApiVersion": "1.60", "MinAPIVersion": "1.50"})
    for _ in range(3):
        assert (await engine.image_inspect("busybox:1"))["Id"] == "sha256:" + "a" * 64
    # A server newer than fleet: its /version says the oldest it speaks
    assert fake.requests == ["GET /_ping", "GET /version"] + ["GET /v1.50/images/busybox:1/json"] * 3
    assert fake.connections == 1  # keep-alive: one connection for the five calls
    assert engine.server.version == "28.5.1" and not engine.server.podman


async def test_a_server_no_newer_than_fleet_is_asked_only_its_ping(engine_at):
    """Podman's /version runs conmon and the OCI runtime for their versions: not asked."""
    async def handler(method, target, body, writer):
        writer.write(json_answer({"Id": "x"}))
    podman = {"Version": "5.8.0", "ApiVersion": "1.41", "Components": [{"Name": "Podman Engine"}]}
    engine, fake = await engine_at(handler, version=podman)
    await engine.image_inspect("x")
    assert fake.requests == ["GET /_ping", "GET /v1.41/images/x/json"]
    assert engine.server.podman and engine.server.version == "5.8.0"


# -- errors -------------------------------------------------------------------------------------

async def test_engine_errors_keep_its_words_and_name_the_host(engine_at):
    async def handler(method, target, body, writer):
        if "/images/" in target:
            writer.write(json_answer({"message": "No such image: nope:1"}, 404))
        elif "/containers/c9/" in target:
            writer.write(json_answer({"message": "No such container: c9"}, 404))
        elif target.endswith("/containers/create?name=c1"):
            writer.write(json_answer({"message": 'Conflict. The container name "/c1" is already in use'}, 409))
        elif "/start" in target:
            writer.write(json_answer({"message": "invalid mount config"}, 400))
        else:
            writer.write(json_answer({"message": "failed to create shim task: OCI runtime create failed"}, 500))
    engine, _ = await engine_at(handler)
    assert await engine.image_inspect("nope:1") is None
    with pytest.raises(NoSuchObject, match="No such container: c9"):
        await engine.inspect("c9")
    with pytest.raises(Conflict) as conflict:
        await engine.create("c1", {"Image": "x"})
    assert conflict.value.message.startswith(f"{LABEL}: creating the container c1: Conflict.")
    assert isinstance(conflict.value, ClientError) and conflict.value.status == 409
    with pytest.raises(EngineRefused, match="docker refused: invalid mount config"):
        await engine.start("c1")
    with pytest.raises(EngineFailed) as failed:
        await engine.remove("c1")
    assert isinstance(failed.value, HostError) and failed.value.exit_code == MACHINERY_EXIT
    assert "OCI runtime create failed" in failed.value.message and failed.value.host == LABEL


async def test_an_engine_that_does_not_answer_is_given_up_after_the_timeout(engine_at):
    async def handler(method, target, body, writer):
        await asyncio.sleep(3600)
    engine, _ = await engine_at(handler, timeout=0.5)
    with pytest.raises(EngineFailed, match=r"docker did not answer within 0.5 s \(inspecting the container c1\)"):
        await engine.inspect("c1")


async def test_an_answer_cut_short_is_an_error_not_a_short_answer(engine_at):
    async def handler(method, target, body, writer):
        writer.write(head(200, length=100) + b'{"Id": "x"')
        await writer.drain()
        writer.close()
    engine, _ = await engine_at(handler)
    with pytest.raises(EngineFailed, match="broken"):
        await engine.inspect("c1")



@pytest.mark.parametrize("answer", [["c1"], "c1", 7, [[1, 2, 3]]])
async def test_an_answer_of_another_shape_than_the_calls_object_is_the_engines_error(engine_at, answer):
    """A host's engine (less trusted than the controller) answering an inspect, a create, a
    wait or its info with JSON that is no object: a broken answer naming the call, not a
    TypeError or AttributeError that ends the whole job as fleet's own failure."""
    async def handler(method, target, body, writer):
        writer.write(json_answer(answer))
    engine, _ = await engine_at(handler)
    with pytest.raises(EngineFailed, match=r"not a JSON object \(inspecting the container c1\)"):
        await engine.inspect("c1")
    with pytest.raises(EngineFailed, match=r"not a JSON object \(creating the container c1\)"):
        await engine.create("c1", {"Image": "busybox"})
    with pytest.raises(EngineFailed, match=r"not a JSON object \(waiting for the container c1\)"):
        await engine.wait("c1", timeout=5)
    with pytest.raises(EngineFailed, match=r"not a JSON object \(asking its info\)"):
        await engine.info()


# -- bounds -------------------------------------------------------------------------------------

async def test_an_oversize_answer_is_refused_without_being_read(engine_at):
    sent = {"bytes": 0}

    async def declared(method, target, body, writer):
        writer.write(head(200, length=1 << 40))  # a terabyte declared
    engine, _ = await engine_at(declared)
    with pytest.raises(EngineFailed, match="more than the 4194304 bytes allowed"):
        await engine.inspect("c1")

    async def endless(method, target, body, writer):  # chunked, no length: it never ends
        writer.write(head(200))
        piece = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
        while True:
            writer.write(piece)
            sent["bytes"] += 65536
            await writer.drain()
    engine, _ = await engine_at(endless)
    tracemalloc.start()
    try:
        with pytest.raises(EngineFailed, match="more than the 4194304 bytes allowed"):
            await engine.inspect("c1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


async def test_huge_headers_are_refused(engine_at):
    async def handler(method, target, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 200_000 + b"\r\n\r\n")
    engine, _ = await engine_at(handler)
    with pytest.raises(EngineFailed, match="not HTTP/1.1"):
        await engine.inspect("c1")


# -- logs ---------------------------------------------------------------------------------------

LOG = [(1, b"hello\n"), (2, b"oops: \xff\xfe not utf-8\n"), (1, b""), (1, b"last line, no newline")]


def _log_bytes() -> bytes:
    return b"".join(frame(stream, payload) for stream, payload in LOG)


def _container(tty: bool) -> dict:
    return {"Id": "c1", "Config": {"Tty": tty}, "State": {"Status": "exited"}}


async def _logs_server(engine_at, stream: bytes, tty: bool = False, cut: int = 1):
    """A server answering the log with `stream` chunked, each chunk `cut` bytes, each
    written (and drained) alone: frames arrive split at every offset."""
    async def handler(method, target, body, writer):
        if target.endswith("/json"):
            writer.write(json_answer(_container(tty)))
            return
        writer.write(head(200, extra="Content-Type: application/vnd.docker.multiplexed-stream"))
        for at in range(0, len(stream), cut):
            writer.write(chunked(stream[at:at + cut])[:-5])  # a chunk, not the last
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    return await engine_at(handler)


async def _read(engine: Engine, **kwargs) -> list[tuple[int, bytes]]:
    return [piece async for piece in engine.logs("c1", follow=True, **kwargs)]


def _joined(pieces: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    for stream, piece in pieces:
        out[stream] += piece
    return out


@pytest.mark.parametrize("cut", [1, 3, 7, 8, 9, 4096])
async def test_multiplexed_frames_split_anywhere_give_the_containers_bytes_exactly(engine_at, cut):
    engine, _ = await _logs_server(engine_at, _log_bytes(), cut=cut)
    out = _joined(await _read(engine))
    assert out[1] == b"hello\nlast line, no newline"
    assert out[2] == b"oops: \xff\xfe not utf-8\n"


async def test_a_tty_containers_log_is_its_raw_bytes(engine_at):
    raw = b"\x01\x00\x00\x00\x00\x00\x00\x05raw\r\nbytes"  # looks like a header: is not one
    engine, _ = await _logs_server(engine_at, raw, tty=True, cut=5)
    assert _joined(await _read(engine))[1] == raw


@pytest.mark.parametrize("offset", [0, 1, 5, 6, 7, 30, 33, len(b"".join(p for _, p in LOG)), 10_000])
async def test_logs_resume_at_the_exact_byte(engine_at, offset):
    whole = b"".join(payload for _, payload in LOG)  # as `docker logs 2>&1` stored it
    engine, _ = await _logs_server(engine_at, _log_bytes(), cut=5)
    resumed = b"".join(piece for _, piece in await _read(engine, skip=offset))
    assert resumed == whole[offset:]


async def test_a_log_frame_claiming_4_gib_allocates_nothing(engine_at):
    hostile = struct.pack(">B3xI", 1, 0xFFFFFFFF) + b"x" * 1000
    engine, _ = await _logs_server(engine_at, hostile, cut=100)
    tracemalloc.start()
    try:
        with pytest.raises(EngineFailed, match="ended inside a frame"):
            await _read(engine)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


async def test_a_frame_of_no_known_stream_or_the_engines_error_is_an_error(engine_at):
    engine, _ = await _logs_server(engine_at, frame(1, b"ok\n") + b"\x09\x00\x00\x00\x00\x00\x00\x01z")
    with pytest.raises(EngineFailed, match="unknown stream 9"):
        await _read(engine)
    engine, _ = await _logs_server(engine_at, frame(1, b"ok\n") + frame(3, b"error from daemon in stream"))
    with pytest.raises(EngineFailed, match="error from daemon in stream"):
        await _read(engine)


def test_frames_are_parsed_the_same_whatever_the_cuts():
    stream = _log_bytes() + frame(2, b"e" * 70000) + frame(1, b"end")
    expected = None
    for cut in (1, 2, 8, 13, 65536, len(stream)):
        frames = LogFrames(tty=False, skip=3)
        out = b"".join(piece for at in range(0, len(stream), cut) for _, piece in frames.feed(stream[at:at + cut]))
        assert not frames.partial
        expected = expected or out
        assert out == expected
    assert expected == (b"".join(p for _, p in LOG) + b"e" * 70000 + b"end")[3:]
    with pytest.raises(FrameError):
        LogFrames(tty=False).feed(b"\x05" + b"\x00" * 7)


# -- the image-have probe over the API (fleet/host/images.sh's semantics) -----------------------

CONFIG = "sha256:" + "c" * 64
LAYERS = ["sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64]


def _images_handler(images: dict[str, dict], *, containerd: bool = False):
    async def handler(method, target, body, writer):
        path = "/" + target.split("?")[0].split("/", 2)[2]  # without /v1.47
        if path == "/info":
            driver = [["driver-type", "io.containerd.snapshotter.v1"]] if containerd else [["Backing", "extfs"]]
            writer.write(json_answer({"DriverStatus": driver}))
        elif path == "/images/json":
            writer.write(json_answer([{"Id": key} for key in images if key.startswith("sha256:")]))
        elif path.startswith("/images/"):
            name = path.removeprefix("/images/").removesuffix("/json")
            found = images.get(name)
            writer.write(json_answer(found) if found else json_answer({"message": f"No such image: {name}"}, 404))
    return handler


async def test_image_have_by_config_digest_by_fleets_tag_and_by_layers(engine_at):
    other = {"Id": "sha256:" + "9" * 64, "RootFS": {"Layers": LAYERS[:2] + ["sha256:" + "8" * 64]}}
    engine, _ = await engine_at(_images_handler({CONFIG: {"Id": CONFIG, "RootFS": {"Layers": LAYERS}}}))
    assert await engine.image_have(CONFIG, LAYERS) == ("present", CONFIG)
    # The containerd store: found through fleet-image:HEX, its layers exactly the ones given.
    manifest = {"Id": "sha256:" + "m" * 64, "RootFS": {"Layers": LAYERS}}
    engine, _ = await engine_at(_images_handler({"fleet-image:" + "c" * 64: manifest}, containerd=True))
    assert await engine.image_have(CONFIG, LAYERS) == ("present", manifest["Id"])
    assert await engine.image_have(CONFIG, LAYERS[:2]) == ("layers", "0")  # a tag moved: not it
    # A classic store without it: the longest prefix some image starts with.
    engine, _ = await engine_at(_images_handler({other["Id"]: other}))
    assert await engine.image_have(CONFIG, LAYERS) == ("layers", "2")
    # The containerd store and Podman read every layer: 0.
    engine, _ = await engine_at(_images_handler({other["Id"]: other}, containerd=True))
    assert await engine.image_have(CONFIG, LAYERS) == ("layers", "0")
    podman = {**VERSION, "ApiVersion": "1.41", "Components": [{"Name": "Podman Engine"}]}
    engine, _ = await engine_at(_images_handler({other["Id"]: other}), version=podman)
    assert await engine.image_have(CONFIG, LAYERS) == ("layers", "0")


# -- which socket (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize(("docker", "socket"), [
    ("docker", "/var/run/docker.sock"),
    ("/usr/bin/podman", "/run/podman/podman.sock"),
    ("env DOCKER_HOST=unix:///srv/d.sock docker", "/srv/d.sock"),
    ("docker -H unix:///run/user/1000/docker.sock", "/run/user/1000/docker.sock"),
    ("docker --host=unix:///x.sock", "/x.sock"),
    ("podman --url unix:///run/user/1000/podman/podman.sock", "/run/user/1000/podman/podman.sock"),
    ("sudo docker", None),
    ("sudo -n podman", None),
    ("docker -H tcp://10.0.0.1:2375", None),
])
def test_the_socket_tried_is_the_one_the_docker_command_names(docker, socket):
    from fleet.engine.connect import engine_plan
    assert engine_plan(SshHost(address="h1", docker=docker)).socket == socket
    assert engine_plan(SshHost(address="h1", docker=docker, engine_socket="/srv/e.sock")).socket == "/srv/e.sock"


async def test_a_followed_log_that_missed_its_last_unterminated_line_gets_it(engine_at):
    """Docker 20.10's follow drops the last line without a newline of a container that exits:
    once the followed log ends, the rest is read unfollowed from the byte it stopped at."""
    async def handler(method, target, body, writer):
        frames = LOG if "follow=0" in target else LOG[:-1]
        stream = b"".join(frame(s, p) for s, p in frames)
        writer.write(head(200, length=len(stream)) + stream)
    engine, fake = await engine_at(handler)
    got = b"".join(piece for _, piece in await _read(engine, tty=False, skip=2))
    assert got == b"".join(p for _, p in LOG)[2:]
    assert [r.split("?")[1] for r in fake.requests if "/logs" in r] == ["stdout=1&stderr=1&follow=1",
                                                                      "stdout=1&stderr=1&follow=0"]



async def test_a_follow_whose_caller_reads_the_rest_itself_asks_the_engine_once(engine_at):
    """reread=False (the instance, which reads the log once more after its wait): the followed
    log alone, its bytes exactly, and no second log request."""
    async def handler(method, target, body, writer):
        stream = b"".join(frame(s, p) for s, p in LOG)
        writer.write(head(200, length=len(stream)) + stream)
    engine, fake = await engine_at(handler)
    got = [piece async for piece in engine.logs("c1", follow=True, skip=2, tty=False, reread=False)]
    assert b"".join(piece for _, piece in got) == b"".join(p for _, p in LOG)[2:]
    assert [r.split("?")[1] for r in fake.requests if "/logs" in r] == ["stdout=1&stderr=1&follow=1"]

# -- the ways to the engine (fleet.engine.connect) over the local transport --------------------

FAKE_DOCKER = r'''
import os, socket, sys, threading
if sys.argv[1:] != ["system", "dial-stdio"]:
    print(f"docker: unknown command {sys.argv[1:]}", file=sys.stderr)
    sys.exit(1)
engine = socket.socket(socket.AF_UNIX)
engine.connect(os.environ["FAKE_ENGINE"])
def pump_in():
    while data := os.read(0, 65536):
        engine.sendall(data)
    engine.shutdown(socket.SHUT_WR)
threading.Thread(target=pump_in, daemon=True).start()
while data := engine.recv(65536):
    os.write(1, data)
'''


async def test_the_engine_is_reached_by_its_socket_else_through_dial_stdio_saying_why(tmp_path, monkeypatch):
    import sys

    from fleet.engine.connect import engine_for, engine_path
    monkeypatch.setenv("FLEET_ENGINE_API", "1")

    async def handler(method, target, body, writer):
        writer.write(json_answer({"Id": "sha256:" + "d" * 64}))
    fake = FakeEngine(tmp_path / "engine.sock", handler)
    server = await asyncio.start_unix_server(fake.serve, path=str(fake.path))
    docker = tmp_path / "docker.py"
    docker.write_text(FAKE_DOCKER)
    monkeypatch.setenv("FAKE_ENGINE", str(fake.path))
    plain = tmp_path / "plain-file"
    plain.write_text("")

    async def not_http(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        writer.close()
    other = await asyncio.start_unix_server(not_http, path=str(tmp_path / "other.sock"))
    cases = [(str(fake.path), f"socket {fake.path}"),
             (str(tmp_path / "none.sock"), f"dial-stdio (no socket {tmp_path / 'none.sock'})"),
             (str(plain), f"dial-stdio (no socket {plain})"),
             (str(tmp_path / "other.sock"), f"dial-stdio ({tmp_path / 'other.sock'} answered not as an engine: ")]
    try:
        for socket_path, path in cases:
            host = LocalHost(address="localhost", docker=f"{sys.executable} {docker}",
                             engine_socket=socket_path)
            transport = LocalTransport(host, LABEL)
            engine = await engine_for(transport, host, 10)
            assert engine_path(transport).startswith(path), engine_path(transport)
            assert engine is not None and (await engine.image_inspect("x"))["Id"] == "sha256:" + "d" * 64
            engine.close()
        # A docker without dial-stdio (and no socket): the scripts do the work.
        host = LocalHost(address="localhost", docker=f"{sys.executable} {docker} old",
                         engine_socket=str(tmp_path / "none.sock"))
        transport = LocalTransport(host, LABEL)
        assert await engine_for(transport, host, 10) is None
        assert engine_path(transport).startswith("scripts (")
    finally:
        for task in fake.tasks:
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)
        for listener in (server, other):
            listener.close()
            await listener.wait_closed()
        await asyncio.sleep(0.2)  # the killed dial-stdio commands reaped before the loop closes


def test_an_engine_socket_that_is_no_absolute_path_is_refused_naming_the_field():
    from fleet.errors import InvalidInput
    from fleet.inventory import parse_inventory
    with pytest.raises(InvalidInput, match=r"hosts.yaml.*engine_socket.*must be an absolute path on the host"):
        parse_inventory({"hosts": [{"address": "h1", "engine_socket": "docker.sock"}]}, "hosts.yaml")


async def test_a_host_whose_image_list_is_past_the_apis_bound_is_asked_through_the_script(tmp_path, monkeypatch,
                                                                                          serving):
    """Thousands of images list more than the API client reads (4 MiB): the probe is not a
    failed push (exit 75) but asked again of the host script, which reads no list whole
    (review of issue 20: 6,000 images failed the push)."""
    from fleet.image.push import _image_have
    monkeypatch.setenv("FLEET_ENGINE_API", "1")
    other = {"Id": "sha256:" + "9" * 64, "RootFS": {"Layers": LAYERS[:2]}}

    async def handler(method, target, body, writer):
        path = "/" + target.split("?")[0].split("/", 2)[2]
        if path == "/info":
            writer.write(json_answer({"DriverStatus": [["Backing", "extfs"]]}))
        elif path == "/images/json":  # ~6 MiB of summaries
            writer.write(json_answer([{"Id": other["Id"], "Labels": {"x": "y" * 1000}}] * 6000))
        else:
            writer.write(json_answer({"message": "No such image"}, 404))
    fake = await serving(FakeEngine(tmp_path / "engine.sock", handler))
    docker = tmp_path / "docker"  # the CLI the script calls: it has the image
    docker.write_text(f"#!/bin/sh\ncase \"$*\" in *inspect*) echo {CONFIG} ;; *) exit 1 ;; esac\n")
    docker.chmod(0o755)
    host = LocalHost(address="localhost", docker=str(docker), engine_socket=str(fake.path))
    said = await _image_have(LocalTransport(host, LABEL), [str(docker)], CONFIG, LAYERS, 10)
    assert said == ("present", CONFIG)
    assert any("/images/json" in request for request in fake.requests)  # the API was asked first


@pytest.mark.parametrize("program", PRIVILEGE_PROGRAMS)
def test_a_docker_command_run_as_another_user_is_one_list_for_the_socket_and_the_environment(program):
    """`su docker` / `run0 docker`: no socket is tried (it may not be the SSH user's to open)
    and the environment check (a value only docker's environment carries) refuses it, from
    the same list, so the two cannot disagree on a program."""
    from fleet.engine.connect import engine_plan
    host = SshHost(address="h1", docker=f"/usr/bin/{program} docker")
    assert engine_plan(host).socket is None
    assert host.privilege_program == program
    assert SshHost(address="h1", docker="docker").privilege_program is None


@pytest.mark.parametrize("api", ["1", "0"])
async def test_a_silent_engine_gets_one_message_from_the_api_probe_and_from_the_script(tmp_path, monkeypatch,
                                                                                     serving, api):
    """The image-have probe is cut at one bound, with the statuses table's message, whether
    the API or the host script asked (they were two copies of the text)."""
    from fleet.errors import HostError
    from fleet.image import push
    monkeypatch.setenv("FLEET_ENGINE_API", api)
    monkeypatch.setattr(push, "_probe_bound", lambda docker_timeout: 0.5)

    async def handler(method, target, body, writer):
        await asyncio.sleep(60)  # the engine takes the request and never answers
    fake = await serving(FakeEngine(tmp_path / "engine.sock", handler))
    docker = tmp_path / "docker"  # the script's docker: as silent
    docker.write_text("#!/bin/sh\nexec sleep 60\n")
    docker.chmod(0o755)
    host = LocalHost(address="localhost", docker=str(docker), engine_socket=str(fake.path))
    try:
        with pytest.raises(HostError) as caught:
            await push._image_have(LocalTransport(host, LABEL), [str(docker)], CONFIG, LAYERS, 1)
    finally:
        # The killed script's docker ends at its own bound (docker_timeout), then is reaped
        # before the loop closes.
        await asyncio.sleep(1.5 if api == "0" else 0)
    assert caught.value.message == f"{LABEL}: docker did not answer within 1 s (looking for the image {CONFIG})"
    assert any("/images/" in request for request in fake.requests) == (api == "1")


FAKE_CLI = r'''
import os, sys
if sys.argv[1] == "info":  # the engine the CLI talks to, as engine-id.sh asks
    if os.environ["FAKE_CLI"] == "broken":
        sys.exit(1)
    kind, _, rest = os.environ["FAKE_CLI"].partition(":")
    engine_id, _, root = rest.partition(":")
    if kind == "podman" and "{{.ID}}" in sys.argv[3]:
        print("Error: template: info:1:5: executing at <.ID>: can't evaluate field ID", file=sys.stderr)
        sys.exit(125)
    print(f"id={engine_id if kind == 'docker' else ''} root={root}")
    sys.exit(0)
'''
PODMAN = {"Version": "5.8.0", "ApiVersion": "1.41", "MinAPIVersion": "1.24", "Components": [{"Name": "Podman Engine"}]}


@pytest.mark.parametrize(("podman", "socket_engine", "cli", "path"), [
    (False, ("A", "/var/lib/docker"), "docker:A:/var/lib/docker", "socket"),
    (False, ("A", "/var/lib/docker"), "docker:B:/var/lib/docker", "dial-stdio"),  # another dockerd
    (False, ("A", "/var/lib/docker"), "broken", "socket"),  # the CLI cannot say: the socket is all there is
    # Docker 20.10's ID is /etc/docker/key.json's: two daemons of one machine share it, not a root
    (False, ("A", "/srv/h2/docker-data"), "docker:A:/srv/h1/docker-data", "dial-stdio"),
    (True, (None, "/var/lib/containers/storage"), "podman::/var/lib/containers/storage", "socket"),
    (True, (None, "/var/lib/containers/storage"), "podman::/root/.local/share/containers/storage", "dial-stdio"),
    (True, (None, "/var/lib/containers/storage"), "docker:x:/var/lib/containers/storage", "socket"),  # docker CLI
], ids=["same-docker", "other-docker", "cli-broken", "shared-trust-key", "same-podman", "rootless-podman",
        "docker-cli-on-podman"])
@pytest.mark.parametrize("said", [False, True], ids=["asked", "said-by-a-script"])
async def test_a_socket_of_another_engine_than_the_docker_commands_is_not_used(tmp_path, monkeypatch, podman,
                                                                               socket_engine, cli, path, said):
    """The engine API must reach the engine the host's docker command talks to (a login's
    DOCKER_HOST may name another): compared by engine ID and root (Docker) or storage root
    (Podman, whose compat /info makes a new ID up at every call); where they differ,
    dial-stdio, which is the docker command's engine, saying why. What a script that ran
    anyway said (fleet check's check.sh) is compared without a command of its own."""
    import sys
    import uuid

    from fleet.engine.connect import cli_engine_said, engine_for, engine_path
    monkeypatch.setenv("FLEET_ENGINE_API", "1")
    engine_id, root = socket_engine

    def engine(name: str):
        async def handler(method, target, body, writer):
            if target.split("?")[0].endswith("/info"):
                writer.write(json_answer({"ID": engine_id or str(uuid.uuid4()), "DockerRootDir": root}))
            else:
                writer.write(json_answer({"Id": name}))
        return FakeEngine(tmp_path / f"{name}.sock", handler, PODMAN if podman else None)
    at_socket, clis = engine("socket-engine"), engine("cli-engine")
    servers = [await asyncio.start_unix_server(e.serve, path=str(e.path)) for e in (at_socket, clis)]
    docker = tmp_path / "docker.py"
    docker.write_text(FAKE_CLI + FAKE_DOCKER)
    monkeypatch.setenv("FAKE_ENGINE", str(clis.path))  # where the CLI's dial-stdio goes
    monkeypatch.setenv("FAKE_CLI", cli)
    host = LocalHost(address="localhost", docker=f"{sys.executable} {docker}",
                     engine_socket=str(at_socket.path))
    transport = LocalTransport(host, LABEL)
    started = []
    original = transport.start

    async def counted(argv):
        started.append(argv[3] if argv[:2] == ["sh", "-c"] else argv[0])
        return await original(argv)
    transport.start = counted  # type: ignore[method-assign]
    if said and cli != "broken":
        kind, engine_cli, cli_root = cli.split(":")
        cli_engine_said(transport, f"id={engine_cli if kind == 'docker' else ''} root={cli_root}\n")
    try:
        found = await engine_for(transport, host, 10)
        assert found is not None
        answered = (await found.image_inspect("x"))["Id"]
        found.close()
    finally:
        for task in at_socket.tasks + clis.tasks:
            task.cancel()
        await asyncio.gather(*at_socket.tasks, *clis.tasks, return_exceptions=True)
        for server in servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.2)  # the dial-stdio command reaped before the loop closes
    way = engine_path(transport)
    assert way is not None and way.startswith(path), way
    assert answered == ("socket-engine" if path == "socket" else "cli-engine")
    if path == "dial-stdio":
        assert f"{at_socket.path} is not the engine" in way
    asked = ["fleet-engine-id"] if not said or cli == "broken" else []
    assert started == asked + (["fleet-engine-dial"] if path == "dial-stdio" else [])


def test_a_socket_the_docker_command_names_itself_needs_no_engine_comparison():
    """`docker -H unix://P` talks to P whatever the login sets: nothing to compare; the
    default socket and engine_socket are compared (test above)."""
    from fleet.engine.connect import engine_plan
    assert engine_plan(SshHost(address="h1", docker="docker -H unix:///x.sock")).named_by_command
    assert engine_plan(SshHost(address="h1", docker="env DOCKER_HOST=unix:///x.sock docker")).named_by_command
    assert not engine_plan(SshHost(address="h1", docker="docker")).named_by_command
    named_elsewhere = SshHost(address="h1", docker="docker -H unix:///x.sock", engine_socket="/y.sock")
    assert not engine_plan(named_elsewhere).named_by_command
