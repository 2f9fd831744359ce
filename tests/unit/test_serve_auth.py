"""`fleet serve` authenticates requests as AWS does: requests signed by real botocore clients
(sagemaker, logs) pass, and every fault gets AWS's error code and message."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials

from fleet.errors import InvalidInput
from fleet.serve.auth import AuthError, Credential, KeyRing, verify

ACCESS_KEY = "AKIAFLEETTEST0000001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFLEETSECRET"
TOKEN = "FwoGZXIvYXdzEFLEETSESSIONTOKEN//////////wEaDtest"
SIGNED_AT = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
MISMATCH = "The request signature we calculated does not match the signature you provided."


@dataclass
class WireRequest:
    """A request as the server receives it."""

    method: str
    path_and_query: str
    headers: dict[str, str]
    body: bytes

    def verify(self, keyring: KeyRing, now: datetime = SIGNED_AT) -> Credential:
        return verify(keyring, self.method, self.path_and_query, self.headers, self.body, now)


class _Raw:
    def stream(self):
        yield b"{}"


@pytest.fixture(autouse=True)
def _no_aws_config(monkeypatch, tmp_path):
    """botocore reads no file or environment of the machine's."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@functools.cache
def _session() -> botocore.session.Session:
    """One session for every test: loading the service models takes most of a client's making."""
    return botocore.session.get_session()


def send(
    service: str,
    operation: str,
    params: dict,
    *,
    secret_key: str = SECRET_KEY,
    access_key: str = ACCESS_KEY,
    token: str | None = None,
    signed_at: datetime = SIGNED_AT,
    monkeypatch: pytest.MonkeyPatch,
) -> WireRequest:
    """What a botocore client for `service` puts on the wire for `operation`, signed at
    `signed_at`; the request never leaves the process (a before-send hook answers it)."""
    client = _session().create_client(
        service,
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=token,
    )
    captured = []

    def answer(request, **kwargs):
        captured.append(request)
        return AWSResponse(request.url, 200, {"x-amzn-RequestId": "1"}, _Raw())

    client.meta.events.register("before-send", answer)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: signed_at.replace(tzinfo=None))
    getattr(client, operation)(**params)
    (request,) = captured
    url = urlsplit(request.url)
    headers = {name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()}
    headers["Host"] = url.netloc  # urllib3 adds it on the wire; botocore signed it from the URL
    body = request.body or b""
    return WireRequest(request.method, url.path + (f"?{url.query}" if url.query else ""), headers, body)


def ring(*credentials: Credential) -> KeyRing:
    return KeyRing(credentials or [Credential(ACCESS_KEY, SECRET_KEY)])


def rejected(request: WireRequest, keyring: KeyRing, now: datetime = SIGNED_AT) -> AuthError:
    with pytest.raises(AuthError) as caught:
        request.verify(keyring, now)
    return caught.value


# --- requests signed by real clients ---


def test_a_sagemaker_request_signed_with_an_accepted_key_passes(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {"MaxResults": 5}, monkeypatch=monkeypatch)

    assert request.headers["X-Amz-Target"] == "SageMaker.ListProcessingJobs"
    assert request.verify(ring()) == Credential(ACCESS_KEY, SECRET_KEY)


def test_a_logs_request_signed_with_an_accepted_key_passes(monkeypatch):
    request = send(
        "logs",
        "get_log_events",
        {"logGroupName": "/aws/sagemaker/ProcessingJobs", "logStreamName": "job/algo-1-1700000000"},
        monkeypatch=monkeypatch,
    )

    assert request.verify(ring()).access_key == ACCESS_KEY


def test_a_request_with_a_session_token_passes_on_its_access_key(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, token=TOKEN, monkeypatch=monkeypatch)

    assert request.headers["X-Amz-Security-Token"] == TOKEN
    assert request.verify(ring()).access_key == ACCESS_KEY


def test_a_key_with_a_session_token_needs_that_token(monkeypatch):
    keyring = ring(Credential(ACCESS_KEY, SECRET_KEY, session_token=TOKEN))
    good = send("sagemaker", "list_processing_jobs", {}, token=TOKEN, monkeypatch=monkeypatch)
    other = send("sagemaker", "list_processing_jobs", {}, token=TOKEN + "x", monkeypatch=monkeypatch)
    none = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)

    assert good.verify(keyring).session_token == TOKEN
    for request in (other, none):
        error = rejected(request, keyring)
        assert (error.code, error.message) == (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )


def test_a_wrong_secret_is_an_invalid_signature(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, secret_key=SECRET_KEY + "x", monkeypatch=monkeypatch)

    error = rejected(request, ring())
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith(MISMATCH)
    assert error.status == 403


def test_an_unknown_access_key_is_an_unrecognized_client(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, access_key="AKIAUNKNOWN000000000", monkeypatch=monkeypatch)

    error = rejected(request, ring())
    assert (error.code, error.message) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )


