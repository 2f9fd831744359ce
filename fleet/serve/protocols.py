"""The two wire protocols of serve's services, as the request pipeline (server.py) uses them:
which operation a request names and its parameters, and how an answer or an error is sent.

- AWS JSON 1.1 (SageMaker, CloudWatch Logs): `POST /`, `X-Amz-Target: Service.Operation`, a
  JSON object; answered 200 with the JSON output, errors `{"__type": CODE, "message": ...}`.
- Query (STS): a form-encoded POST (`Action=...&Version=...`, no X-Amz-Target), answered in
  XML, errors in `<ErrorResponse>`, authentication faults under STS's own codes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

from fleet.serve.auth import SERVICES, Principal
from fleet.serve.errors import SerializationException, UnknownOperationException
from fleet.serve.sts import responses as sts
from fleet.serve.sts.exceptions import QUERY_CODES

CONTENT_TYPE = "application/x-amz-json-1.1"
# An operation: its parameters (the JSON object, the form's fields) and the principal that
# signed in, its result out.
Operation = Callable[[Any, Principal], Awaitable[dict]]


class _Protocol:
    """A wire protocol over the operations of its services, keyed by the name requests give
    them (`Service.Operation`)."""

    scope: Collection[str]  # the services a request's SigV4 scope may name
    required: tuple[str, ...]  # the headers its signature must cover

    def __init__(self, operations: Mapping[str, Operation]) -> None:
        self.operations = operations


class Json(_Protocol):
    """AWS JSON 1.1. AWS refuses a signature that leaves the operation or the body's type
    unsigned (else the operation of a request signing only host;x-amz-date could be
    rewritten in transit)."""

    scope: Collection[str] = SERVICES
    required = ("x-amz-target", "content-type")

    def operation(self, headers: Mapping[str, str], body: bytes) -> tuple[str, Any]:
        """(X-Amz-Target, the body's object); UnknownOperationException for a target no
        service answers, SerializationException for a body that is not a JSON object."""
        target = headers.get("x-amz-target", "")
        if target not in self.operations:
            raise UnknownOperationException(f"fleet serve does not answer {target or 'this request'}")
        try:
            document = json.loads(body or b"{}")
            if not isinstance(document, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise SerializationException("the request body is not a JSON object") from None
        return target, document

    def answer(self, target: str, result: dict, request_id: str) -> web.Response:
        return web.Response(status=200, body=json.dumps(result).encode(), content_type=CONTENT_TYPE,
                            headers={"x-amzn-RequestId": request_id})

    def error(self, code: str, message: str, status: int, request_id: str) -> web.Response:
        return web.Response(status=status, body=json.dumps({"__type": code, "message": message}).encode(),
                            content_type=CONTENT_TYPE,
                            headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code})


class Query(_Protocol):
    """The Query protocol, scoped to the service `sts`, Content-Type signed (it is what routed
    the request here)."""

    scope: Collection[str] = ("sts",)
    required = ("content-type",)

    def operation(self, headers: Mapping[str, str], body: bytes) -> tuple[str, Any]:
        """("STS.Action", the form's fields); MalformedQueryString, MissingAction, InvalidAction."""
        fields = sts.parse_form(body)
        return f"STS.{sts.action(fields)}", fields

    def answer(self, target: str, result: dict, request_id: str) -> web.Response:
        return self._respond(200, sts.result_xml(target.partition(".")[2], result, request_id), request_id)

    def error(self, code: str, message: str, status: int, request_id: str) -> web.Response:
        code = QUERY_CODES.get(code, code)
        return self._respond(status, sts.error_xml(code, message, status, request_id), request_id)

    @staticmethod
    def _respond(status: int, body: bytes, request_id: str) -> web.Response:
        return web.Response(status=status, body=body, content_type=sts.XML, headers={"x-amzn-RequestId": request_id})


def is_query(headers: Mapping[str, str]) -> bool:
    """Whether a request is the Query protocol's (a form body and no X-Amz-Target), not AWS JSON's."""
    return sts.is_query(headers)
