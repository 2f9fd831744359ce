"""The direct data path (inventory `data_path: direct`): each host moves its own bytes, with
URLs the controller presigns. Through the controller every byte costs its one event loop
(measured 1.75 CPU-seconds per GiB delivered, issue 13); here the controller only signs
(~20 µs a URL, fleet.data.presign) and reads one short line per object.

The controller keeps everything but the bytes: the credentials, the listing, the sharding
(fleet.data.sources.assignments, as on the controller path), every relative path (validated
by safe_relative_path), and every decision about a failure (resume, sign again, give up).
The host runs one command per lane, fetch.sh or put.sh, which reads requests on stdin (a
line of numbers, the relative path, the URL) and answers a line each, in order; WINDOW
requests are in flight per lane, so a round trip is not paid per object.

A URL is signed just before it is sent, valid for `url_seconds()` (15 minutes), and goes
over the command's stdin only: never into an argv (the host's curl reads it from a config on
a pipe), a log line, an error, the record or a file. One that expired before the host used
it (its 403 came after its expiry) is signed again and the GET resumed at the byte the host
holds; a 5xx or a broken connection is retried with backoff (S3_REQUESTS), resumed likewise;
anything else is a ClientError naming the key and the host.

Inputs land as on the controller path: in the input's partial directory (the session moves
it into place on `go`), each file under its final name only once complete and its size
checked (its bytes go to a private piece file first). Outputs: the host lists the output
directory with `find` (never following a symlink: a symlink or a special file is skipped
with the controller path's warning), and PUTs each regular file (single PUT, up to
MAX_PUT). Only for a tree no container writes any more: EndOfJob outputs, after the
container exited. Continuous outputs (read while the container runs, which may swap a path
for a symlink) and file:// data keep the controller path.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from fleet.data.locations import S3Location, safe_relative_path
from fleet.data.outputs import OutputCount, shown
from fleet.data.sources import InputObject
from fleet.data.staging import Destination, TransferCount
from fleet.errors import ClientError, HostError
from fleet.fanout import all_of, task_group
from fleet.host import Status, command as host_command, host_failure
from fleet.retry import S3_REQUESTS, Retrying
from fleet.transport.base import RemoteProcess, Transport
from fleet.transport.lanes import Lanes

log = logging.getLogger(__name__)

URL_SECONDS = 900  # a URL's validity: long enough for one object's transfer, re-signed per try
URL_SECONDS_VARIABLE = "FLEET_PRESIGNED_URL_SECONDS"  # shorter, for tests of the expiry
LANES = 4  # fetch.sh / put.sh commands per host and input or output
WINDOW = 4  # requests in flight per lane
MAX_PUT = 5 * 2**30  # S3's limit for a single PUT; bigger files need multipart (not yet direct)
RESIGNS = 20  # URLs of one object that may expire before the host uses one
LINE_LIMIT = 4096  # a reply line longer than this is no reply
SAID_LIMIT = 4096  # bytes of the host command's stderr kept for an error
FEED = 64  # output files listed and waiting for a lane

# (method, object, validity in seconds) → a presigned URL.
Sign = Callable[[str, S3Location, int], Awaitable[str]]


def url_seconds() -> int:
    """How long a URL stays valid: URL_SECONDS, or FLEET_PRESIGNED_URL_SECONDS (1..3600)."""
    value = os.environ.get(URL_SECONDS_VARIABLE, "")
    if value.isdigit() and 1 <= int(value) <= 3600:
        return int(value)
    return URL_SECONDS


def signer(s3) -> Sign:
    """URLs signed by the job's S3 client (fleet.data.s3.S3), with its credentials."""
    presigner = s3._presigner  # the S3 client's own Presigner: one signing key cache per job

    async def sign(method: str, location: S3Location, expires: int) -> str:
        return await presigner.url(method, location.bucket, location.key, expires)
    return sign


# -- the protocol with fetch.sh / put.sh (pure) -----------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A host's answer to one request."""

    id: int
    outcome: str  # done | fail | refused | gone
    bytes: int = 0  # done: the object's bytes; fail: what the host holds, to resume from
    http: str = "000"  # the HTTP status, 000 when none came
    client_status: int = 0  # curl's or wget's exit status
    code: str = "-"  # S3's error code, - for none


