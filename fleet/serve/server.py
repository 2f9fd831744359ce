"""The HTTP side of `fleet serve`: AWS JSON 1.1 (`POST /`, `X-Amz-Target: Service.Operation`,
a JSON body), every request SigV4-verified (auth.py) before anything else is read from it.
Answers in the protocol's shape: 200 with the JSON output; errors `{"__type": CODE,
"message": ...}` with HTTP 400 (403 for authentication), which botocore raises as ClientError
with that code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import uuid
from datetime import UTC, datetime

from aiohttp import web

from fleet.errors import FleetError
from fleet.serve.api import Api, ApiError
from fleet.serve.auth import AuthError, KeyRing, verify

log = logging.getLogger(__name__)

BODY_LIMIT = 2 * 2**20  # bytes of a request body (a CreateProcessingJob is well under)
CONTENT_TYPE = "application/x-amz-json-1.1"
SERVICES = {"SageMaker": "sagemaker", "Logs_20140328": "logs"}


def _answer(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=CONTENT_TYPE,
                        headers={"x-amzn-RequestId": str(uuid.uuid4())})


def _error(code: str, message: str, status: int = 400) -> web.Response:
    response = _answer(status, {"__type": code, "message": message})
    response.headers["x-amzn-ErrorType"] = code
    return response


class Server:
    def __init__(self, api: Api, keys: KeyRing) -> None:
        self.api = api
        self.keys = keys

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.content.read(BODY_LIMIT + 1)
        if len(body) > BODY_LIMIT:
            return _error("SerializationException", f"the request body is larger than {BODY_LIMIT} bytes", 413)
        try:
            verify(self.keys, request.method, request.path_qs, request.headers, body, datetime.now(UTC))
        except AuthError as exc:
            return _error(exc.code, exc.message, exc.status)
        target = request.headers.get("X-Amz-Target", "")
        operation = self.api.operations.get(target)
        if operation is None:
            return _error("UnknownOperationException", f"fleet serve does not answer {target or 'this request'}")
        try:
            document = json.loads(body or b"{}")
            if not isinstance(document, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error("SerializationException", "the request body is not a JSON object")
        try:
            return _answer(200, await operation(document))
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.status)
        except FleetError as exc:
            return _error("ValidationException", exc.message)
        except Exception as exc:  # a bug of fleet's: the client gets a 500, the server goes on
            log.exception("%s failed", target)
            return _error("InternalFailure", f"fleet serve failed: {type(exc).__name__}", 500)


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetError(f"--listen {listen!r}: HOST:PORT, e.g. 127.0.0.1:8180")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(api: Api, keys: KeyRing, listen: str, tls: ssl.SSLContext | None, notice) -> None:
    """Serve until SIGTERM or SIGINT; the scheduler runs alongside. Running jobs go on."""
    host, port = listen_address(listen)
    app = web.Application(client_max_size=BODY_LIMIT)
    app.router.add_post("/", Server(api, keys).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheme = "https" if tls else "http"
    notice(f"serving the SageMaker API on {scheme}://{listen} (AWS_ENDPOINT_URL_SAGEMAKER and "
           f"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS); jobs run on {len(api.scheduler.inventory.hosts)} host(s)")
    try:
        async with asyncio.TaskGroup() as tasks:
            scheduling = tasks.create_task(api.scheduler.run(), name="scheduler")
            await stop.wait()
            scheduling.cancel()
    finally:
        with contextlib.suppress(Exception):
            await api.scheduler.close()
        await runner.cleanup()
    notice("stopped serving; running jobs go on (the next `fleet serve` adopts them)")
