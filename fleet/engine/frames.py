"""A container's log stream as the engine sends it, back into the container's bytes, exactly.

Without a TTY the engine multiplexes stdout and stderr: each frame is an 8-byte header
(the stream: 1 stdout, 2 stderr, 3 the engine's own error; three zero bytes; the payload's
length, big-endian uint32) then the payload. With a TTY the stream is the raw bytes. The
frames arrive cut anywhere by the transport (a header across two reads, a payload across
many): `LogFrames` is sans-IO, fed whatever arrived, and hands the payload back in pieces as
it comes: a header claiming 4 GiB allocates nothing (the payload is passed on as it
arrives, never gathered to its length).

Resuming at a byte: the API's `since` counts seconds, fleet's log offset counts bytes (the
container's stdout and stderr in the order they were written, as `docker logs 2>&1`
stores them): the first `skip` payload bytes are dropped here, whichever stream they are of.
"""

from __future__ import annotations

import struct

STDOUT = 1
STDERR = 2
SYSTEM_ERROR = 3  # the engine's own error in the stream (moby's stdcopy: Systemerr)
HEADER = 8
ERROR_LIMIT = 4096  # bytes of an engine error frame kept


class FrameError(Exception):
    """The stream is not the engine's framing (a header of an unknown stream), or carries
    the engine's own error (stream 3)."""


class LogFrames:
    """Feed it the log stream's bytes as they arrive; it returns the container's bytes, as
    (stream, bytes) pieces in order, after dropping the first `skip` of them."""

    def __init__(self, *, tty: bool, skip: int = 0) -> None:
        self.tty = tty
        self.skip = skip  # payload bytes still to drop
        self.delivered = 0  # payload bytes handed out
        self._header = bytearray()
        self._stream = 0
        self._left = 0  # payload bytes of the current frame still to come
        self._error = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The container's bytes in `data` (and in what came before it)."""
        out: list[tuple[int, bytes]] = []
        if self.tty:
            self._emit(out, STDOUT, data)
            return out
        view = memoryview(data)
        while view:
            if self._left == 0:
                take = min(HEADER - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < HEADER:
                    break
                stream, length = struct.unpack(">B3xI", self._header)
                self._header.clear()
                if stream not in (0, STDOUT, STDERR, SYSTEM_ERROR):
                    raise FrameError(f"a log frame of unknown stream {stream}: not the engine's framing")
                self._stream, self._left = stream, length
                if stream == SYSTEM_ERROR and length == 0:
                    raise FrameError("the engine reported an error in the log stream")
                continue
            take = min(self._left, len(view))
            piece, view = view[:take], view[take:]
            self._left -= take
            if self._stream == SYSTEM_ERROR:
                self._error += piece[:max(0, ERROR_LIMIT - len(self._error))]
                if self._left == 0:
                    raise FrameError(f"the engine's error in the log stream: "
                                     f"{self._error.decode(errors='replace').strip()}")
                continue
            self._emit(out, self._stream or STDOUT, bytes(piece))
        return out

    def _emit(self, out: list[tuple[int, bytes]], stream: int, piece: bytes) -> None:
        if self.skip:
            dropped = min(self.skip, len(piece))
            self.skip -= dropped
            piece = piece[dropped:]
        if piece:
            self.delivered += len(piece)
            out.append((stream, piece))

    @property
    def partial(self) -> bool:
        """The stream ended inside a frame (its header or its payload)."""
        return bool(self._header) or self._left > 0