def parse_reply(line: bytes, label: str) -> Reply:
    """One reply line; HostError (naming the host) for anything else."""
    words = line.decode("ascii", "replace").split()
    try:
        if len(words) == 3 and words[1] == "done":
            return Reply(int(words[0]), "done", int(words[2]))
        if len(words) == 2 and words[1] in ("refused", "gone"):
            return Reply(int(words[0]), words[1])
        if len(words) == 6 and words[1] == "fail" and len(words[3]) == 3:
            return Reply(int(words[0]), "fail", int(words[2]), words[3], int(words[4]), words[5])
    except ValueError:
        pass
    raise HostError(label, f"the direct transfer answered an unreadable line {line[:80]!r}")


def _url_line(url: str) -> bytes:
    # curl reads it inside "..." of its config, where " and \ would be special; a presigned
    # URL holds neither (its query is percent-encoded).
    if any(c in url for c in '"\\\n\r') or not url.isascii():
        raise ValueError("a presigned URL with a quote, backslash or line break")  # never the URL itself
    return url.encode() + b"\n"


def _path_line(relative: str, what: str) -> bytes:
    if "\n" in relative or "\r" in relative:
        raise ClientError(f"{what}: a line break in its path {shown(relative)!r}; the direct data path "
                          f"cannot send it (data_path: controller can)")
    return relative.encode("utf-8", "surrogateescape") + b"\n"


def fetch_request(id: int, offset: int, size: int, relative: str, url: str) -> bytes:
    """fetch.sh's three lines for one object."""
    return f"{id} {offset} {size}\n".encode() + _path_line(relative, f"input file {relative}") + _url_line(url)


def put_request(id: int, size: int, relative: str, url: str) -> bytes:
    """put.sh's three lines for one file."""
    return f"{id} {size}\n".encode() + _path_line(relative, f"output file {relative}") + _url_line(url)


class Verdict(enum.Enum):
    DONE = "done"
    EXPIRED = "expired"  # its URL had expired: sign again, resume
    RETRY = "retry"  # transient: back off, resume
    FATAL = "fatal"
    REFUSED = "refused"
    GONE = "gone"


def judge(reply: Reply, signed: float, expires: int, now: float) -> Verdict:
    """What to do about a reply to a request whose URL was signed at `signed` (time.time())
    for `expires` seconds. A SigV4 URL counts from its X-Amz-Date, the signing second."""
    if reply.outcome == "done":
        return Verdict.DONE
    if reply.outcome == "refused":
        return Verdict.REFUSED
    if reply.outcome == "gone":
        return Verdict.GONE
    if reply.http == "403" and now >= math.floor(signed) + expires:
        return Verdict.EXPIRED
    if reply.http in ("000", "408", "429") or reply.http[0] in "25":
        return Verdict.RETRY  # no answer, a timeout, a throttle, a 5xx, a body cut short
    return Verdict.FATAL


def describe(reply: Reply, client: str = "the HTTP client") -> str:
    """A failure, as an error says it (never with a URL: the host never sends one back)."""
    if reply.http == "000":
        return f"no answer from S3 ({client} status {reply.client_status})"
    if reply.http[0] == "2":
        return f"the transfer broke after {reply.bytes} bytes ({client} status {reply.client_status})"
    code = "" if reply.code == "-" else f"{reply.code} "
    return f"{code}(HTTP {reply.http})"


def parse_listing(stdout: bytes) -> list[tuple[str, int, str]]:
    """list-files.sh's NUL-terminated `TYPE SIZE PATH` records → (type, size, path)."""
    return [parse_listed(record) for record in stdout.split(b"\0") if record]


def parse_listed(record: bytes) -> tuple[str, int, str]:
    """One record of list-files.sh (without its NUL) → (type, size, path)."""
    kind, _, rest = record.partition(b" ")
    size, _, name = rest.partition(b" ")
    if not kind or not size.isdigit() or not name:
        raise ClientError(f"an unreadable output listing line {record[:80]!r}")
    return kind.decode("ascii", "replace"), int(size), name.decode("utf-8", "surrogateescape")


