"""CloudWatch Logs' reads over the stored logs: GetLogEvents on one host's log, FilterLogEvents
across several, each line an event whose `timestamp` (and `ingestionTime`) is the time it
reached the controller (runtime/logindex.py). responses.py decides who may read which stream and
hands this module `Source`s; nothing here knows jobs or owners.

Events: a line each (its newline dropped), a line longer than EVENT_BYTES cut into events of
that size (CloudWatch's limit), a line still being written left for a later call unless its
job has ended. Bounded whatever the log holds: a log is read forward with a 64 KiB buffer,
never whole; a time is found by bisecting the index; a page is at most PAGE_BYTES and
PAGE_EVENTS; one FilterLogEvents call does at most SCAN_WORK of matching (then a page, maybe
empty, with a nextToken, as CloudWatch's own partial pages): an event costs its bytes and a
fixed overhead, once for reading it and once per term of the filterPattern (at most
PATTERN_CHARS long, CloudWatch's own limit), so that a pattern of hundreds of terms over
millions of one-byte lines cannot hold a thread for minutes.

Where CloudWatch does not say, fleet chose:
- Tokens are positions: GetLogEvents `f/OFFSET` and `b/OFFSET` (bytes of the log); the
  request's startTime/endTime apply again on every call. FilterLogEvents' nextToken names the
  last event considered (timestamp, stream, end offset): the next page starts after it.
- FilterLogEvents interleaves by (timestamp, stream name, position) and, while a job of its
  streams runs, answers only events at least SETTLE_MS old: `aws logs tail --follow` asks again
  from the newest timestamp it saw, so a line of another host that arrived in that same
  instant but was not yet stored would be skipped for good; a second's wait makes that
  impossible in practice. An ended job's logs grow no more: nothing is held back.
- FilterLogEvents' endTime includes events at endTime ("events with a timestamp later than
  this time are not returned"), GetLogEvents' excludes them ("equal to or later ... not
  included"): each as its API reference says.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import heapq
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fleet.runtime.logindex import LogIndex, Timeline

EVENT_BYTES = 256 * 1024  # a longer line is cut into events of this size (CloudWatch's limit)
PAGE_BYTES = 1_048_576  # at most 1 MB of events a page (as CloudWatch)
PAGE_EVENTS = 10_000  # and at most 10,000 events
EVENT_OVERHEAD = 26  # bytes CloudWatch counts per event beside its message
BACK_SCAN = 1 << 20  # bytes read backward at most to find a line's start (a longer line's cut moves)
SCAN_BYTES = 16 << 20  # bytes of logs one FilterLogEvents call reads at most (a pattern of one term)
SCAN_WORK = 2 * SCAN_BYTES  # what one call matches at most: (terms + 1) * (bytes + SCAN_OVERHEAD) an event
SCAN_OVERHEAD = 32  # the cost of an event beside its bytes (a one-byte line is not free to read or test)
PATTERN_CHARS = 1024  # a filterPattern's length at most (CloudWatch's FilterPattern: 0 to 1024)
SETTLE_MS = 1000  # FilterLogEvents answers events this old or older (see the module)
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Source:
    """A log stream as responses.py allows the caller to read it."""

    stream: str  # its name, JOBNAME/algo-k-EPOCH
    path: Path  # the stored log
    fallback: int  # ms: the time of lines no index covers (an older fleet's run): the job's start
    complete: bool  # its job ended: the log grows no more, an unfinished last line is an event too


@dataclass(frozen=True)
class Event:
    start: int  # offset of its first byte in the log
    end: int  # offset after it (its newline included)
    stamp: int  # ms: when its last byte reached the controller
    data: bytes


class StreamReader:
    """One log, as it is now: its size is taken before its index is opened, and nothing past
    that size is read, so that every byte read has its record (the writer writes a record
    before the bytes it times)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        try:
            self.size = os.stat(source.path).st_size
        except FileNotFoundError:
            self.size = 0
        self.index = LogIndex.open(source.path) if self.size else None
        self.timeline = Timeline(self.index, source.fallback)
        self._file: BinaryIO | None = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.index is not None:
            self.index.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _opened(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.source.path, "rb", buffering=_BLOCK)  # noqa: SIM115 (closed with the reader)
        return self._file

    def line_start(self, pos: int, floor: int = 0) -> int:
        """Where the line holding byte `pos` starts (not before `floor`), found within
        BACK_SCAN bytes (a longer line is taken to start there)."""
        if pos <= floor or pos > self.size:
            return max(floor, min(pos, self.size))
        fd = self._opened().fileno()
        end = pos
        while end > floor and pos - end < BACK_SCAN:
            low = max(floor, end - _BLOCK)
            found = os.pread(fd, end - low, low).rfind(b"\n")
            if found >= 0:
                return low + found + 1
            end = low
        return end

    def first_event(self, ms: int | None) -> int:
        """Where to read from for the events of time `ms` or later (the log's start for None;
        earlier events of that first line are for the caller to skip)."""
        if ms is None:
            return 0
        position = self.timeline.position(ms)
        return self.size if position is None else self.line_start(position)

    def events(self, start: int) -> Iterator[Event]:
        """The events from offset `start` (a line's start) to the size taken."""
        if start >= self.size:
            return
        file = self._opened()
        file.seek(start)
        pos = start
        while pos < self.size:
            data = file.readline(min(EVENT_BYTES, self.size - pos))
            if not data:
                return
            if data.endswith(b"\n"):
                message = data[:-1]
            elif len(data) == EVENT_BYTES or self.source.complete:
                message = data
            else:
                return  # a line still being written
            yield Event(pos, pos + len(data), self.timeline.stamp(pos + len(data) - 1), message)
            pos += len(data)