def test_no_authorization_header_is_a_missing_authentication_token(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    del request.headers["Authorization"]

    error = rejected(request, ring())
    assert (error.code, error.message) == ("MissingAuthenticationToken", "Missing Authentication Token")


def test_another_scheme_than_sigv4_is_a_missing_authentication_token(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["Authorization"] = f"AWS {ACCESS_KEY}:c2lnbmF0dXJl"

    assert rejected(request, ring()).code == "MissingAuthenticationToken"


def test_a_body_changed_after_signing_is_an_invalid_signature(monkeypatch):
    request = send(
        "sagemaker", "stop_processing_job", {"ProcessingJobName": "job-a"}, monkeypatch=monkeypatch
    )
    request.body = request.body.replace(b"job-a", b"job-b")

    error = rejected(request, ring())
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith(MISMATCH)


@pytest.mark.parametrize("name", ["Host", "X-Amz-Target", "X-Amz-Date"])
def test_a_signed_header_changed_after_signing_is_an_invalid_signature(monkeypatch, name):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    changed = {"Host": "127.0.0.1:2", "X-Amz-Target": "SageMaker.StopProcessingJob", "X-Amz-Date": "20261129T120001Z"}
    request.headers[name] = changed[name]

    error = rejected(request, ring())
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith(MISMATCH)


def test_an_unsigned_header_may_change(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["User-Agent"] = "something else"
    request.headers["X-Forwarded-For"] = "10.0.0.1"

    assert request.verify(ring()).access_key == ACCESS_KEY


def test_a_content_sha256_header_must_match_the_body(monkeypatch):
    signed = AWSRequest("POST", "http://127.0.0.1:1/", headers={"X-Amz-Content-SHA256": "0" * 64}, data=b"{}")
    signed.headers["Host"] = "127.0.0.1:1"
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None))
    botocore.auth.SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "sagemaker", "eu-west-1").add_auth(signed)
    request = WireRequest("POST", "/", dict(signed.headers.items()), b"{}")

    error = rejected(request, ring())
    assert (error.code, error.message) == (
        "InvalidSignatureException",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    )


def test_a_request_signed_20_minutes_ago_has_expired(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)

    error = rejected(request, ring(), now=SIGNED_AT + timedelta(minutes=20))
    assert (error.code, error.message) == (
        "InvalidSignatureException",
        "Signature expired: 20261129T120000Z is now earlier than 20261129T120500Z (20261129T122000Z - 15 min.)",
    )


def test_a_request_signed_20_minutes_ahead_is_not_yet_current(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)

    error = rejected(request, ring(), now=SIGNED_AT - timedelta(minutes=20))
    assert (error.code, error.message) == (
        "InvalidSignatureException",
        "Signature not yet current: 20261129T120000Z is still later than 20261129T115500Z (20261129T114000Z + 15 min.)",
    )


@pytest.mark.parametrize("skew", [timedelta(minutes=10), timedelta(minutes=-10), timedelta(minutes=15)])
def test_a_request_signed_within_15_minutes_passes(monkeypatch, skew):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)

    assert request.verify(ring(), now=SIGNED_AT + skew).access_key == ACCESS_KEY


def test_a_request_signed_by_sigv4auth_directly_at_a_fixed_time(monkeypatch):
    """The same check without a client: SigV4Auth signs at a frozen time, 20 minutes before now."""
    target = {"X-Amz-Target": "Logs_20140328.DescribeLogStreams"}
    signed = AWSRequest("POST", "http://127.0.0.1:8080/", headers=target, data=b"{}")
    signed.headers["Host"] = "127.0.0.1:8080"
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None))
    botocore.auth.SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "logs", "us-east-1").add_auth(signed)
    request = WireRequest("POST", "/", dict(signed.headers.items()), b"{}")

    assert request.verify(ring(), now=SIGNED_AT + timedelta(minutes=10)).access_key == ACCESS_KEY
    assert "Signature expired" in rejected(request, ring(), now=SIGNED_AT + timedelta(minutes=20)).message


def test_a_service_outside_the_allowed_ones_is_refused(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)

    with pytest.raises(AuthError) as caught:
        verify(
            ring(), request.method, request.path_and_query, request.headers, request.body, SIGNED_AT, services={"logs"}
        )
    assert caught.value.code == "InvalidSignatureException"
    assert caught.value.message.startswith("Credential should be scoped to correct service: 'logs'")


# --- malformed Authorization headers ---


