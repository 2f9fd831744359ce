"""A presigned URL's query (signature, credential, session token) never reaches a message,
a log line or a record: an endpoint that redirects in a loop once put it, token included,
into the job's FailureReason (issue 9, point 10)."""

from __future__ import annotations

import logging
import traceback

import pytest
from aiohttp import web

from fleet.data import s3 as s3_module
from fleet.data.locations import S3Location, S3Object
from fleet.errors import ClientError
from fleet.retry import RetryPolicy

TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENzzzz"


@pytest.fixture
async def redirect_loop(monkeypatch):
    """An "S3 endpoint" on loopback whose every answer is a redirect to itself, query kept."""
    async def again(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.rel_url))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", again)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret/EXAMPLE/key/EXAMPLEEXAMPLE000000")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(s3_module, "S3_REQUESTS", RetryPolicy(first=0.01, cap=0.01, attempts=2))
    yield
    await runner.cleanup()


def _everything_said(error: BaseException) -> str:
    return str(error) + "".join(traceback.format_exception(error))


async def test_a_redirect_loop_names_the_object_but_never_the_signed_query(redirect_loop, caplog):
    caplog.set_level(logging.DEBUG, logger="fleet")
    location = S3Location("bucket", "data/object.csv")
    async with s3_module.S3() as s3:
        with pytest.raises(ClientError) as raised:
            async for _ in s3.stream(S3Object(location, 10)):
                pass
        with pytest.raises(ClientError) as put:
            await s3.put(location, b"0123456789")
    for error in (raised.value, put.value):
        said = _everything_said(error)
        assert "s3://bucket/data/object.csv" in error.message
        assert "redirect" in error.message.lower()
        for secret in (TOKEN, "X-Amz-Signature", "X-Amz-Credential", "AKIAEXAMPLE"):
            assert secret not in said, f"{secret} in {said}"
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert logged, "the retries are logged"
    assert TOKEN not in logged and "X-Amz-Signature" not in logged
