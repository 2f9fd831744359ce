"""One paginator for the List and Describe operations that page a list serve computes whole
(ListProcessingJobs, DescribeLogStreams): a page of at most the request's limit, and a
token naming where the next page starts. The log reads page by position in the log instead
(logs/events.py: GetLogEvents' f/OFFSET, FilterLogEvents' last event considered).

A token is opaque to the client, base64 of `{"at": N}`; a token serve did not give is the
service's ValidationException."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fleet.serve.errors import ValidationException

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str | None


def _start(token: str | None) -> int:
    if token is None:
        return 0
    try:
        at: Any = json.loads(base64.urlsafe_b64decode(token.encode()))["at"]
        if isinstance(at, int) and not isinstance(at, bool) and at >= 0:
            return at
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise ValidationException("The NextToken is invalid")


def paginate(items: Sequence[T], token: str | None, limit: int) -> Page[T]:
    """The page of `items` that `token` (None: the first) starts, at most `limit` long, and
    the token of the next page (None after the last)."""
    start = _start(token)
    end = start + limit
    following = base64.urlsafe_b64encode(json.dumps({"at": end}).encode()).decode() if end < len(items) else None
    return Page(list(items[start:end]), following)
