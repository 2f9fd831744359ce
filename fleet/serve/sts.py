"""STS GetCallerIdentity for `fleet serve`: the "who am I" call boto3, the AWS CLI and the
SageMaker SDK make before anything else (the SDK, to name its default bucket
`sagemaker-REGION-ACCOUNT`).

STS speaks the AWS Query protocol, not JSON: a form-encoded POST
(`Action=GetCallerIdentity&Version=2011-06-15`, no X-Amz-Target), answered in XML, errors in
the Query protocol's `<ErrorResponse>`. Requests are SigV4-verified as every other request of
serve's (auth.py), scoped to the service `sts`; the answer names the profile whose key signed:
Account is serve's one account (the ACCOUNT of every ProcessingJobArn it returns), Arn
`arn:aws:iam::ACCOUNT:user/PROFILE`, UserId a stable IAM-style id derived from the profile.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from aiohttp import web

from fleet.serve.api import ApiError
from fleet.serve.auth import AuthError, KeyRing, Principal, verify

log = logging.getLogger(__name__)

VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
FORM = "application/x-www-form-urlencoded"
XML = "text/xml"
# The form's fields at most (GetCallerIdentity takes two): a body of thousands of `&`s is not parsed.
MAX_FIELDS = 32
# What a JSON service answers for a fault of authentication, and what STS (the Query protocol)
# answers for the same fault.
_QUERY_CODES = {
    "IncompleteSignatureException": "IncompleteSignature",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "UnrecognizedClientException": "InvalidClientTokenId",
}
# Characters XML 1.0 cannot carry at all, escaped or not (a header echoed in a message may hold them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class QueryError(Exception):
    """An STS request refused: `code` and `message` as STS answers them, `status` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def is_query(headers: Mapping[str, str]) -> bool:
    """Whether a request is the Query protocol's (a form body and no X-Amz-Target), not AWS JSON's."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type == FORM and "x-amz-target" not in headers


def user_id(principal: Principal) -> str:
    """An IAM-style unique id (AIDA and 17 of [A-Z2-7], as an IAM user's) for a profile: the same
    for the same profile on every server, and never the access key (which AWS keeps out of it too)."""
    digest = base64.b32encode(hashlib.sha256(principal.name.encode()).digest()).decode()
    return "AIDA" + digest[:17]


def caller_identity(principal: Principal, account: str) -> dict[str, str]:
    """GetCallerIdentity's result for a request signed by `principal`'s key."""
    return {"UserId": user_id(principal), "Account": account,
            "Arn": f"arn:aws:iam::{account}:user/{principal.name}"}


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))


def identity_xml(identity: Mapping[str, str], request_id: str) -> bytes:
    """The answer as STS sends it (botocore's sts model: a GetCallerIdentityResult wrapper)."""
    fields = "".join(f"    <{name}>{_text(identity[name])}</{name}>\n" for name in ("Arn", "UserId", "Account"))
    return (f'<GetCallerIdentityResponse xmlns="{NAMESPACE}">\n'
            f"  <GetCallerIdentityResult>\n{fields}  </GetCallerIdentityResult>\n"
            f"  <ResponseMetadata>\n    <RequestId>{_text(request_id)}</RequestId>\n  </ResponseMetadata>\n"
            f"</GetCallerIdentityResponse>\n").encode()


def error_xml(code: str, message: str, status: int, request_id: str) -> bytes:
    """The Query protocol's error: Type Sender for a fault of the request, Receiver for the server's."""
    kind = "Receiver" if status >= 500 else "Sender"
    return (f'<ErrorResponse xmlns="{NAMESPACE}">\n'
            f"  <Error>\n    <Type>{kind}</Type>\n    <Code>{_text(code)}</Code>\n"
            f"    <Message>{_text(message)}</Message>\n  </Error>\n"
            f"  <RequestId>{_text(request_id)}</RequestId>\n</ErrorResponse>\n").encode()


def parse_form(body: bytes) -> dict[str, str]:
    """The form's fields; QueryError for a body that is not one (not UTF-8, a malformed pair, a
    field given twice: which one the operation would take is not for the server to pick)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise QueryError("MalformedQueryString", f"the request body is not a form: {exc}") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise QueryError("MalformedQueryString", f"the request gives the parameter {name!r} more than once")
        fields[name] = value
    return fields


def answer(fields: Mapping[str, str], principal: Principal, account: str, request_id: str) -> bytes:
    """The XML answer to a verified request's form, or QueryError for an action STS would not
    find (fleet serve answers GetCallerIdentity alone)."""
    action = fields.get("Action")
    if not action:
        raise QueryError("MissingAction", "The request must contain the parameter Action.")
    version = fields.get("Version", "")
    if action != "GetCallerIdentity" or version != VERSION:
        raise QueryError("InvalidAction", f"Could not find operation {action} for version {version or 'NO_VERSION'}"
                                          f" (fleet serve answers GetCallerIdentity, version {VERSION})")
    return identity_xml(caller_identity(principal, account), request_id)


def _respond(status: int, body: bytes, request_id: str) -> web.Response:
    return web.Response(status=status, body=body, content_type=XML, headers={"x-amzn-RequestId": request_id})


async def handle(request: web.Request, keys: KeyRing, account: str,
                 read_body: Callable[[web.Request], Awaitable[bytes]],
                 read_headers: Callable[[web.Request], dict[str, str]]) -> web.Response:
    """Answer one Query-protocol request: the body read and the headers parsed as server.py does
    for the JSON protocols (`read_body`, `read_headers`), SigV4 verified (scope `sts`,
    Content-Type signed: it is what routed the request here), then the action."""
    request_id = str(uuid.uuid4())

    def refuse(code: str, message: str, status: int) -> web.Response:
        return _respond(status, error_xml(code, message, status, request_id), request_id)

    try:
        body = await read_body(request)
    except ApiError as exc:  # the rest of the body is not read: the connection ends with the answer
        response = refuse(exc.code, exc.message, exc.status)
        response.force_close()
        return response
    try:
        headers = read_headers(request)
        credential = verify(keys, request.method, request.path_qs, headers, body, datetime.now(UTC),
                            services=("sts",), required=("content-type",))
    except AuthError as exc:
        return refuse(_QUERY_CODES.get(exc.code, exc.code), exc.message, exc.status)
    try:
        return _respond(200, answer(parse_form(body), credential.principal, account, request_id), request_id)
    except QueryError as exc:
        return refuse(exc.code, exc.message, exc.status)
    except Exception as exc:  # a bug of fleet's: the client gets a 500, the server goes on
        log.exception("STS request failed")
        return refuse("InternalFailure", f"fleet serve failed: {type(exc).__name__}", 500)
