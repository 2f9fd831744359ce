"""Presigned S3 URLs (SigV4 query signing) made locally, for object bodies.

aiobotocore's generate_presigned_url costs ~0.4 ms of CPU a URL; thousands of small objects
made it the bottleneck. botocore presigns ONE URL per bucket, which tells where that bucket
lives (endpoint, virtual-hosted or path-style, region); every other URL of the bucket is
signed here with the same scope and a cached signing key (~20 µs).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

log = logging.getLogger(__name__)

PROBE_KEY = "fleet-presign-probe"
EXPIRES = 3600
CREDENTIALS_TTL = 60.0  # seconds before the credentials are asked for again (they may rotate)


def _quote(text: str, safe: str = "-_.~") -> str:
    return quote(text, safe=safe)


class BucketSigner:
    """Signs URLs for one bucket, where botocore's own presigned URL says it lives."""

    def __init__(self, probe_url: str) -> None:
        parts = urlsplit(probe_url)
        self.scheme, self.host = parts.scheme, parts.netloc
        encoded_probe = _quote(PROBE_KEY, safe="/~")
        if not parts.path.endswith(encoded_probe):
            raise ValueError(f"unexpected presigned URL path: {parts.path}")  # not the URL: it is signed
        self.path_prefix = parts.path[: -len(encoded_probe)]  # "/" or "/bucket/"
        credential = parse_qs(parts.query)["X-Amz-Credential"][0]
        _, _, self.region, self.service, _ = credential.rsplit("/", 4)

    def url(self, method: str, key: str, access_key: str, secret_key: str, token: str | None,
            now: datetime | None = None, expires: int = EXPIRES) -> str:
        now = now or datetime.now(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        path = self.path_prefix + _quote(key, safe="/~")
        canonical_query = _canonical_query(access_key, scope, amz_date, token, expires)
        canonical = f"{method}\n{path}\n{canonical_query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(_signing_key(secret_key, day, self.region, self.service), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return f"{self.scheme}://{self.host}{path}?{canonical_query}&X-Amz-Signature={signature}"


@functools.lru_cache(maxsize=8)
def _canonical_query(access_key: str, scope: str, amz_date: str, token: str | None,
                     expires: int = EXPIRES) -> str:
    """The query of every URL signed within one second (quoting it was ~40% of a URL's cost)."""
    query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{access_key}/{scope}",
             "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host"}
    if token:
        query["X-Amz-Security-Token"] = token
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


_keys: dict[tuple[str, str, str, str], bytes] = {}


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    cache = (secret, day, region, service)
    if cache not in _keys:
        key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        _keys[cache] = key
    return _keys[cache]


class Presigner:
    """URLs for object bodies, for any bucket of the job."""

    def __init__(self, client, session) -> None:
        self._client = client
        self._session = session
        self._buckets: dict[str, BucketSigner] = {}
        self._credentials: Any = None  # botocore ReadOnlyCredentials, once fetched
        self._fetched = 0.0

    async def url(self, method: str, bucket: str, key: str, expires: int = EXPIRES) -> str:
        """A URL for `method` on the object, valid for `expires` seconds."""
        signer = self._buckets.get(bucket)
        if signer is None:
            operation = "get_object" if method == "GET" else "put_object"
            probe = await self._client.generate_presigned_url(
                operation, Params={"Bucket": bucket, "Key": PROBE_KEY}, ExpiresIn=EXPIRES)
            try:
                signer = self._buckets[bucket] = BucketSigner(probe)
                log.debug("bucket %s: URLs signed here, for %s://%s", bucket, signer.scheme, signer.host)
            except (ValueError, KeyError):  # not SigV4 query auth: let botocore sign each URL
                log.debug("bucket %s: botocore signs each URL (its presigned URLs are not SigV4 query auth)",
                          bucket)
                return await self._client.generate_presigned_url(
                    operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
        if self._credentials is None or time.monotonic() - self._fetched > CREDENTIALS_TTL:
            credentials = await self._session.get_credentials()
            self._credentials = await credentials.get_frozen_credentials()
            self._fetched = time.monotonic()
            log.debug("AWS credentials fetched for presigning")
        c = self._credentials
        return signer.url(method, key, c.access_key, c.secret_key, c.token, expires=expires)