def test_an_unsigned_host_is_refused(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["Authorization"] = request.headers["Authorization"].replace("host;", "")

    error = rejected(request, ring())
    assert (error.code, error.message) == (
        "InvalidSignatureException",
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_a_missing_request_time_is_an_incomplete_signature(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    del request.headers["X-Amz-Date"]
    request.headers["Authorization"] = request.headers["Authorization"].replace(";x-amz-date", "")

    error = rejected(request, ring())
    assert error.code == "IncompleteSignatureException"
    assert "requires existence of either a 'X-Amz-Date' or a 'Date' header" in error.message


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("AWS4-HMAC-SHA256 Signature=" + "0" * 64, "Authorization header requires 'Credential' parameter."),
        ("AWS4-HMAC-SHA256 Credential", "'Credential' not a valid key=value pair (missing equal-sign)"),
        (
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261129/eu-west-1, SignedHeaders=host, Signature={'0' * 64}",
            "Credential should be scoped to a valid region",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261129/eu-west-1/sagemaker/aws4_request, "
            f"SignedHeaders={';'.join(f'x-h{i}' for i in range(40))};host, Signature={'0' * 64}",
            "SignedHeaders lists 41 headers; at most 32 are accepted.",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261129/eu-west-1/sagemaker/aws4_request, "
            f"SignedHeaders=host, Signature={'0' * 5000}",
            "Authorization header is longer than 4096 bytes.",
        ),
    ],
)
def test_a_malformed_authorization_header_is_an_incomplete_signature(monkeypatch, authorization, message):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["Authorization"] = authorization

    error = rejected(request, ring())
    assert error.code == "IncompleteSignatureException"
    assert message in error.message


def test_an_oversized_signed_header_is_refused(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["X-Amz-Target"] = "x" * 10_000

    error = rejected(request, ring())
    assert error.code == "InvalidSignatureException"
    assert "longer than 8192 bytes" in error.message


def test_a_scope_date_other_than_the_request_date_is_refused(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers["Authorization"] = request.headers["Authorization"].replace("/20261129/", "/20261128/")

    error = rejected(request, ring())
    assert error.code == "InvalidSignatureException"
    assert "'20261128' != '20261129'" in error.message


def test_header_names_are_matched_in_any_case(monkeypatch):
    request = send("sagemaker", "list_processing_jobs", {}, monkeypatch=monkeypatch)
    request.headers = {name.lower(): value for name, value in request.headers.items()}

    assert request.verify(ring()).access_key == ACCESS_KEY


# --- the key ring ---


def test_credentials_file_gives_every_profiles_key(tmp_path):
    path = tmp_path / "credentials"
    path.write_text(
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = secret/one\n\n"
        "[ci]\naws_access_key_id=AKIACI\naws_secret_access_key=secret+two\naws_session_token=tok\n\n"
        "[sso]\nsso_session = corp\n"
    )

    keyring = KeyRing.from_file(path)

    assert len(keyring) == 2
    assert keyring.get("AKIADEFAULT") == Credential("AKIADEFAULT", "secret/one")
    assert keyring.get("AKIACI") == Credential("AKIACI", "secret+two", session_token="tok")
    assert keyring.get("AKIAOTHER") is None
    assert "[ci]" in keyring.get("AKIACI").source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broken]\naws_access_key_id = AKIAHALF\n", "profile [broken]: aws_secret_access_key is missing or empty"),
        ("[broken]\naws_secret_access_key = s\n", "profile [broken]: aws_access_key_id is missing or empty"),
        (
            "[broken]\naws_access_key_id = AKIA/SLASH\naws_secret_access_key = s\n",
            "profile [broken]: aws_access_key_id must be",
        ),
        (
            "[a]\naws_access_key_id = AKIASAME\naws_secret_access_key = one\n"
            "[b]\naws_access_key_id = AKIASAME\naws_secret_access_key = two\n",
            "access key AKIASAME has different secrets",
        ),
        ("aws_access_key_id = AKIANOSECTION\n", "not an AWS credentials file"),
        ("[sso]\nsso_session = corp\n", "no profile has an aws_access_key_id"),
    ],
)
def test_a_bad_credentials_file_names_the_file_and_profile(tmp_path, text, message):
    path = tmp_path / "credentials"
    path.write_text(text)

    with pytest.raises(InvalidInput) as caught:
        KeyRing.from_file(path)
    assert str(path) in caught.value.message
    assert message in caught.value.message


def test_a_missing_credentials_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read the credentials file"):
        KeyRing.from_file(tmp_path / "absent")


def test_the_chain_gives_the_environments_key(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)

    (credential,) = KeyRing.from_chain()

    assert credential == Credential(ACCESS_KEY, SECRET_KEY, session_token=TOKEN)
    assert "env" in credential.source


def test_the_chain_without_a_key_gives_an_empty_ring():
    assert len(KeyRing.from_chain()) == 0


def test_rings_merge_and_refuse_a_key_with_two_secrets():
    one = KeyRing([Credential("AKIAONE", "s1", source="a")])
    two = KeyRing([Credential("AKIATWO", "s2"), Credential("AKIAONE", "s1", source="b")])

    assert sorted(credential.access_key for credential in one | two) == ["AKIAONE", "AKIATWO"]
    with pytest.raises(InvalidInput, match="AKIAONE has different secrets"):
        _ = one | KeyRing([Credential("AKIAONE", "other")])


def test_a_secret_never_shows_in_repr():
    credential = Credential(ACCESS_KEY, SECRET_KEY, session_token=TOKEN)

    assert SECRET_KEY not in repr(credential)
    assert TOKEN not in repr(credential)
    assert SECRET_KEY not in repr(KeyRing([credential]))