# -- one lane: a fetch.sh or put.sh on one host ----------------------------------------------


@dataclass
class _Request:
    id: int
    location: S3Location
    relative: str
    size: int
    offset: int = 0  # bytes the host holds already (fetch)
    signed: float = 0.0
    resigned: int = 0
    retrying: Retrying | None = None


@dataclass
class _Lines:
    read: Callable[[], Awaitable[bytes]]
    label: str
    buffer: bytearray = field(default_factory=bytearray)

    async def next(self) -> bytes | None:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > LINE_LIMIT:
                raise HostError(self.label, "the direct transfer answered a line without end")
            chunk = await self.read()
            if not chunk:
                return None
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line


@dataclass(frozen=True)
class _Lane:
    """What one lane does: its command, how a request is written, what its errors say."""

    transport: Transport
    argv: list[str]
    method: str  # GET | PUT
    encode: Callable[[_Request, str], bytes]
    failed: Callable[[_Request], str]  # "cannot read s3://b/k on algo-1 (...)"
    done: Callable[[_Request, int], None]
    gone: Callable[[_Request], None] = lambda request: None


async def _run_lane(lane: _Lane, requests: deque[_Request], sign: Sign, expires: int,
                    feed: asyncio.Queue[_Request | None] | None = None) -> None:
    """Every request to its end through one host command: those of `requests`, then those
    taken from `feed` until it gives None. ClientError (naming the key and the host) for an
    object that cannot be moved, HostError when the host command fails."""
    label = lane.transport.label
    async with task_group() as tasks:
        # Its stderr's last SAID_LIMIT bytes: all an error shows (a host may write any amount).
        command = Lanes(tasks, keep=SAID_LIMIT)
        try:
            await command.open([(label, lane.transport, lane.argv)])
            if label in command.failed:  # one host, one lane: set aside is failed
                raise command.failed[label]
            await _exchange(lane, command.processes[label], requests, sign, expires, command.stderr(label), feed)
        finally:
            command.abandon()
    log.debug("%s: direct %s lane done", label, lane.method)


async def _exchange(lane: _Lane, process: RemoteProcess, requests: deque[_Request], sign: Sign, expires: int,
                    stderr, feed: asyncio.Queue[_Request | None] | None) -> None:
    label = lane.transport.label
    lines = _Lines(process.read_stdout, label)
    inflight: deque[_Request] = deque()
    while True:
        while len(inflight) < WINDOW:
            if requests:  # its own first: a request to try again keeps its place
                request = requests.popleft()
            elif feed is None or (inflight and feed.empty()):  # replies to read meanwhile
                break
            elif (fed := await feed.get()) is None:
                feed = None
                continue
            else:
                request = fed
            request.signed = time.time()
            url = await sign(lane.method, request.location, expires)
            await process.write(lane.encode(request, url))
            del url
            inflight.append(request)
        if not inflight:
            break
        line = await lines.next()
        if line is None:
            process.close_stdin()
            status = await process.wait()
            said = await stderr
            said = said.decode(errors="replace").strip()[-SAID_LIMIT:] if isinstance(said, bytes) else ""
            # Only put.sh's own status means something here: another (a curl's, a shell's)
            # is no other script's status of the same number.
            known = host_failure(status, label, said) if status == Status.NO_HTTP_CLIENT else None
            if known is not None:
                raise known
            raise HostError(label, f"the direct transfer ended early (status {status}){': ' + said if said else ''}")
        reply = parse_reply(line, label)
        request = inflight.popleft()
        if reply.id != request.id:
            raise HostError(label, f"the direct transfer answered {reply.id} to request {request.id}")
        verdict = judge(reply, request.signed, expires, time.time())
        if verdict is Verdict.DONE:
            if lane.method == "GET" and reply.bytes != request.size:
                raise ClientError(f"{lane.failed(request)}: the host got {reply.bytes} bytes, but the object has "
                                  f"{request.size}")
            lane.done(request, reply.bytes)
        elif verdict is Verdict.GONE:
            lane.gone(request)
        elif verdict is Verdict.REFUSED:
            raise ClientError(f"{lane.failed(request)}: the host refused its path {shown(request.relative)!r}")
        elif verdict is Verdict.EXPIRED:
            request.resigned += 1
            if request.resigned > RESIGNS:
                raise ClientError(f"{lane.failed(request)}: its URL expired {RESIGNS} times before the host used "
                                  f"it (are the clocks of the controller, the host and S3 right?)")
            log.debug("%s: the URL of %s expired; signed again, resuming at byte %d", label, request.location,
                      reply.bytes)
            request.offset = reply.bytes
            requests.appendleft(request)
        elif verdict is Verdict.RETRY:
            request.retrying = request.retrying or S3_REQUESTS.start()
            if not await request.retrying.pause():
                raise ClientError(f"{lane.failed(request)}: {describe(reply)}")
            log.debug("%s: %s: %s; trying again at byte %d", label, request.location, describe(reply), reply.bytes)
            request.offset = reply.bytes
            requests.appendleft(request)
        else:
            raise ClientError(f"{lane.failed(request)}: {describe(reply)}")
    process.close_stdin()
    await process.wait()