def _shaped(event: Event) -> dict[str, Any]:
    return {"timestamp": event.stamp, "message": event.data.decode("utf-8", errors="replace"),
            "ingestionTime": event.stamp}


def _cost(event: Event) -> int:
    return len(event.data) + EVENT_OVERHEAD


def get_events(source: Source, *, start_time: int | None, end_time: int | None, token: str | None,
               from_head: bool, limit: int) -> dict[str, Any]:
    """GetLogEvents on one stream. `token` is a checked `f/N` or `b/N`, or None: then the
    first page (`from_head`) or the last one (CloudWatch's default)."""
    with StreamReader(source) as reader:
        low = reader.first_event(start_time)
        high = reader.size
        if end_time is not None:
            position = reader.timeline.position(end_time)
            high = reader.size if position is None else min(high, position)

        def wanted(event: Event) -> bool:
            return start_time is None or event.stamp >= start_time

        offset = int(token[2:]) if token else None
        if token is None and from_head or token is not None and token.startswith("f/"):
            begin = max(low, offset) if offset is not None else low
            events: list[Event] = []
            size, pos = 0, begin
            for event in reader.events(begin):
                if event.end > high or len(events) == limit or size + _cost(event) > PAGE_BYTES:
                    break
                pos = event.end
                if wanted(event):
                    events.append(event)
                    size += _cost(event)
            forward = token if offset == pos and token else f"f/{pos}"
            backward = f"b/{events[0].start}" if events else f"b/{begin}"
        else:
            end = min(high, offset if offset is not None else high)
            window: collections.deque[Event] = collections.deque()
            size = 0
            for event in reader.events(reader.line_start(max(low, end - PAGE_BYTES), low)):
                if event.end > end:
                    break
                if not wanted(event):
                    continue
                window.append(event)
                size += _cost(event)
                while len(window) > limit or size > PAGE_BYTES:
                    size -= _cost(window.popleft())
            events = list(window)
            first = events[0].start if events else end
            backward = token if offset == first and token else f"b/{first}"
            forward = f"f/{events[-1].end}" if events else f"f/{end}"
    return {"events": [_shaped(e) for e in events], "nextForwardToken": forward, "nextBackwardToken": backward}


def stream_times(source: Source) -> tuple[int, int, int]:
    """(first event's time, last event's time, size in bytes) of a stream, from its index."""
    with StreamReader(source) as reader:
        return reader.timeline.first, reader.timeline.last(), reader.size


# -- FilterLogEvents ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """A parsed filterPattern: a test of a message, and how many terms it tests (its cost)."""

    every: tuple[bytes, ...]
    none: tuple[bytes, ...]
    some: tuple[bytes, ...]

    @property
    def terms(self) -> int:
        return len(self.every) + len(self.none) + len(self.some)

    def __call__(self, message: bytes) -> bool:
        return (all(t in message for t in self.every) and not any(t in message for t in self.none)
                and (not self.some or any(t in message for t in self.some)))


def parse_pattern(text: str) -> Pattern | None:
    """A filterPattern of CloudWatch's term forms, as a test of a message (None: every
    message matches): `TERM` and `"a phrase"` must all appear, `-TERM` must not, and of the
    `?TERM`s at least one must. Case-sensitive, matched anywhere in the message. ValueError
    for the JSON (`{...}`), space-delimited (`[...]`) and regex (`%...%`) forms."""
    if len(text) > PATTERN_CHARS:
        raise ValueError(f"filterPattern is {len(text)} characters long; at most {PATTERN_CHARS}")
    text = text.strip()
    if not text:
        return None
    if text[0] in "{[%":
        raise ValueError(f"filterPattern {text!r}: fleet serve matches terms, \"quoted phrases\", ?TERM "
                         f"(any of) and -TERM (none of); not JSON, space-delimited or regex patterns")
    every: list[bytes] = []
    none: list[bytes] = []
    some: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        sign = text[i] if text[i] in "?-" else ""
        i += len(sign)
        if i < len(text) and text[i] == '"':
            term, i = _quoted(text, i)
        else:
            j = i
            while j < len(text) and not text[j].isspace():
                j += 1
            term, i = text[i:j], j
        if not term:
            raise ValueError(f"filterPattern {text!r}: {sign or 'a'} with no term")
        {"": every, "-": none, "?": some}[sign].append(term.encode())
    return Pattern(tuple(every), tuple(none), tuple(some))


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The phrase of the quotes at text[i] (\\" and \\\\ escaped) and the index after them."""
    phrase: list[str] = []
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and j + 1 < len(text):
            phrase.append(text[j + 1])
            j += 2
        elif text[j] == '"':
            return "".join(phrase), j + 1
        else:
            phrase.append(text[j])
            j += 1
    raise ValueError(f"filterPattern {text!r}: a quote that does not close")


def _token(stamp: int, stream: str, end: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"t": stamp, "s": stream, "o": end}).encode()).decode()


