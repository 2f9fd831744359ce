"""S3 through aiobotocore, on the controller only.

Endpoint and credentials come from the standard AWS chain (environment, ~/.aws profiles,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3), so MinIO, Ceph and SeaweedFS work unchanged.
Checksums are "when_required": botocore's newer default ones break some S3-compatible servers.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from typing import AsyncIterator

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError as BotoClientError, NoCredentialsError

from fleet.data.locations import S3Location
from fleet.errors import ClientError

CHUNK = 256 * 1024
ATTEMPTS = 5  # for a GET that breaks mid-stream (resumed where it stopped) and for a PUT


@dataclass(frozen=True)
class S3Object:
    location: S3Location
    size: int


def _describe(exc: Exception) -> str:
    if isinstance(exc, BotoClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message') or exc}"
    return str(exc) or type(exc).__name__


async def backoff(attempt: int) -> None:
    await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt) * (0.5 + random.random() / 2))


class S3:
    """One client for the whole job; `max_connections` bounds the S3 connections."""

    def __init__(self, max_connections: int = 32) -> None:
        self.max_connections = max_connections
        self._context = None
        self._client = None

    async def __aenter__(self) -> "S3":
        session = get_session()
        region = session.get_config_variable("region") or os.environ.get("AWS_REGION") or "us-east-1"
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=self.max_connections,
            retries={"mode": "standard", "max_attempts": ATTEMPTS},
            connect_timeout=10,
            read_timeout=60,
        )
        self._context = session.create_client("s3", region_name=region, config=config)
        self._client = await self._context.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._context is not None:
            await self._context.__aexit__(*exc)

    async def list(self, prefix: S3Location) -> list[S3Object]:
        """Every object whose key starts with the prefix, in key order."""
        objects = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for item in page.get("Contents", []):
                    objects.append(S3Object(S3Location(prefix.bucket, item["Key"]), int(item["Size"])))
        except NoCredentialsError:
            raise ClientError(f"no AWS credentials to list {prefix} (environment, ~/.aws, ...)") from None
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot list {prefix}: {_describe(exc)}") from None
        return sorted(objects, key=lambda o: o.location.key)

    async def head(self, location: S3Location) -> S3Object:
        try:
            response = await self._client.head_object(Bucket=location.bucket, Key=location.key)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot read {location}: {_describe(exc)}") from None
        return S3Object(location, int(response["ContentLength"]))

    async def read_all(self, location: S3Location) -> bytes:
        return b"".join([chunk async for chunk in self.stream(S3Object(location, -1))])

    async def stream(self, obj: S3Object) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks. A GET that breaks mid-way is resumed with a Range
        GET from where it stopped (with backoff); the byte count is checked against the
        listed size."""
        done = 0
        attempt = 0
        while True:
            try:
                extra = {"Range": f"bytes={done}-"} if done else {}
                response = await self._client.get_object(Bucket=obj.location.bucket, Key=obj.location.key, **extra)
                body = response["Body"]
                try:
                    while chunk := await body.read(CHUNK):
                        done += len(chunk)
                        yield chunk
                finally:
                    body.close()
                if obj.size >= 0 and done != obj.size:
                    raise ClientError(f"{obj.location}: read {done} bytes, but the object has {obj.size}")
                return
            except BotoClientError as exc:  # the server's answer (NoSuchKey, AccessDenied): final
                raise ClientError(f"cannot read {obj.location}: {_describe(exc)}") from None
            except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:  # transient: resume
                attempt += 1
                if attempt >= ATTEMPTS:
                    raise ClientError(f"cannot read {obj.location}: {_describe(exc)}") from None
                await backoff(attempt)

    async def put(self, location: S3Location, data: bytes) -> None:
        try:
            await self._client.put_object(Bucket=location.bucket, Key=location.key, Body=data)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {location}: {_describe(exc)}") from None

    async def multipart(self, location: S3Location) -> "MultipartUpload":
        try:
            response = await self._client.create_multipart_upload(Bucket=location.bucket, Key=location.key)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {location}: {_describe(exc)}") from None
        return MultipartUpload(self._client, location, response["UploadId"])


class MultipartUpload:
    """Parts uploaded in parallel (the caller bounds how many); aborted on failure."""

    def __init__(self, client, location: S3Location, upload_id: str) -> None:
        self._client = client
        self.location = location
        self._id = upload_id
        self._parts: dict[int, str] = {}

    async def part(self, number: int, data: bytes) -> None:
        try:
            response = await self._client.upload_part(Bucket=self.location.bucket, Key=self.location.key,
                                                      UploadId=self._id, PartNumber=number, Body=data)
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {self.location} (part {number}): {_describe(exc)}") from None
        self._parts[number] = response["ETag"]

    async def complete(self) -> None:
        parts = [{"PartNumber": n, "ETag": tag} for n, tag in sorted(self._parts.items())]
        try:
            await self._client.complete_multipart_upload(Bucket=self.location.bucket, Key=self.location.key,
                                                         UploadId=self._id, MultipartUpload={"Parts": parts})
        except (BotoClientError, BotoCoreError) as exc:
            raise ClientError(f"cannot upload {self.location}: {_describe(exc)}") from None

    async def abort(self) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=self.location.key,
                                                      UploadId=self._id)
        except (BotoClientError, BotoCoreError):
            pass