def _lanes(items: Sequence[_Request]) -> list[deque[_Request]]:
    count = max(1, min(LANES, len(items)))
    return [deque(items[j::count]) for j in range(count)]


# -- inputs -------------------------------------------------------------------------------------


async def stage_input_direct(objects_per_host: list[list[InputObject]], destinations: list[Destination],
                             sign: Sign, count: TransferCount) -> None:
    """Each host fetches its objects (FullyReplicated: every object, each host once) into its
    partial directory. ClientError naming the key and the host when one cannot be fetched."""
    expires = url_seconds()
    fetched: set[S3Location] = set()

    def done(request: _Request, size: int) -> None:
        count.host_bytes += size
        if request.location not in fetched:  # Objects and Bytes: once per object, as read
            fetched.add(request.location)
            count.objects += 1
            count.bytes += request.size

    async def host(objects: list[InputObject], dest: Destination) -> None:
        requests = []
        for index, obj in enumerate(objects):
            assert isinstance(obj.source, S3Location)
            requests.append(_Request(index, obj.source, obj.relative, obj.size))

        async def lane(number: int, queue: deque[_Request]) -> None:
            argv = host_command("fetch", [dest.directory, f"{dest.directory}.fetch{number}"])
            await _run_lane(_Lane(
                dest.transport, argv, "GET",
                encode=lambda r, url: fetch_request(r.id, r.offset, r.size, r.relative, url),
                failed=lambda r: f"cannot read {r.location} on {dest.label}", done=done), queue, sign, expires)
        if requests:
            await all_of(*(lane(n, q) for n, q in enumerate(_lanes(requests))))
        else:  # an empty LocalPath (ShardedByS3Key, fewer objects than hosts) still exists
            made = await dest.transport.run(host_command("fetch", [dest.directory, f"{dest.directory}.fetch0"]))
            if made.exit_status != 0:
                raise HostError(dest.label, f"cannot make the input directory (status {made.exit_status}): "
                                            f"{made.stderr.decode(errors='replace').strip()[-SAID_LIMIT:]}")

    await all_of(*(host(objects, dest) for objects, dest in zip(objects_per_host, destinations)))


# -- outputs ------------------------------------------------------------------------------------


