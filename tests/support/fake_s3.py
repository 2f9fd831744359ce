"""Two fakes of S3 for the unit tests: FakeS3, fleet.data.s3.S3's calls over a dict (what the
listing, placing and uploading code asks of S3), and PresignedS3, a small HTTP server that
answers presigned URLs as S3 does (the direct data path's host scripts run curl or wget
against it)."""

from __future__ import annotations

import asyncio
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterable

from fleet.data.locations import S3Location, S3Object
from fleet.errors import ClientError


class FakeUpload:
    """A multipart upload of FakeS3: its parts are stored as one object on complete()."""

    def __init__(self, s3: FakeS3, location: S3Location) -> None:
        self.s3 = s3
        self.location = location
        self.parts: dict[int, bytes] = {}
        self.completed = False
        self.aborted = False

    async def part(self, number: int, data: bytes) -> None:
        await asyncio.sleep(0)  # a real upload yields while the part is in flight
        if number in self.s3.failing_parts:
            raise ClientError(f"cannot upload {self.location} (part {number}): InternalError")
        self.parts[number] = bytes(data)  # a view of a buffer the uploader reuses once this returns

    async def complete(self) -> None:
        assert sorted(self.parts) == list(range(1, len(self.parts) + 1))
        self.completed = True
        self.s3.objects[str(self.location)] = b"".join(self.parts[n] for n in sorted(self.parts))

    async def abort(self) -> None:
        self.aborted = True


class FakeS3:
    """fleet.data.s3.S3 over a dict: `objects` holds every object by its URI (s3://bucket/key);
    those given may be named `bucket/key`. Listing, head and read_all read it; put and
    multipart store into it, failing the parts and URIs named in `failing_parts` and
    `failing_puts` as S3 would."""

    def __init__(self, objects: dict[str, bytes] | None = None, *, failing_parts: Iterable[int] = (),
                 failing_puts: Iterable[str] = ()) -> None:
        self.objects = {name if name.startswith("s3://") else f"s3://{name}": data
                        for name, data in (objects or {}).items()}
        self.listed: list[S3Location] = []
        self.puts: list[str] = []
        self.uploads: list[FakeUpload] = []
        self.failing_parts = set(failing_parts)
        self.failing_puts = set(failing_puts)

    # -- listing and reading
    async def list(self, prefix: S3Location) -> list[S3Object]:
        self.listed.append(prefix)
        found = [S3Object(S3Location(prefix.bucket, uri.split("/", 3)[3]), len(data))
                 for uri, data in self.objects.items() if uri.startswith(str(prefix))]
        return sorted(found, key=lambda o: o.location.key)

    async def head(self, location: S3Location) -> S3Object:
        data = self.objects.get(str(location))
        if data is None:
            raise ClientError(f"cannot read {location}: 404: Not Found")
        return S3Object(location, len(data))

    async def read_all(self, location: S3Location) -> bytes:
        data = self.objects.get(str(location))
        if data is None:
            raise ClientError(f"cannot read {location}: NoSuchKey")
        return data

    # -- uploading
    async def put(self, location: S3Location, data: bytes) -> None:
        await asyncio.sleep(0)
        self.puts.append(str(location))
        if str(location) in self.failing_puts:
            raise ClientError(f"cannot upload {location}: AccessDenied")
        self.objects[str(location)] = bytes(data)  # a view of a reused buffer, as for parts

    async def multipart(self, location: S3Location) -> FakeUpload:
        upload = FakeUpload(self, location)
        self.uploads.append(upload)
        return upload


class PresignedS3(http.server.ThreadingHTTPServer):
    """Objects by path, served on a free loopback port while used as a context manager. A URL
    carries `?exp=EPOCH&X-Amz-Signature=...`: after EPOCH, a 403 AccessDenied.
    `breaks[path]`: bytes sent before the next GET of it breaks off (once). `stalls[path]`:
    seconds each GET of it waits before answering, in turn."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, bytes] = {}
        self.breaks: dict[str, int] = {}
        self.stalls: dict[str, list[float]] = {}
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Range
        self.puts: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> PresignedS3:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: PresignedS3
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _target(self) -> tuple[str, bool]:
        path, _, query = self.path.partition("?")
        found = re.search(r"exp=(\d+(?:\.\d+)?)", query)
        expired = found is not None and time.time() > float(found.group(1))
        return path, expired

    def _error(self, status: int, code: str) -> None:
        body = f"<Error><Code>{code}</Code></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _ = self._target()
        self.server.seen.append(("GET", path, self.headers.get("Range")))
        stalls = self.server.stalls.get(path)
        time.sleep(stalls.pop(0) if stalls else 0)
        path, expired = self._target()
        if expired:
            return self._error(403, "AccessDenied")
        if path not in self.server.objects:
            return self._error(404, "NoSuchKey")
        body = self.server.objects[path]
        start = 0
        if self.headers.get("Range"):
            start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if path in self.server.breaks:
            self.wfile.write(part[:self.server.breaks.pop(path)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)  # the bytes sent arrive, then the end
            time.sleep(0.1)
            self.close_connection = True
            return
        self.wfile.write(part)

    def do_PUT(self) -> None:
        path, expired = self._target()
        self.server.seen.append(("PUT", path, None))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if expired:
            return self._error(403, "AccessDenied")
        self.server.puts[path] = body
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