def parse_token(token: str) -> tuple[int, str, int]:
    """A FilterLogEvents nextToken: (timestamp, stream, end offset) of the last event it
    considered; ValueError if it is not one fleet gave."""
    try:
        at = json.loads(base64.urlsafe_b64decode(token.encode()))
        stamp, stream, end = at["t"], at["s"], at["o"]
        if isinstance(stamp, int) and isinstance(stream, str) and isinstance(end, int) and end >= 0 \
                and not isinstance(stamp, bool) and not isinstance(end, bool):
            return stamp, stream, end
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise ValueError("The specified nextToken is invalid.")


def event_id(stream: str, start: int) -> str:
    """A stable id of the event at `start` of `stream` (56 digits, as CloudWatch's): `aws logs
    tail --follow` drops the events it has seen by their id."""
    digest = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:16], "big") % 10**36
    return f"{digest:036d}{start:020d}"


def _since(events: Iterator[Event], since: int | None) -> Iterator[Event]:
    return (e for e in events if since is None or e.stamp >= since)


def filter_events(sources: list[Source], *, start_time: int | None, end_time: int | None,
                  pattern: Pattern | None, limit: int, token: tuple[int, str, int] | None,
                  now: int | None = None) -> dict[str, Any]:
    """FilterLogEvents over `sources`, oldest first, interleaved. A stream is opened only once
    the merge reaches its first time (so a search over thousands of ended jobs holds open only
    the streams that overlap in time)."""
    last = end_time if end_time is not None else 2**63
    if not all(source.complete for source in sources):  # a live stream: hold back its newest second
        last = min(last, (time.time_ns() // 1_000_000 if now is None else now) - SETTLE_MS)
    heap: list[tuple[int, str, int]] = []  # (time, stream, start: -1 for a stream not opened yet)
    pending: dict[str, tuple[Source, int | None, int | None]] = {}  # stream: (source, from time, from offset)
    for source in sources:
        since, offset = start_time, None
        if token is not None:
            stamp, stream, end = token
            if source.stream < stream:
                since = stamp + 1 if since is None else max(since, stamp + 1)
            else:
                since = stamp if since is None else max(since, stamp)
                offset = end if source.stream == stream else None
        with StreamReader(source) as reader:
            if not reader.size or reader.timeline.first > last:
                continue
            if since is not None and source.complete and reader.timeline.last() < since:
                continue
            first = reader.timeline.first if since is None else max(since, reader.timeline.first)
        pending[source.stream] = (source, since, offset)
        heapq.heappush(heap, (first, source.stream, -1))
    open_streams: dict[str, tuple[StreamReader, Iterator[Event]]] = {}
    current: dict[str, Event] = {}
    found: list[dict[str, Any]] = []
    size = scanned = 0
    factor = 1 + (pattern.terms if pattern is not None else 0)  # reading an event, and each term tested
    next_token: str | None = None
    considered: tuple[int, str, int] | None = None
    try:
        while heap:
            stamp, stream, start = heapq.heappop(heap)
            if stamp > last:
                break
            if start < 0:
                source, since, offset = pending.pop(stream)
                reader = StreamReader(source)
                begin = offset if offset is not None else reader.first_event(since)
                open_streams[stream] = (reader, _since(reader.events(begin), since))
            else:
                event = current.pop(stream)
                if pattern is None or pattern(event.data):
                    if len(found) == limit or size + _cost(event) > PAGE_BYTES:
                        if considered is not None:
                            next_token = _token(*considered)
                        break
                    found.append({"logStreamName": stream, **_shaped(event), "eventId": event_id(stream, event.start)})
                    size += _cost(event)
                considered = (event.stamp, stream, event.end)
                scanned += factor * (len(event.data) + SCAN_OVERHEAD)
                if scanned >= SCAN_WORK:
                    next_token = _token(*considered)
                    break
            reader, events = open_streams[stream]
            upcoming = next(events, None)
            if upcoming is None:
                reader.close()
                del open_streams[stream]
                continue
            current[stream] = upcoming
            heapq.heappush(heap, (upcoming.stamp, stream, upcoming.start))
    finally:
        for reader, _ in open_streams.values():
            reader.close()
    answer: dict[str, Any] = {"events": found, "searchedLogStreams": []}
    if next_token is not None:
        answer["nextToken"] = next_token
    return answer
