"""S3 through aiobotocore, on the controller only.

Endpoint and credentials come from the standard AWS chain (environment, ~/.aws profiles,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3), so MinIO, Ceph and SeaweedFS work unchanged.
Checksums are "when_required": botocore's newer default ones break some S3-compatible servers.

Object bodies (GET, and the PUT of a small file) go through presigned URLs sent with aiohttp:
botocore's request pipeline costs about 1 ms of CPU per request, which made 2,000 small
objects CPU-bound (measured: 2,000 GETs of 4 KiB, 2.46 s through get_object, 0.84 s with
presigned URLs; presign.py signs them locally). Listing, HEAD and multipart calls stay on
the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import yarl
from aiobotocore.session import get_session
from aiohttp.helpers import get_env_proxy_for_url
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError as BotoClientError, NoCredentialsError

from fleet.data.locations import S3Location, S3Object
from fleet.data.presign import Presigner
from fleet.errors import ClientError
from fleet.retry import S3_REQUESTS, Retrying

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
PART_URL_EXPIRES = 3600  # an UploadPart URL is used at once (retries included)


def _describe(exc: Exception) -> str:
    if isinstance(exc, BotoClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message') or exc}"
    # An aiohttp error may name the URL it was sending: never its query (a presigned URL's
    # signature, credential and token are there).
    said = re.sub(r"(https?://[^\s?]*)\?[^\s'\"]*", r"\1?...", str(exc))
    if isinstance(exc, _Transient):
        return said
    return f"{type(exc).__name__} ({said})" if said else type(exc).__name__


class _Transient(Exception):
    """A failure worth another try: a 5xx, a throttle, a short read."""


class _Redacted(Exception):
    """What an HTTP client error said, without any URL's query: the cause kept on a
    ClientError in its place (a traceback under --debug shows no signature or token)."""


def _cause(exc: Exception) -> Exception:
    return exc if isinstance(exc, (BotoClientError, _Transient)) else _Redacted(_describe(exc))


_TRANSIENT = (aiohttp.ClientError, OSError, asyncio.TimeoutError, _Transient)


async def _another_try(retrying: Retrying, what: str, exc: Exception) -> None:
    """After a transient failure: back off (S3_REQUESTS) and return, or raise
    ClientError(`what`) once its attempts are spent."""
    if not await retrying.pause():
        raise ClientError(f"{what}: {_describe(exc)}") from _cause(exc)
    log.debug("%s: %s; trying again (attempt %d of %s)", what, _describe(exc), retrying.failures + 1,
              retrying.policy.attempts)


async def _http_error(response: aiohttp.ClientResponse, what: str) -> Exception:
    text = await response.text(errors="replace")
    found = re.search(r"<Code>([^<]*)</Code>", text)
    code = found.group(1) if found else f"HTTP {response.status}"
    if response.status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
        return _Transient(f"{code} (HTTP {response.status})")
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return ClientError(f"{what}: {code}" + (f": {message.group(1)}" if message else ""))


class S3:
    """One client for the whole job; `max_connections` bounds the S3 connections."""

    def __init__(self, max_connections: int = 32) -> None:
        self.max_connections = max_connections
        self._context: Any = None  # aiobotocore ships no types
        self._client: Any = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3:
        session = get_session()
        region = session.get_config_variable("region") or os.environ.get("AWS_REGION") or "us-east-1"
        config = Config(
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=self.max_connections,
            retries={"mode": "standard", "max_attempts": S3_REQUESTS.attempts},
            connect_timeout=10,
            read_timeout=60,
        )
        self._context = session.create_client("s3", region_name=region, config=config)
        self._client = await self._context.__aenter__()
        self._presigner = Presigner(self._client, session)
        bundle = os.environ.get("AWS_CA_BUNDLE")
        tls = ssl.create_default_context(cafile=bundle) if bundle else True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=tls),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=60),
            # Not trust_env: it reads ~/.netrc and the proxy variables in a thread on every
            # request (two thread hops per GET, measured ~0.1 ms each); the proxy is looked
            # up once per endpoint instead (_proxy), and netrc has no business with SigV4 URLs.
            trust_env=False, auto_decompress=False)
        self._proxies: dict[str, dict] = {}
        log.debug("S3 client: region %s, endpoint %s, up to %d connections", region,
                  yarl.URL(self._client.meta.endpoint_url).origin(), self.max_connections)
        return self

    @property
    def _http(self) -> aiohttp.ClientSession:
        """Object bodies' HTTP client (from entering the context on)."""
        assert self._session is not None, "S3 used outside `async with`"
        return self._session

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
        if self._context is not None:
            await self._context.__aexit__(*exc)

    async def _url(self, method: str, location: S3Location) -> yarl.URL:
        url = await self._presigner.url(method, location.bucket, location.key)
        return yarl.URL(url, encoded=True)  # as signed: aiohttp must not re-quote it

    def _proxy(self, url: yarl.URL) -> dict:
        """aiohttp's request arguments for the proxy the environment names for this endpoint
        (HTTPS_PROXY, NO_PROXY, ...), looked up once per endpoint."""
        origin = f"{url.scheme}://{url.host}:{url.port}"
        if origin not in self._proxies:
            try:
                proxy, auth = get_env_proxy_for_url(url)
                self._proxies[origin] = {"proxy": proxy, "proxy_auth": auth}
            except LookupError:
                self._proxies[origin] = {}
        return self._proxies[origin]

    async def list(self, prefix: S3Location) -> list[S3Object]:
        """Every object whose key starts with the prefix, in key order."""
        objects = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for item in page.get("Contents", []):
                    objects.append(S3Object(S3Location(prefix.bucket, item["Key"]), int(item["Size"])))
        except NoCredentialsError as exc:
            raise ClientError(f"no AWS credentials to list {prefix} (environment, ~/.aws, ...)") from exc
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot list {prefix}: {_describe(exc)}") from exc
        log.debug("listed %s: %d objects", prefix, len(objects))
        return sorted(objects, key=lambda o: o.location.key)

    async def head(self, location: S3Location) -> S3Object:
        try:
            response = await self._client.head_object(Bucket=location.bucket, Key=location.key)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot read {location}: {_describe(exc)}") from exc
        return S3Object(location, int(response["ContentLength"]))

    async def read_all(self, location: S3Location) -> bytes:
        return b"".join([chunk async for chunk in self.stream(S3Object(location, -1))])

    async def stream(self, obj: S3Object) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks. A GET that breaks mid-way is resumed with a Range
        GET from where it stopped (with backoff); the byte count is checked against the
        listed size."""
        done = 0
        retrying = S3_REQUESTS.start()
        while True:
            try:
                headers = {"Range": f"bytes={done}-"} if done else {}
                url = await self._url("GET", obj.location)
                async with self._http.get(url, headers=headers, **self._proxy(url)) as response:
                    if response.status >= 300:
                        raise await _http_error(response, f"cannot read {obj.location}")
                    # The socket gives 16-64 KiB at a time: hand on CHUNK-sized pieces, so
                    # the SSH side sends full packets (its cost is per packet, not per byte),
                    # joined once (a bytearray grown then copied to bytes was two copies).
                    pieces: list[bytes] = []
                    pending = 0
                    async for piece in response.content.iter_any():
                        pieces.append(piece)
                        pending += len(piece)
                        if pending >= CHUNK:
                            done += pending
                            yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                            pieces.clear()
                            pending = 0
                    if pieces:
                        done += pending
                        yield b"".join(pieces)
                if obj.size >= 0 and done != obj.size:
                    raise _Transient(f"read {done} bytes of {obj.size}")
                return
            except _TRANSIENT as exc:
                await _another_try(retrying, f"cannot read {obj.location}", exc)
                if done:
                    log.debug("resuming the GET of %s at byte %d", obj.location, done)

    async def put(self, location: S3Location, data: bytes | memoryview) -> None:
        retrying = S3_REQUESTS.start()
        while True:
            try:
                url = await self._url("PUT", location)
                async with self._http.put(url, data=data, **self._proxy(url)) as response:
                    if response.status >= 300:
                        raise await _http_error(response, f"cannot upload {location}")
                    return
            except _TRANSIENT as exc:
                await _another_try(retrying, f"cannot upload {location}", exc)

    async def multipart(self, location: S3Location) -> MultipartUpload:
        try:
            response = await self._client.create_multipart_upload(Bucket=location.bucket, Key=location.key)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {location}: {_describe(exc)}") from exc
        log.debug("multipart upload of %s started", location)
        return MultipartUpload(self._client, location, response["UploadId"], self._http, self._proxy)


class MultipartUpload:
    """Parts uploaded in parallel (the caller bounds how many); aborted on failure."""

    def __init__(self, client, location: S3Location, upload_id: str,
                 http: aiohttp.ClientSession, proxy) -> None:
        self._client = client
        self._http = http
        self._proxy = proxy
        self.location = location
        self._id = upload_id
        self._parts: dict[int, str] = {}

    async def part(self, number: int, data: bytes | memoryview) -> None:
        """UploadPart through a presigned URL sent with aiohttp, as GETs are: botocore's
        pipeline copied each part's body (and hashed it, over http), which with 8 parts in
        flight took a 700 MiB upload to 280 MB of RSS. `data` is sent as it is, never copied:
        the caller keeps it unchanged until this returns."""
        retrying = S3_REQUESTS.start()
        what = f"cannot upload {self.location} (part {number})"
        while True:
            try:
                url = yarl.URL(await self._client.generate_presigned_url(
                    "upload_part", Params={"Bucket": self.location.bucket, "Key": self.location.key,
                                           "UploadId": self._id, "PartNumber": number},
                    ExpiresIn=PART_URL_EXPIRES), encoded=True)
                async with self._http.put(url, data=data, **self._proxy(url)) as response:
                    if response.status >= 300:
                        raise await _http_error(response, what)
                    etag = response.headers.get("ETag")
                    if not etag:
                        raise _Transient("no ETag in the answer")
                    self._parts[number] = etag
                    return
            except (BotoClientError, BotoCoreError) as exc:
                raise ClientError(f"{what}: {_describe(exc)}") from exc
            except _TRANSIENT as exc:
                await _another_try(retrying, what, exc)

    async def complete(self) -> None:
        parts = [{"PartNumber": n, "ETag": tag} for n, tag in sorted(self._parts.items())]
        try:
            await self._client.complete_multipart_upload(Bucket=self.location.bucket, Key=self.location.key,
                                                         UploadId=self._id, MultipartUpload={"Parts": parts})
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {self.location}: {_describe(exc)}") from exc
        log.debug("multipart upload of %s completed: %d parts", self.location, len(parts))

    async def abort(self) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=self.location.key,
                                                      UploadId=self._id)
        except (BotoClientError, BotoCoreError) as exc:
            log.debug("could not abort the multipart upload of %s (%d parts sent): %s", self.location,
                      len(self._parts), _describe(exc))
            return
        log.debug("multipart upload of %s aborted (%d parts sent)", self.location, len(self._parts))
