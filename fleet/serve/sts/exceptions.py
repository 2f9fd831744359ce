"""STS's error codes, a class each. STS speaks the Query protocol, whose codes for a fault of
authentication differ from the JSON services' (QUERY_CODES)."""

from __future__ import annotations

from fleet.serve.errors import ServiceError

# What a JSON service answers for a fault of authentication, and what STS answers for the same fault.
QUERY_CODES = {
    "IncompleteSignatureException": "IncompleteSignature",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "UnrecognizedClientException": "InvalidClientTokenId",
}


class QueryError(ServiceError):
    """An STS request refused."""


class MalformedQueryString(QueryError):
    """A body that is not one form (not UTF-8, a malformed pair, a field given twice)."""

    code = "MalformedQueryString"


class MissingAction(QueryError):
    code = "MissingAction"


class InvalidAction(QueryError):
    """An action (or version) STS would not find: fleet serve answers GetCallerIdentity alone."""

    code = "InvalidAction"
