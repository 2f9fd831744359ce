"""The HTTP side of `fleet serve`: one request pipeline (Server) for every service
(services.py), each request SigV4-verified (auth.py) before anything else is read from it
and answered in its protocol's shape (protocols.py): AWS JSON 1.1 (`POST /`, `X-Amz-Target:
Service.Operation`, a JSON body) for SageMaker and CloudWatch Logs, the Query protocol (a
form POST) for STS; errors with HTTP 400 (403 for authentication), which botocore raises as
ClientError with their code. And the connections' admission: caps on all and per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import resource
import signal
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from aiohttp import web

from fleet.errors import FleetError
from fleet.serve.auth import AuthError, KeyRing, is_loopback, verify
from fleet.serve.errors import (
    InternalFailure,
    RequestTimeoutException,
    SerializationException,
    ServiceError,
    ServiceUnavailable,
    ValidationException,
)
from fleet.serve.metrics import OPERATION, Metrics
from fleet.serve.page import Page
from fleet.serve.protocols import CONTENT_TYPE, Json, Query, is_query
from fleet.serve.services import Services

log = logging.getLogger(__name__)

BODY_LIMIT = 2 * 2**20  # bytes of a request body (a CreateProcessingJob is well under)
# What one client may hold. aiohttp's keep-alive timer also runs from a connection's start
# and closes a connection whose next request's head has not arrived (a half-sent head
# included): it is the header read timeout as well. Its default is an hour.
KEEPALIVE_SECONDS = 10.0
BODY_SECONDS = 30.0  # to receive a whole body once its head arrived (2 MiB at ~70 KB/s)
BUSY_LINGER = 1.0  # seconds a refused connection stays open for its 503 to be read
MAX_REFUSING = 64  # refused connections lingering at once; beyond, closed without an answer
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}
# Headers whose meaning is one value: a repeat is refused, never joined or picked from.
_SINGLE_HEADERS = ("authorization", "content-type", "host", "x-amz-content-sha256", "x-amz-date", "date",
                   "x-amz-security-token", "x-amz-target")


def _headers(request: web.Request) -> dict[str, str]:
    """The request's headers, one parse for the verifier and the dispatcher alike: names
    lowered, a repeated header joined with "," (as SigV4 canonicalizes it); AuthError for a
    repeat of a header that must have one value (a second X-Amz-Target would otherwise be
    signed as one operation and dispatched as another)."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        name = name.lower()
        if name in headers:
            if name in _SINGLE_HEADERS:
                raise AuthError("IncompleteSignatureException",
                                f"The request has more than one {name!r} header.")
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value
    return headers


