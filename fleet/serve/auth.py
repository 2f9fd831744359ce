"""Request authentication for `fleet serve`: AWS Signature Version 4, checked as AWS checks it.

A client (boto3, the AWS CLI, the SageMaker Python SDK) signs each request with an access key
and its secret. `verify` recomputes that signature with botocore's own signer (`SigV4Auth`) over
exactly what the client signed (the headers it listed in SignedHeaders, the path and query as
received, the body) and answers with the key's `Credential`, or raises `AuthError` carrying the
error code and message AWS returns for the same fault, so clients report it as they would
against AWS.

The keys a server accepts are a `KeyRing`: the key the standard AWS chain gives the user who
starts the server (`KeyRing.from_chain`), the keys of an AWS shared-credentials file
(`KeyRing.from_file`), or both (`ring | other`). Each key acts for a `Principal`: the profile
that lists it (an admin if its section says `fleet_admin = true`), or CONTROLLER for the
chain's key, the operator who started the server (always an admin). Jobs belong to the
principal that created them (jobs.py).

Only the Authorization header form is accepted (no presigned URLs: the APIs served take a JSON
body, which a URL cannot sign).
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import botocore.session
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError

from fleet.errors import InvalidInput

ALGORITHM = "AWS4-HMAC-SHA256"
# The services whose requests `fleet serve` answers: SageMaker, CloudWatch Logs, and STS
# (GetCallerIdentity, which some tools call first to learn "who am I").
SERVICES = frozenset({"sagemaker", "logs", "sts"})
# AWS refuses a signature whose time is more than 15 minutes from its clock, either way.
CLOCK_SKEW = timedelta(minutes=15)

# Bounds on what an unauthenticated client makes the server parse and hash. A botocore client
# signs 6 to 8 headers; a session token is 1-2 KB (more with session tags).
MAX_AUTHORIZATION_BYTES = 4096
MAX_SIGNED_HEADERS = 32
MAX_HEADER_VALUE_BYTES = 8192
MAX_PATH_AND_QUERY_BYTES = 8192

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_INVALID_TOKEN = "The security token included in the request is invalid."
# An access key ends at "/" in the Credential scope and at "," in the Authorization header.
_ACCESS_KEY = re.compile(r"[!-~]{1,128}")
_ACCESS_KEY_FORBIDDEN = re.compile(r"[/,]")
ADMIN_KEY = "fleet_admin"  # in a profile's section: true makes the profile see and stop every job
_BOOLEANS = {"true": True, "false": False}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


class AuthError(Exception):
    """A request failed authentication: `code` and `message` are what AWS answers (the JSON
    error's __type and message), `status` the HTTP status to send."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, and so who owns the jobs it creates: the name of the profile
    whose key signed it. An admin sees and stops every job; anyone else only its own."""

    name: str
    admin: bool = False


# The operator who started `fleet serve`: its AWS chain's key, and the owner of the jobs `fleet
# run` made in the same FLEET_HOME (their records name no owner). A credentials file may not
# name a profile so (its keys would act as the operator).
CONTROLLER = Principal("fleet-controller", admin=True)


@dataclass(frozen=True)
class Credential:
    """An accepted access key. With a `session_token` (temporary credentials), a request must
    also carry that token in X-Amz-Security-Token; without one, a request's token is not
    checked. `source` says where the key came from, for messages; `principal` whom it acts
    for (a key given without one is the controller's own)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = field(default="", compare=False)
    principal: Principal = field(default=CONTROLLER, compare=False)


class KeyRing:
    """The access keys a server accepts, by access key id."""

    def __init__(self, credentials: Iterable[Credential] = ()) -> None:
        self._keys: dict[str, Credential] = {}
        for credential in credentials:
            self._add(credential)

    @classmethod
    def from_chain(cls) -> KeyRing:
        """The key botocore's default credential chain finds for this process (environment,
        shared files, SSO, container or instance metadata), or an empty ring if it finds none.

        The chain's credentials are frozen once: a refreshing key (SSO, an assumed role) is
        accepted as it was when the server started. A temporary key is accepted only with its
        session token (X-Amz-Security-Token must match). Blocks for up to a few seconds while the
        chain probes instance metadata; call it at startup. InvalidInput if a source the chain
        tries fails (an expired SSO token, a container credentials endpoint refusing).
        """
        try:
            credentials = botocore.session.get_session().get_credentials()
        except BotoCoreError as exc:
            raise InvalidInput(f"the AWS credential chain failed: {exc}") from exc
        if credentials is None:
            return cls()
        frozen = credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            return cls()
        source = f"the AWS credential chain ({credentials.method})"
        return cls([Credential(frozen.access_key, frozen.secret_key, frozen.token or None, source, CONTROLLER)])

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """The keys of every profile of an AWS shared-credentials file (INI: a section per
        profile with aws_access_key_id, aws_secret_access_key and optionally aws_session_token),
        each acting for its profile: an admin if the section says `fleet_admin = true` (botocore
        and the AWS CLI ignore keys they do not know, so clients read the same file unchanged).

        Profiles with neither key (role, SSO or process profiles) are skipped. Raises
        InvalidInput naming the file and the profile for a profile with half a key or a malformed
        one, a fleet_admin other than true or false, a profile named as CONTROLLER, two profiles
        giving one access key different secrets or different fleet_admin values (a key listed
        twice acts for the first profile listing it), and for a file with no key.
        """
        path = Path(path).expanduser()
        # default_section: AWS's [default] is an ordinary profile, not INI defaults for the others.
        parser = configparser.ConfigParser(interpolation=None, default_section="\0")
        try:
            parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: cannot read the credentials file: {exc}") from exc
        except configparser.Error as exc:
            raise InvalidInput(f"{path}: not an AWS credentials file: {exc.message}") from exc
        ring = cls()
        for profile in parser.sections():
            section = parser[profile]
            access_key = section.get("aws_access_key_id", "").strip()
            secret_key = section.get("aws_secret_access_key", "").strip()
            token = section.get("aws_session_token", "").strip() or None
            where = f"{path}: profile [{profile}]"
            admin_value = section.get(ADMIN_KEY, "false").strip()
            admin = _BOOLEANS.get(admin_value.lower())
            if admin is None:
                raise InvalidInput(f"{where}: {ADMIN_KEY} must be true or false, not {admin_value!r}")
            if not access_key and not secret_key:
                continue
            if not access_key or not secret_key:
                missing = "aws_access_key_id" if not access_key else "aws_secret_access_key"
                raise InvalidInput(f"{where}: {missing} is missing or empty")
            if not _ACCESS_KEY.fullmatch(access_key) or _ACCESS_KEY_FORBIDDEN.search(access_key):
                raise InvalidInput(
                    f"{where}: aws_access_key_id must be 1-128 printable ASCII characters without spaces, '/' or ','"
                )
            if any(character.isspace() for character in secret_key):
                raise InvalidInput(f"{where}: aws_secret_access_key contains white space")
            if profile == CONTROLLER.name:
                raise InvalidInput(f"{where}: the profile name {CONTROLLER.name} is fleet's name for the "
                                   f"controller's own key; rename the profile")
            known = ring.get(access_key)
            if known is not None and known.principal.admin != admin:
                raise InvalidInput(f"{where}: access key {access_key} is also in {known.source}, with another "
                                   f"{ADMIN_KEY}: a key acts for one profile; give both the same {ADMIN_KEY}")
            ring._add(Credential(access_key, secret_key, token, where, Principal(profile, admin)))
        if not ring:
            raise InvalidInput(f"{path}: no profile has an aws_access_key_id and aws_secret_access_key")
        return ring

    def get(self, access_key: str) -> Credential | None:
        """The credential of that access key id, if accepted."""
        return self._keys.get(access_key)

    def __or__(self, other: KeyRing) -> KeyRing:
        """Both rings' keys (InvalidInput if they give one access key different secrets). A key
        in both acts for this ring's principal: `from_chain() | from_file(...)` keeps the
        controller's key the controller's, whichever profile of the file also lists it."""
        return KeyRing([*self, *other])

    def __iter__(self) -> Iterator[Credential]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing({sorted(self._keys)})"

    def _add(self, credential: Credential) -> None:
        known = self._keys.get(credential.access_key)
        if known is not None and known != credential:
            raise InvalidInput(
                f"access key {credential.access_key} has different secrets or session tokens "
                f"in {known.source} and in {credential.source}"
            )
        self._keys.setdefault(credential.access_key, credential)


@dataclass(frozen=True)
class _Authorization:
    """The parts of an Authorization header: Credential=AK/date/region/service/aws4_request,
    SignedHeaders=a;b;c, Signature=hex."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


class _ClientSigner(SigV4Auth):
    """botocore's SigV4 signer, canonicalizing exactly the headers the client signed.

    SigV4Auth.headers_to_sign takes every header of the request except a blacklist (user-agent,
    expect, ...) and adds Host from the URL; a server must take the client's SignedHeaders list
    instead, as received, whatever other headers proxies or the HTTP client added.
    """

    def __init__(self, credentials: Credentials, service: str, region: str, signed: Iterable[str]) -> None:
        super().__init__(credentials, service, region)
        self._signed = tuple(signed)

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            headers[name] = request.headers[name]
        return headers


def verify(
    keyring: KeyRing,
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    *,
    services: Collection[str] = SERVICES,
    required: Collection[str] = (),
) -> Credential:
    """The credential that signed this request, or AuthError with AWS's code and message.

    `path_and_query` is the request target as received (still percent-encoded), `headers` the
    request's headers in any case (a repeated header joined with ","), `now` the server's clock
    (timezone-aware). Any region is accepted; the credential scope's service must be one of
    `services`; the headers named (lower case) in `required` must be signed (a JSON protocol's
    X-Amz-Target and Content-Type). Checks, in this order: an AWS4-HMAC-SHA256 Authorization
    header (MissingAuthenticationToken), its form, a signed Host header (and the `required`
    ones) and a request time (IncompleteSignatureException), the request time within 15
    minutes of `now` and the scope (InvalidSignatureException), the access key and its session token
    (UnrecognizedClientException), X-Amz-Content-Sha256 against the body and the signature
    (InvalidSignatureException).
    """
    if now.tzinfo is None:
        raise ValueError("verify() needs a timezone-aware `now`")
    lowered = {name.lower(): value for name, value in headers.items()}
    authorization = _parse_authorization(lowered.get("authorization", ""))
    if "host" not in authorization.signed_headers:
        raise AuthError(
            "InvalidSignatureException", "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    for name in required:
        if name not in authorization.signed_headers:
            raise AuthError(
                "InvalidSignatureException", f"'{_display(name)}' must be a 'SignedHeader' in the AWS Authorization."
            )
    for name in authorization.signed_headers:
        if name not in lowered:
            raise AuthError("InvalidSignatureException", _MISMATCH)
        if len(lowered[name].encode("utf-8", "surrogateescape")) > MAX_HEADER_VALUE_BYTES:
            raise AuthError(
                "InvalidSignatureException", f"Header {name!r} is longer than {MAX_HEADER_VALUE_BYTES} bytes."
            )
    if len(path_and_query) > MAX_PATH_AND_QUERY_BYTES or not path_and_query.startswith("/"):
        raise AuthError("InvalidSignatureException", _MISMATCH)

    timestamp = _request_time(lowered)
    _check_clock(timestamp, now)
    _check_scope(authorization, timestamp, services)

    credential = keyring.get(authorization.access_key)
    if credential is None:
        raise AuthError("UnrecognizedClientException", _INVALID_TOKEN)
    if credential.session_token is not None:
        token = lowered.get("x-amz-security-token", "")
        if "x-amz-security-token" not in authorization.signed_headers or not hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), credential.session_token.encode("utf-8")
        ):
            raise AuthError("UnrecognizedClientException", _INVALID_TOKEN)

    declared = lowered.get("x-amz-content-sha256")
    if declared is not None and not hmac.compare_digest(
        declared.encode("utf-8", "surrogateescape"), hashlib.sha256(body).hexdigest().encode()
    ):
        raise AuthError(
            "InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    expected = _signature(credential, authorization, method, path_and_query, lowered, body, timestamp)
    if not hmac.compare_digest(expected.encode(), authorization.signature.encode()):
        raise AuthError("InvalidSignatureException", _MISMATCH)
    return credential


def _parse_authorization(header: str) -> _Authorization:
    """The Authorization header's parts, with AWS's IncompleteSignatureException messages."""
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        # AWS answers this for no header and for other schemes (SigV2's "AWS AK:sig", Bearer).
        raise AuthError("MissingAuthenticationToken", "Missing Authentication Token")
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise AuthError(
            "IncompleteSignatureException", f"Authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes."
        )
    parts: dict[str, str] = {}
    for component in rest.split(","):
        component = component.strip()
        if not component:
            continue
        key, equals, value = component.partition("=")
        if not equals:
            raise AuthError(
                "IncompleteSignatureException",
                f"'{component}' not a valid key=value pair (missing equal-sign) in Authorization header: '{header}'.",
            )
        parts[key.strip()] = value.strip()
    missing = [name for name in ("Credential", "Signature", "SignedHeaders") if not parts.get(name)]
    if missing:
        text = " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
        raise AuthError("IncompleteSignatureException", f"{text} Authorization={header}")

    scope = parts["Credential"].split("/")
    if len(scope) != 5 or not scope[0]:
        raise AuthError(
            "IncompleteSignatureException",
            f"Credential should be scoped to a valid region, not '{parts['Credential']}'. ",
        )
    access_key, date, region, service, terminator = scope
    if terminator != "aws4_request":
        raise AuthError(
            "InvalidSignatureException",
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'.",
        )
    if not region:
        raise AuthError("InvalidSignatureException", "Credential should be scoped to a valid region. ")
    signed_headers = tuple(parts["SignedHeaders"].split(";"))
    if len(signed_headers) > MAX_SIGNED_HEADERS:
        raise AuthError(
            "IncompleteSignatureException",
            f"SignedHeaders lists {len(signed_headers)} headers; at most {MAX_SIGNED_HEADERS} are accepted.",
        )
    for name in signed_headers:
        if not _HEADER_NAME.fullmatch(name):
            raise AuthError("IncompleteSignatureException", f"SignedHeaders has an invalid header name: {name!r}.")
    signature = parts["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise AuthError("InvalidSignatureException", _MISMATCH)
    return _Authorization(access_key, date, region, service, signed_headers, signature)


def _request_time(headers: Mapping[str, str]) -> datetime:
    """The request's signing time: X-Amz-Date (ISO 8601 basic), else Date (RFC 1123), as botocore
    signs with either."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        if not _AMZ_DATE.fullmatch(amz_date):
            raise AuthError(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601",
            )
        try:
            return datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError as exc:
            raise AuthError("IncompleteSignatureException", f"Date is not a valid date: '{amz_date}'.") from exc
    date = headers.get("date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
            # a zone at either end of the calendar (Fri, 31 Dec 9999 23:59:59 -0100) overflows here
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (TypeError, ValueError, OverflowError) as exc:
            raise AuthError("IncompleteSignatureException", f"Date is not a valid RFC 1123 date: '{date}'.") from exc
    raise AuthError(
        "IncompleteSignatureException",
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    )


def _check_clock(timestamp: datetime, now: datetime) -> None:
    now = now.astimezone(UTC)
    if timestamp < now - CLOCK_SKEW:
        raise AuthError(
            "InvalidSignatureException",
            f"Signature expired: {_iso(timestamp)} is now earlier than {_iso(now - CLOCK_SKEW)} "
            f"({_iso(now)} - 15 min.)",
        )
    if timestamp > now + CLOCK_SKEW:
        raise AuthError(
            "InvalidSignatureException",
            f"Signature not yet current: {_iso(timestamp)} is still later than {_iso(now + CLOCK_SKEW)} "
            f"({_iso(now)} + 15 min.)",
        )


def _check_scope(authorization: _Authorization, timestamp: datetime, services: Collection[str]) -> None:
    if authorization.service not in services:
        expected = "' or '".join(sorted(services))
        raise AuthError("InvalidSignatureException", f"Credential should be scoped to correct service: '{expected}'. ")
    day = _iso(timestamp)[:8]
    if authorization.date != day:
        raise AuthError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{authorization.date}' != '{day}', from '{_iso(timestamp)}'.",
        )


def _signature(
    credential: Credential,
    authorization: _Authorization,
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    timestamp: datetime,
) -> str:
    """The signature botocore computes for this request and key.

    Calls SigV4Auth's steps (canonical request, string to sign, signature) rather than add_auth,
    which would stamp the request with the server's clock and session token; the client's time
    goes in as the signing timestamp. The URL's host is a placeholder: the canonical request takes
    only its path and query, and the host from the signed Host header.
    """
    signer = _ClientSigner(
        Credentials(credential.access_key, credential.secret_key, credential.session_token),
        authorization.service,
        authorization.region,
        authorization.signed_headers,
    )
    url = f"http://fleet.invalid{path_and_query}"
    request = AWSRequest(method=method.upper(), url=url, headers=dict(headers), data=body)
    request.context["timestamp"] = _iso(timestamp)
    canonical_request = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical_request), request))


def _display(name: str) -> str:
    """A header name as AWS's messages spell it: X-Amz-Target, Content-Type."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SIGV4_TIMESTAMP)


def is_loopback(host: str) -> bool:
    """`host` (a name or an address, without port or brackets) is this machine's loopback:
    localhost, 127.x.y.z, ::1. serve listens without TLS only there, and /metrics is open
    only there (to requests naming it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
