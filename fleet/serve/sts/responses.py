"""STS GetCallerIdentity for `fleet serve`: the "who am I" call boto3, the AWS CLI and the
SageMaker SDK make before anything else (the SDK, to name its default bucket
`sagemaker-REGION-ACCOUNT`).

STS speaks the AWS Query protocol, not JSON: a form-encoded POST
(`Action=GetCallerIdentity&Version=2011-06-15`, no X-Amz-Target), answered in XML, errors in
the Query protocol's `<ErrorResponse>`. Requests go through serve's one request pipeline
(server.py: SigV4-verified as every other request, scoped to the service `sts`); the answer
names the profile whose key signed: Account is serve's one account (the ACCOUNT of every
ProcessingJobArn it returns), Arn `arn:aws:iam::ACCOUNT:user/PROFILE`, UserId a stable
IAM-style id derived from the profile.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from fleet.serve.auth import Principal
from fleet.serve.sts.exceptions import InvalidAction, MalformedQueryString, MissingAction

VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
FORM = "application/x-www-form-urlencoded"
XML = "text/xml"
# The form's fields at most (GetCallerIdentity takes two): a body of thousands of `&`s is not parsed.
MAX_FIELDS = 32
# Characters XML 1.0 cannot carry at all, escaped or not (a header echoed in a message may hold them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
    return result_xml("GetCallerIdentity", {name: identity[name] for name in ("Arn", "UserId", "Account")},
                      request_id)


def result_xml(action: str, result: Mapping[str, str], request_id: str) -> bytes:
    """An action's answer: its result's fields in the Query protocol's wrappers."""
    fields = "".join(f"    <{name}>{_text(value)}</{name}>\n" for name, value in result.items())
    return (f'<{action}Response xmlns="{NAMESPACE}">\n'
            f"  <{action}Result>\n{fields}  </{action}Result>\n"
            f"  <ResponseMetadata>\n    <RequestId>{_text(request_id)}</RequestId>\n  </ResponseMetadata>\n"
            f"</{action}Response>\n").encode()


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
        raise MalformedQueryString(f"the request body is not a form: {exc}") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise MalformedQueryString(f"the request gives the parameter {name!r} more than once")
        fields[name] = value
    return fields


def action(fields: Mapping[str, str]) -> str:
    """The action a verified request's form asks for, or MissingAction, InvalidAction for one
    STS would not find (fleet serve answers GetCallerIdentity alone)."""
    asked = fields.get("Action")
    if not asked:
        raise MissingAction("The request must contain the parameter Action.")
    version = fields.get("Version", "")
    if asked != "GetCallerIdentity" or version != VERSION:
        raise InvalidAction(f"Could not find operation {asked} for version {version or 'NO_VERSION'}"
                            f" (fleet serve answers GetCallerIdentity, version {VERSION})")
    return asked


class Sts:
    """The STS operations of a serve whose one account is `account`."""

    def __init__(self, account: str) -> None:
        self.account = account

    def operations(self) -> dict[str, Any]:
        """Operation name: handler."""
        return {"GetCallerIdentity": self.get_caller_identity}

    async def get_caller_identity(self, fields: Mapping[str, str], caller: Principal) -> dict[str, str]:
        return caller_identity(caller, self.account)