async def upload_host_direct(transport: Transport, algo: str, directory: str, destination: S3Location,
                             output_name: str, count: OutputCount, sign: Sign, warn: Callable[[str], None]) -> None:
    """Every regular file of `directory` on the host (whose container has exited) to
    `destination`, PUT by the host; symlinks and special files skipped with a warning.

    The listing is read a record at a time and each file goes to a lane as soon as it is
    read (FEED requests wait at most): the controller holds a few requests, never the
    listing (100,000 paths of 1,000 bytes, read whole, took 332 MiB). A file the listing
    rejects (a name not UTF-8, too big) fails the output after the files before it went up."""
    expires = url_seconds()
    feed: asyncio.Queue[_Request | None] = asyncio.Queue(FEED)
    lanes = 0

    def done(request: _Request, size: int) -> None:
        count.objects += 1
        count.bytes += size

    def gone(request: _Request) -> None:
        warn(f"output {output_name}: {algo}:{shown(request.relative)} is no longer a regular file; not uploaded")

    async def lane(number: int) -> None:
        argv = host_command("put", [directory, f"{directory}.put{number}"])
        await _run_lane(_Lane(
            transport, argv, "PUT", encode=lambda r, url: put_request(r.id, r.size, r.relative, url),
            failed=lambda r: f"cannot upload {r.location} from {transport.label}", done=done, gone=gone),
            deque(), sign, expires, feed)

    async with task_group() as tasks:
        async with transport.records(host_command("list-files", [directory]), separator=b"\0") as listing:
            index = 0
            async for record in listing:
                request = _output_request(parse_listed(record), index, algo, destination, output_name, count, warn)
                if request is None:
                    continue
                index += 1
                if lanes < LANES:  # a lane per file up to LANES: as many as before, none for none
                    tasks.create_task(lane(lanes))
                    lanes += 1
                await feed.put(request)
            listed = await listing.end()
        if listed.exit_status != 0:
            raise ClientError(f"listing output {output_name} on {transport.label}: "
                              f"{listed.stderr.decode(errors='replace').strip()[-SAID_LIMIT:]}")
        for _ in range(lanes):
            await feed.put(None)


def _output_request(entry: tuple[str, int, str], index: int, algo: str, destination: S3Location, output_name: str,
                    count: OutputCount, warn: Callable[[str], None]) -> _Request | None:
    """The PUT of one listed entry; None (with a warning) for what is not sent."""
    kind, size, name = entry
    where = f"{algo}:{shown(name)}"
    if kind == "l":
        warn(f"output {output_name}: skipped the symlink {where} (symlinks are never followed)")
        return None
    if kind != "f":
        warn(f"output {output_name}: skipped {where}, not a regular file")
        return None
    relative = safe_relative_path(name, f"output file {where}")
    if shown(relative) != relative:
        raise ClientError(f"output {output_name}: the file {where} has a name that is not UTF-8 "
                          f"(an object key must be); not uploaded")
    if size > MAX_PUT:
        raise ClientError(f"output {output_name}: the file {where} has {size} bytes; the direct data path "
                          f"uploads files up to 5 GiB (data_path: controller uploads any size)")
    previous = count.wrote(relative, algo)
    if previous is not None:
        warn(f"output {output_name}: {previous} and {algo} both wrote {relative}; the last upload wins")
    return _Request(index, destination.child(relative), relative, size)


# -- preflight ----------------------------------------------------------------------------------


async def endpoints(s3, buckets: Sequence[str]) -> list[str]:
    """The S3 endpoints (scheme://host[:port]) the hosts must reach for these buckets: where
    their presigned URLs point (virtual-hosted or path-style); the client's endpoint without
    a bucket."""
    from urllib.parse import urlsplit

    sign = signer(s3)
    origins: list[str] = []
    for bucket in buckets or []:
        parts = urlsplit(await sign("GET", S3Location(bucket, "fleet-reach-probe"), 60))
        origins.append(f"{parts.scheme}://{parts.netloc}")
    if not buckets:
        origins.append(str(s3._client.meta.endpoint_url).rstrip("/"))
    return list(dict.fromkeys(origins))


def reach_row(report: dict[str, str], reached: list[str]) -> list[str]:
    """The problems a direct host's reach.sh report shows ([] when none): no HTTP client, an
    endpoint out of reach. `reached`: the `endpoint=` values, in order."""
    if report.get("http_client", "none") == "none":
        return ["data_path direct: no HTTP client (curl or GNU wget) on the host"]
    problems = []
    for value in reached:
        words = value.split(" ", 2)
        if words[0] != "ok":
            endpoint = words[2] if len(words) == 3 else "?"
            status = words[1] if len(words) >= 2 else "?"
            problems.append(f"data_path direct: cannot reach S3 at {endpoint} "
                            f"({report['http_client']} status {status})")
    return problems

