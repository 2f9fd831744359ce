"""HTTP/1.1 over any byte stream, for the engine's API: an SSH channel to the engine's socket,
`docker system dial-stdio` on an exec channel, or a unix socket of this machine.

The parsing is h11's (sans-IO: it never reads nor allocates on its own, it is handed bytes
and hands back events): chunked transfer encoding, keep-alive, header limits. What this
module adds is the wire and the bounds: a response's headers are at most HEADER_LIMIT
bytes (h11 refuses more), a body read whole (`Response.read`) at most its caller's limit
(EngineProtocolError past it, never buffered beyond), and a streamed body (`Response.pieces`)
is handed over piece by piece as it arrives. Time is the caller's to bound
(asyncio.timeout around a call): nothing here waits without end that a timeout cannot cut.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

import h11

log = logging.getLogger(__name__)

READ_SIZE = 65536
HEADER_LIMIT = 65536  # bytes of a response's status line and headers


class ByteStream(Protocol):
    """A connection to the engine: bytes in, bytes out. `read` returns b"" at its end and
    raises OSError (or a FleetError naming the host) when the wire is lost."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


Connector = Callable[[], Awaitable[ByteStream]]


class EngineProtocolError(Exception):
    """The other end broke HTTP (a bad status line, a body past its limit, a cut stream):
    the connection is not reused."""


class Connection:
    """One HTTP/1.1 connection on one byte stream: requests one after the other (keep-alive),
    never two at once."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT)
        self.used = False  # a response was read to its end on it (a stale one may have died)
        self.closed = False

    async def request(self, method: str, target: str, body: bytes | None = None,
                      content_type: str = "application/json") -> Response:
        """Send one request and read the response's status and headers. The body is read
        through the Response, which must be read to its end before the next request."""
        headers = [("Host", "docker"), ("User-Agent", "fleet")]
        if body is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        elif method in ("POST", "PUT"):
            headers.append(("Content-Length", "0"))
        try:
            data = self._h11.send(h11.Request(method=method, target=target, headers=headers)) or b""
            if body:
                data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise EngineProtocolError(f"cannot send {method} {target}: {exc}") from exc
        await self._stream.write(data)
        event = await self._next_event()
        if not isinstance(event, h11.Response):
            raise EngineProtocolError(f"expected a response, got {type(event).__name__}")
        return Response(self, event.status_code, {k.decode().lower(): v.decode("latin-1") for k, v in event.headers})

    async def _next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise EngineProtocolError(f"the engine's answer is not HTTP/1.1: {exc}") from exc
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue: the real one follows
                return event
            # b"" at the stream's end: h11 then tells a body cut short (an error) from one
            # that ends with the connection
            self._h11.receive_data(await self._stream.read())

    def finished(self) -> None:
        """The response was read to its end: ready for the next request, if both sides keep
        the connection."""
        self.used = True
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            try:
                self._h11.start_next_cycle()
                return
            except h11.LocalProtocolError:
                pass
        self.close()

    @property
    def reusable(self) -> bool:
        return not self.closed and self._h11.our_state is h11.IDLE and self._h11.their_state is h11.IDLE

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stream.close()


class Response:
    """A response's status and headers; its body read whole (`read`) or streamed (`pieces`)."""

    def __init__(self, connection: Connection, status: int, headers: dict[str, str]) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers
        self._done = False

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (chunked encoding undone), each piece at most what one
        read of the stream brought."""
        if self._done:
            return
        try:
            while True:
                event = await self._connection._next_event()
                if isinstance(event, h11.Data):
                    if event.data:
                        yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._done = True
                    self._connection.finished()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise EngineProtocolError("the engine closed the connection in the middle of an answer")
                else:
                    raise EngineProtocolError(f"unexpected {type(event).__name__} in an answer's body")
        finally:
            if not self._done:
                self._connection.close()  # abandoned or broken mid-body: never reused

    async def read(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (EngineProtocolError past it: the rest is
        never read nor kept)."""
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            self._connection.close()
            raise EngineProtocolError(f"an answer of {int(length)} bytes, more than the {limit} bytes allowed")
        body = bytearray()
        pieces = self.pieces()
        try:
            async for piece in pieces:
                if len(body) + len(piece) > limit:
                    raise EngineProtocolError(f"an answer of more than the {limit} bytes allowed")
                body += piece
        finally:
            await pieces.aclose()
        return bytes(body)

    def abandon(self) -> None:
        """Stop reading: the connection is closed (a body half read cannot be skipped)."""
        if not self._done:
            self._connection.close()
