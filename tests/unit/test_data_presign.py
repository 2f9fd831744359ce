"""Presigned URLs signed locally are the URLs botocore signs (SigV4 query auth)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fleet.data.presign import EXPIRES, BucketSigner

PROBE = ("http://127.0.0.1:9000/bkt/fleet-presign-probe?X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=AK%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
         "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=x")
NOW = datetime(2026, 11, 22, 4, 40, 1, tzinfo=UTC)


def botocore_url(monkeypatch, method: str, encoded_key: str, token: str | None) -> str:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=f"http://127.0.0.1:9000/bkt/{encoded_key}")
    botocore.auth.S3SigV4QueryAuth(Credentials("AKID", "SECRET", token), "s3", "us-east-1",
                                   expires=EXPIRES).add_auth(request)
    return request.prepare().url


@pytest.mark.parametrize("token", [None, "tok/+="])
@pytest.mark.parametrize("key, encoded", [("a/b c.txt", "a/b%20c.txt"), ("ü/x~y", "%C3%BC/x~y")])
def test_url_is_the_one_botocore_signs(monkeypatch, key, encoded, token):
    signer = BucketSigner(PROBE)
    for method in ("GET", "PUT"):
        ours = signer.url(method, key, "AKID", "SECRET", token, NOW)
        theirs = botocore_url(monkeypatch, method, encoded, token)
        assert ours.split("?")[0] == theirs.split("?")[0]
        assert parse_qs(ours.split("?")[1]) == parse_qs(theirs.split("?")[1])  # signature included


def test_urls_of_one_second_differ_only_in_path_and_signature():
    signer = BucketSigner(PROBE)
    first, second = (signer.url("GET", k, "AKID", "SECRET", None, NOW) for k in ("x/1", "x/2"))
    assert first.split("?")[1].split("&X-Amz-Signature=")[0] == second.split("?")[1].split("&X-Amz-Signature=")[0]
    assert first != second