async def _body(request: web.Request) -> bytes:
    """The whole body (every chunk, however the client's writes split it), at most
    BODY_LIMIT bytes: SerializationException (413) beyond, or when it does not arrive within BODY_SECONDS."""
    declared = request.content_length
    if declared is not None and declared > BODY_LIMIT:
        raise SerializationException(f"the request body is larger than {BODY_LIMIT} bytes", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > BODY_LIMIT:
                    raise SerializationException(f"the request body is larger than {BODY_LIMIT} bytes", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutException(f"the request body did not arrive within {BODY_SECONDS:g} seconds") from None
    return b"".join(chunks)


class Server:
    """The one request pipeline every service's request goes through: its protocol told by
    its headers (a form POST without X-Amz-Target is STS's Query protocol, anything else AWS
    JSON), its body read whole and bounded, its SigV4 signature verified (auth.py) before
    anything is parsed from it, its operation found and called for the principal that
    signed, and every error answered in its protocol's shape (the metrics middleware counts
    each by its operation and code)."""

    def __init__(self, services: Services, keys: KeyRing) -> None:
        self.services = services
        self.keys = keys
        self.json = Json(services.operations)
        self.query = Query(services.queries)

    async def handle(self, request: web.Request) -> web.Response:
        query = is_query(request.headers)
        protocol: Json | Query = self.query if query else self.json
        if query:
            request[OPERATION] = "STS.GetCallerIdentity"  # its one action, for the metrics
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
        except ServiceError as exc:  # the rest of the body is not read: the connection ends with the answer
            response = protocol.error(exc.code, exc.message, exc.status, request_id)
            response.force_close()
            return response
        try:
            headers = _headers(request)
            credential = verify(self.keys, request.method, request.path_qs, headers, body, datetime.now(UTC),
                                services=protocol.scope, required=protocol.required)
        except AuthError as exc:
            return protocol.error(exc.code, exc.message, exc.status, request_id)
        target = "STS request" if query else headers.get("x-amz-target", "")
        try:
            target, document = protocol.operation(headers, body)
            result = await protocol.operations[target](document, credential.principal)
            return protocol.answer(target, result, request_id)
        except ServiceError as exc:
            return protocol.error(exc.code, exc.message, exc.status, request_id)
        except FleetError as exc:
            return protocol.error(ValidationException.code, exc.message, ValidationException.status, request_id)
        except Exception as exc:
            failure = _failure(target, exc)
            return protocol.error(failure.code, failure.message, failure.status, request_id)


def _failure(target: str, exc: Exception) -> ServiceError:
    """What a client is told of an operation that failed inside fleet: descriptors or memory
    ran out (503: it retries), or a bug of fleet's (500; the server goes on)."""
    if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
        log.warning("%s: %s", target, exc)
        return ServiceUnavailable(f"fleet serve is out of resources ({exc.strerror}); retry later")
    log.exception("%s failed", target)
    return InternalFailure(f"fleet serve failed: {type(exc).__name__}")


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetError(f"--listen {listen!r}: HOST:PORT, e.g. 127.0.0.1:8180")
    return host.strip("[]"), int(port)


def max_connections() -> int:
    """The default cap on open connections: half the descriptors this process may open, less
    the refused connections lingering (the rest for job records, logs and worker processes),
    between 8 and 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, (soft - 64 - MAX_REFUSING) // 2))


def max_connections_per_client(connections: int) -> int:
    """The default cap on one client's open connections: a quarter of all, so that no one
    address holds the server alone (four must join to fill it), while a well-behaved client
    stays far below it (boto3 and the SageMaker SDK pool 10 connections)."""
    return max(1, connections // 4)


def client_of(peername: object) -> str:
    """Whom a connection counts against: its IPv4 address (an IPv4-mapped IPv6 one as IPv4),
    or its IPv6 /64 (one site's share: an address per connection costs nothing there)."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    try:
        address = ipaddress.ip_address(str(peername[0]).partition("%")[0])
    except ValueError:
        return str(peername[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _busy_response(message: str) -> bytes:
    body = json.dumps({"__type": "ServiceUnavailable", "message": message}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"x-amzn-ErrorType: ServiceUnavailable\r\nx-amzn-RequestId: {uuid.uuid4()}\r\n"
            f"Retry-After: 1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Busy(asyncio.Protocol):
    """A connection beyond a cap: answered 503 ServiceUnavailable (botocore retries it) at
    once, whatever it sends (read and dropped, so that closing does not reset the answer away),
    and closed BUSY_LINGER later."""

    lingering = 0
    _closer: asyncio.TimerHandle | None = None

    def __init__(self, message: str) -> None:
        self.message = message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one, though not a subclass
        if _Busy.lingering >= MAX_REFUSING:
            transport.abort()
            return
        _Busy.lingering += 1
        transport.write(_busy_response(self.message))
        self._closer = asyncio.get_running_loop().call_later(BUSY_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()
            _Busy.lingering -= 1


class _Admission:
    """The connections served, all and per client (client_of): at most `connections` and
    `per_client`; a connection beyond either is given to _Busy."""

    def __init__(self, handlers: Callable[[], asyncio.Protocol], connections: int, per_client: int) -> None:
        self.handlers = handlers
        self.connections = connections
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str, int] = {}

    def admit(self, client: str) -> asyncio.Protocol:
        if self.open >= self.connections:
            return _Busy("fleet serve has too many open connections; retry later")
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            return _Busy(f"this client ({client}) holds {held} open connections, the most fleet serve allows "
                         f"one client; retry later")
        self.open += 1
        self.by_client[client] = held + 1
        return self.handlers()

    def release(self, client: str) -> None:
        self.open -= 1
        held = self.by_client.pop(client) - 1
        if held:
            self.by_client[client] = held


class _Connection(asyncio.Protocol):
    """One accepted connection, admitted or refused once its peer is known (the protocol
    factory is called before the peer is), then passed on whole to aiohttp's handler or _Busy."""

    def __init__(self, admission: _Admission) -> None:
        self.admission = admission
        self.client: str | None = None  # set while it counts against its client
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = client_of(transport.get_extra_info("peername"))
        self.inner = self.admission.admit(client)
        if not isinstance(self.inner, _Busy):
            self.client = client
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self.inner is not None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert self.inner is not None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        assert self.inner is not None
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        assert self.inner is not None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.inner is not None:
                self.inner.connection_lost(exc)
        finally:
            if self.client is not None:
                self.admission.release(self.client)
                self.client = None


async def serve(api: Services, keys: KeyRing, listen: str, tls: ssl.SSLContext | None, notice,
                connections: int | None = None, per_client: int | None = None,
                metrics_token: str | None = None, on_listening: Callable[[str], None] | None = None,
                page: Page | None = None) -> None:
    """Serve until SIGTERM or SIGINT; the scheduler runs alongside. Running jobs go on.
    At most `connections` open connections (default: max_connections()), `per_client` of
    them from one client (default: max_connections_per_client()); more are answered 503 and
    closed. GET /metrics: Prometheus metrics (metrics.py), for `metrics_token`'s bearer, or
    anyone on a loopback `listen` without one. `on_listening` is called with the server's URL
    once it listens. With `page`, the page too (page.py), its login URLs printed."""
    host, port = listen_address(listen)
    cap = connections or max_connections()
    metrics = Metrics(api.store, api.scheduler.inventory, api.operations, token=metrics_token,
                      open_without_token=is_loopback(host))
    metrics.census.refresh()  # every record read once now, not at the first scrape
    app = web.Application(client_max_size=BODY_LIMIT, middlewares=[metrics.middleware])
    app.router.add_post("/", Server(api, keys).handle)
    app.router.add_get("/metrics", metrics.handle)
    if page is not None:
        page.add_routes(app)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    handlers = runner.server
    assert handlers is not None

    admission = _Admission(handlers, cap, per_client or max_connections_per_client(cap))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: _Connection(admission), host, port, ssl=tls, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheme = "https" if tls else "http"
    notice(f"serving the SageMaker API on {scheme}://{listen} (AWS_ENDPOINT_URL_SAGEMAKER and "
           f"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS); jobs run on {len(api.scheduler.inventory.hosts)} host(s)")
    if on_listening is not None:
        on_listening(f"{scheme}://{listen}")
    for profile, url in page.login_urls(f"{scheme}://{listen}") if page is not None else ():
        notice(f"the jobs page for {profile}: {url}")
    try:
        async with asyncio.TaskGroup() as tasks:
            scheduling = tasks.create_task(api.scheduler.run(), name="scheduler")
            # After listening, not before: a restarted serve answers its pollers at once, and
            # the warm-up yields between batches (Services.warm).
            warming = tasks.create_task(api.warm(), name="warm the List cache")
            await stop.wait()
            scheduling.cancel()
            warming.cancel()
    finally:
        listener.close()
        with contextlib.suppress(Exception):
            await api.scheduler.close()
        await runner.cleanup()
    notice("stopped serving; running jobs go on (the next `fleet serve` adopts them)")
