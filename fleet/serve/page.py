"""The page `fleet serve` serves at `/`: the jobs, one job's request, hosts and live logs, and
a Stop button, for people who watch jobs without a terminal on the controller.

A browser cannot sign SigV4, so the page has its own access, as Jupyter's: at start serve
prints a login URL per page profile (`/login?token=...`, a random token compared in constant
time); it sets a session cookie (HttpOnly, SameSite=Strict, Secure under TLS) that acts for
that profile, and the page shows what that profile may see through the API's own owner rules:
every read and the stop go through `SageMaker.list_jobs`/`describe`/`stop` (sagemaker/responses.py) with the session's
Principal. Stop is a POST carrying the session's CSRF token (in the page, compared in constant
time) from a page of the same origin (the Origin header must name this server).

What the page shows of containers and hosts (log lines, exit messages, failure reasons) is the
text the terminal gets (fleet.runtime.console: controls shown as `\\xNN`, a line at most 64 KiB),
HTML-escaped where the server writes HTML, and set with `textContent` by the script (page/page.js,
served as a file: the Content-Security-Policy allows no inline script). Environment values of a
request are secrets and are never shown.

Logs are Server-Sent Events: a stream per open job page, polling the stored logs every POLL
seconds, at most STREAM_SECONDS long (the browser's EventSource then reconnects on its own and
resumes at the event id, which carries each host's offset), at most MAX_STREAMS at once and
PROFILE_STREAMS of them for one profile (so that one profile's user, or a script with its
login, cannot take every stream from the others). Each is an HTTP connection and counts
against serve's connection caps like any other.

A profile keeps at most PROFILE_SESSIONS sessions: its next login ends its own oldest one,
never another profile's (a script logging in again and again with one profile's token would
otherwise sign everyone else out).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from fleet.contract.describe import ECHOED, TERMINAL, JobSummary
from fleet.runtime.console import HostLines, visible
from fleet.runtime.store import RecordCache
from fleet.serve.auth import Principal
from fleet.serve.errors import ServiceError
from fleet.serve.sagemaker.exceptions import ResourceNotFound
from fleet.serve.services import Services

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("page")  # page.css, page.js: package data
COOKIE = "fleet_session"
SESSION_SECONDS = 12 * 3600  # a login lasts this long
MAX_SESSIONS = 256  # sessions kept; a login beyond evicts the oldest
PROFILE_SESSIONS = 16  # sessions of one profile kept; its login beyond evicts its own oldest
PAGE_SIZE = 25  # jobs a page of the list
POLL = 0.2  # seconds between looks at a followed job's logs and record
STREAM_SECONDS = 300.0  # an event stream's longest life; EventSource reconnects and resumes
MAX_STREAMS = 64  # event streams open at once, all sessions together
PROFILE_STREAMS = 8  # of them for one profile (a browser opens at most 6 to one HTTP/1.1 origin)
READ_BYTES = 256 * 1024  # of one host's log per look: an event's size stays bounded
WRITE_SECONDS = 30.0  # a client that does not take an event within this is dropped
STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
REDACTED = "(redacted)"
HEADERS = {
    # No inline script or style, nothing from elsewhere, never framed, no Referer (the login
    # URL holds the token), nothing cached (pages hold what a profile may see).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form POST's Origin "null"
    "Cache-Control": "no-store",
}
_STREAM_POSITION = r"algo-\d{1,4}:\d{1,18}"
_STREAM_ID = re.compile(f"({_STREAM_POSITION}(,{_STREAM_POSITION}){{0,127}})?")


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


@dataclass
class PageAccess:
    """Login tokens (one per page profile, for the server's life) and the sessions they
    opened (in memory: a restarted server asks for a new login). `secure`: served over TLS,
    the cookie is Secure."""

    secure: bool = False
    tokens: dict[str, Principal] = field(default_factory=dict)
    sessions: dict[bytes, Session] = field(default_factory=dict)

    def mint(self, principal: Principal) -> str:
        """A new login token acting for `principal`."""
        token = secrets.token_urlsafe(32)
        self.tokens[token] = principal
        return token

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for a valid token: (its cookie value, the session); else None. Every
        token is compared, each in constant time."""
        principal = None
        for known, who in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode("utf-8", "surrogateescape")):
                principal = who
        if principal is None:
            return None
        now = time.monotonic()
        self.sessions = {key: s for key, s in self.sessions.items() if s.expires > now}
        own = [key for key, s in self.sessions.items() if s.principal.name == principal.name]
        while len(own) >= PROFILE_SESSIONS:
            del self.sessions[own.pop(0)]  # insertion order: its oldest login first
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions, key=lambda key: self.sessions[key].expires)]
        cookie = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self.sessions[_digest(cookie)] = session
        return cookie, session

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one (looked up by the cookie's
        hash: the table never holds a usable cookie, and the lookup leaks nothing of one)."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        session = self.sessions.get(_digest(cookie))
        if session is None or session.expires <= time.monotonic():
            return None
        return session


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _text(value: Any) -> str:
    """A value as page text: controls shown as the terminal shows them, then HTML-escaped."""
    return html.escape(visible("" if value is None else str(value)), quote=True)


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: Any, end: Any) -> str:
    if not isinstance(start, int | float):
        return ""
    seconds = int((end if isinstance(end, int | float) else time.time()) - start)
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _epoch(iso: Any) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def _document(title: str, view: str, body: str, attributes: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)} · fleet</title><link rel="stylesheet" href="/static/page.css">'
            f'<script src="/static/page.js" defer></script></head>'
            f'<body data-view="{view}"{attributes}><header><a href="/">fleet</a></header><main>{body}</main>'
            f'</body></html>\n')


def _response(status: int, text: str, content_type: str = "text/html") -> web.Response:
    return web.Response(status=status, text=text, content_type=content_type, charset="utf-8", headers=HEADERS)


def _refusal(status: int, message: str) -> web.Response:
    return _response(status, _document(str(status), "error", f'<p class="refusal">{html.escape(message)}</p>'))


def _redacted(request: dict[str, Any]) -> dict[str, Any]:
    """The request fields of a record, Environment values replaced (they are secrets)."""
    shown = {key: request[key] for key in ECHOED if key in request}
    if isinstance(shown.get("Environment"), dict):
        shown["Environment"] = {name: REDACTED for name in shown["Environment"]}
    return shown


def _event(kind: str, data: Any, event_id: str | None = None) -> bytes:
    """One SSE event. JSON on one line (a newline in data would end the field); `<`, `>`
    and `&` as \\u escapes too, so nothing in it reads as markup anywhere."""
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {text}\n\n".encode()


class _HostTail:
    """One host's log as the terminal shows it (console.HostLines), from an offset on."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        # bytes read so far; a Last-Event-ID past the log's end (made up: no stream sent it)
        # starts at its end, or an ended job's stream would never say `end`
        self.offset = min(offset, _size(path))
        self.out = io.BytesIO()
        self.lines = HostLines(self.out, b"")

    def resume_at(self) -> int:
        """Where a reconnecting stream starts again: after the last line shown."""
        pending = len(self.lines.partial) if self.lines.dropped is None else 0
        return self.offset - pending

    def read(self) -> list[str]:
        """The lines the log gained (whole ones; at most READ_BYTES read per call)."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read(READ_BYTES)
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        self.lines.feed(chunk)
        return self._drain()

    def finish(self) -> list[str]:
        self.lines.flush()
        return self._drain()

    def _drain(self) -> list[str]:
        data = self.out.getvalue()
        if not data:
            return []
        self.out.seek(0)
        self.out.truncate()
        return data.decode("utf-8", "replace").split("\n")[:-1]


class Page:
    """The page's handlers, added to serve's aiohttp app by `add_routes`."""

    def __init__(self, api: Services, access: PageAccess) -> None:
        self.api = api
        self.access = access
        self.streams = 0
        self.profile_streams: dict[str, int] = {}  # open streams by profile name
        self.closing = False  # serve is stopping: the event streams end (else shutdown waits for them)
        # A list row's fields beyond a ProcessingJobSummary's (the start, the hosts): read again
        # only when a record changed, as the API's own list does.
        self.rows = RecordCache(api.store, JobSummary)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._signed_in(self.jobs))
        app.router.add_get("/login", self.login)
        app.router.add_get("/jobs/{name}", self._signed_in(self.job))
        app.router.add_get("/jobs/{name}/events", self._signed_in(self.events))
        app.router.add_post("/jobs/{name}/stop", self._signed_in(self.stop))
        app.router.add_get("/static/{file}", self.static)
        app.on_shutdown.append(self._close)

    async def _close(self, app: web.Application) -> None:
        self.closing = True

    def login_urls(self, base: str) -> list[tuple[str, str]]:
        """(profile, login URL) for each token minted."""
        return [(who.name, f"{base}/login?{urlencode({'token': token})}") for token, who in self.access.tokens.items()]

    def _signed_in(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]):
        async def checked(request: web.Request) -> web.StreamResponse:
            session = self.access.session(request)
            if session is None:
                return _refusal(401, "Sign in first: open the login URL that `fleet serve` printed when it started.")
            return await handler(request, session)
        return checked

    # -- access ----------------------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.StreamResponse:
        opened = self.access.login(request.query.get("token", ""))
        if opened is None:
            return _refusal(401, "This login token is not valid (each `fleet serve` prints new ones).")
        cookie, _ = opened
        response = web.Response(status=303, headers={**HEADERS, "Location": "/"})
        response.set_cookie(COOKIE, cookie, path="/", httponly=True, samesite="Strict", secure=self.access.secure,
                            max_age=SESSION_SECONDS)
        return response

    def _same_origin(self, request: web.Request) -> bool:
        scheme = "https" if self.access.secure else "http"
        origin = request.headers.get("Origin", "")
        return bool(origin) and hmac.compare_digest(origin.encode("utf-8", "surrogateescape"),
                                                    f"{scheme}://{request.host}".encode("utf-8", "surrogateescape"))

    # -- the jobs --------------------------------------------------------------------------------
    async def jobs(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The jobs `session` may see, newest first, PAGE_SIZE a page, filtered by status and
        a part of the name (ListProcessingJobs with the session's principal)."""
        name, status, token = (request.query.get(key, "") for key in ("name", "status", "next"))
        asked: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": PAGE_SIZE}
        if name:
            asked["NameContains"] = name
        if status in STATUSES:
            asked["StatusEquals"] = status
        if token:
            asked["NextToken"] = token
        try:
            listed = await self.api.sagemaker.list_jobs(asked, session.principal)
        except ServiceError as exc:
            return _refusal(400, exc.message)
        rows = []
        for summary in listed["ProcessingJobSummaries"]:
            job = summary["ProcessingJobName"]
            record = self.rows.load(job)
            start = (_epoch(record.ProcessingStartTime) if record else None) or summary.get("CreationTime")
            end = summary.get("ProcessingEndTime")
            rows.append(
                f'<tr data-job="{_text(job)}"><td><a href="/jobs/{_text(job)}">{_text(job)}</a></td>'
                f'<td class="status {_text(summary.get("ProcessingJobStatus"))}">'
                f'{_text(summary.get("ProcessingJobStatus"))}</td>'
                f'<td class="hosts">{(len(record.Hosts) if record else 0) or ""}</td><td>{_text(_when(start))}</td>'
                f'<td>{_text(_duration(start, end))}</td><td class="reason">{_text(summary.get("FailureReason"))}</td>'
                f'<td>{_text(record.Owner if record else "")}</td></tr>')
        options = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in STATUSES)
        more = ""
        if listed.get("NextToken"):
            query = urlencode({key: value for key, value in (("name", name), ("status", status),
                                                              ("next", listed["NextToken"])) if value})
            more = f'<a id="older" href="/?{_text(query)}">Older jobs</a>'
        first = f'<a id="newest" href="/?{_text(urlencode({"name": name, "status": status}))}">Newest jobs</a>' \
            if token else ""
        body = (f'<h1>Processing jobs</h1><p class="who">Signed in as {_text(session.principal.name)}</p>'
                f'<form id="filter" method="get" action="/"><label>Name contains '
                f'<input name="name" value="{_text(name)}" maxlength="63"></label> <label>Status '
                f'<select name="status"><option value="">any</option>{options}</select></label> '
                f'<button type="submit">Filter</button></form>'
                f'<table id="jobs"><thead><tr><th>Name</th><th>Status</th><th>Hosts</th><th>Started</th>'
                f'<th>Duration</th><th>Failure reason</th><th>Owner</th></tr></thead><tbody>{"".join(rows)}</tbody>'
                f'</table><nav>{first} {more}</nav>')
        follow = ' data-refresh="1"' if not token else ""
        return _response(200, _document("Processing jobs", "list", body, follow))

    async def _described(self, request: web.Request, session: Session) -> dict[str, Any] | web.Response:
        try:
            return await self.api.sagemaker.describe({"ProcessingJobName": request.match_info["name"]},
                                                     session.principal)
        except ServiceError as exc:
            return _refusal(404 if isinstance(exc, ResourceNotFound) else 400, exc.message)

    async def job(self, request: web.Request, session: Session) -> web.StreamResponse:
        """One job: its state, its hosts' exit codes, its request (Environment values
        redacted), its hosts' logs (filled by the event stream) and Stop."""
        record = await self._described(request, session)
        if isinstance(record, web.Response):
            return record
        name = record["ProcessingJobName"]
        status = record.get("ProcessingJobStatus", "")
        start = record.get("ProcessingStartTime") or record.get("CreationTime")
        hosts = record.get("Hosts") or {}
        host_rows = "".join(
            f'<tr data-host="{_text(algo)}"><td>{_text(algo)}</td><td>{_text(host.get("Name", ""))}</td>'
            f'<td class="exit">{_text(host.get("ExitCode", ""))}</td></tr>' for algo, host in hosts.items())
        logs = "".join(f'<section class="log"><h3>{_text(algo)}</h3><pre id="log-{_text(algo)}" '
                       f'data-host="{_text(algo)}"></pre></section>' for algo in hosts)
        stop = "" if status in TERMINAL else (
            f'<form id="stop" method="post" action="/jobs/{_text(name)}/stop">'
            f'<input type="hidden" name="csrf" value="{_text(session.csrf)}">'
            f'<button type="submit">Stop</button></form>')
        body = (f'<h1>{_text(name)}</h1>'
                f'<dl><dt>Status</dt><dd id="status" class="status">{_text(status)}</dd>'
                f'<dt>Owner</dt><dd>{_text(record.get("Owner"))}</dd>'
                f'<dt>Created</dt><dd>{_text(_when(record.get("CreationTime")))}</dd>'
                f'<dt>Started</dt><dd>{_text(_when(record.get("ProcessingStartTime")))}</dd>'
                f'<dt>Ended</dt><dd id="ended">{_text(_when(record.get("ProcessingEndTime")))}</dd>'
                f'<dt>Duration</dt><dd>{_text(_duration(start, record.get("ProcessingEndTime")))}</dd>'
                f'<dt>Failure reason</dt><dd id="failure">{_text(record.get("FailureReason"))}</dd>'
                f'<dt>Exit message</dt><dd><pre id="exit-message">{_text(record.get("ExitMessage"))}</pre></dd></dl>'
                f'{stop}<h2>Hosts</h2><table id="hosts"><thead><tr><th>Host</th><th>Machine</th><th>Exit code</th>'
                f'</tr></thead><tbody>{host_rows}</tbody></table>'
                f'<h2>Logs</h2><div id="logs">{logs}</div>'
                f'<h2>Request</h2><pre id="request">{_text(json.dumps(_redacted(record), indent=2))}</pre>')
        attributes = f' data-events="/jobs/{_text(name)}/events" data-csrf="{_text(session.csrf)}"'
        return _response(200, _document(name, "job", body, attributes))

    async def stop(self, request: web.Request, session: Session) -> web.StreamResponse:
        """StopProcessingJob for the session's principal: only from a page of this origin
        carrying the session's CSRF token."""
        if not self._same_origin(request):
            return _refusal(403, "Stop is refused: the request does not come from this server's page (Origin).")
        form = await request.post()
        csrf = form.get("csrf")
        if not isinstance(csrf, str) or not hmac.compare_digest(csrf.encode("utf-8", "surrogateescape"),
                                                                session.csrf.encode()):
            return _refusal(403, "Stop is refused: the page's CSRF token is missing or wrong; reload the page.")
        name = request.match_info["name"]
        try:
            await self.api.sagemaker.stop({"ProcessingJobName": name}, session.principal)
        except ServiceError as exc:
            return _refusal(404 if isinstance(exc, ResourceNotFound) else 409, exc.message)
        log.info("page: %s stopped %s", session.principal.name, name)
        return web.Response(status=303, headers={**HEADERS, "Location": f"/jobs/{name}"})

    async def events(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The job's logs and state as Server-Sent Events: `lines` ({host, lines}), `state`
        (status, failure, exit codes) when it changes, `end` once the job ended and its logs
        are drained. Resumes at Last-Event-ID (each host's offset). Ends when its session does."""
        record = await self._described(request, session)
        if isinstance(record, web.Response):
            return record
        if self.streams >= MAX_STREAMS:
            return _refusal(503, f"fleet serve follows {MAX_STREAMS} logs already; retry later.")
        who = session.principal.name
        if self.profile_streams.get(who, 0) >= PROFILE_STREAMS:
            return _refusal(503, f"{who} follows {PROFILE_STREAMS} logs already; close a job's page and retry.")
        name = record["ProcessingJobName"]
        offsets = _offsets(request.headers.get("Last-Event-ID", ""))
        tails: dict[str, _HostTail] = {}
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream; charset=utf-8",
                                               "X-Accel-Buffering": "no"})
        self.streams += 1
        self.profile_streams[who] = self.profile_streams.get(who, 0) + 1
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            state = None
            deadline = time.monotonic() + STREAM_SECONDS
            while time.monotonic() < deadline and not self.closing:
                ended = record.get("ProcessingJobStatus") in TERMINAL  # read before the logs: then they are whole
                for algo in record.get("Hosts") or {}:
                    tail = tails.get(algo) or tails.setdefault(
                        algo, _HostTail(self.api.store.log_path(name, algo), offsets.get(algo, 0)))
                    lines = tail.read()
                    if ended and tail.offset == _size(tail.path):
                        lines += tail.finish()
                    if lines:
                        await self._write(response, _event("lines", {"host": algo, "lines": lines}, _id(tails)))
                now = _state(record)
                if now != state:
                    state = now
                    await self._write(response, _event("state", now))
                if ended and all(tail.offset == _size(tail.path) for tail in tails.values()):
                    await self._write(response, _event("end", {}))
                    break
                await asyncio.sleep(POLL)
                if self.access.session(request) is not session:
                    break  # signed out (expired, or ended by a newer login of its profile): no more lines
                described = await self._described(request, session)
                if isinstance(described, web.Response):
                    break  # gone (or no longer visible): the stream ends
                record = described
        except (ConnectionResetError, TimeoutError):
            pass  # the page was closed, or does not read: its stream ends
        finally:
            self.streams -= 1
            self.profile_streams[who] -= 1
            if not self.profile_streams[who]:
                del self.profile_streams[who]
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, event: bytes) -> None:
        async with asyncio.timeout(WRITE_SECONDS):
            await response.write(event)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        types = {"page.js": "text/javascript", "page.css": "text/css"}
        if name not in types:
            return _refusal(404, "No such file.")
        return _response(200, (STATIC / name).read_text(encoding="utf-8"), types[name])


def _state(record: dict[str, Any]) -> dict[str, Any]:
    hosts = record.get("Hosts") or {}
    return {"status": record.get("ProcessingJobStatus", ""), "failure": visible(record.get("FailureReason") or ""),
            "exitMessage": visible(record.get("ExitMessage") or ""), "ended": _when(record.get("ProcessingEndTime")),
            "exitCodes": {algo: host.get("ExitCode") for algo, host in hosts.items()}}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _id(tails: dict[str, _HostTail]) -> str:
    return ",".join(f"{algo}:{tail.resume_at()}" for algo, tail in tails.items())


def _offsets(last_event_id: str) -> dict[str, int]:
    """Each host's offset from a Last-Event-ID (`algo-1:123,algo-2:0`); nothing from a
    malformed one (the stream starts from the beginning)."""
    if not _STREAM_ID.fullmatch(last_event_id):
        return {}
    pairs: Iterable[list[str]] = (part.split(":") for part in last_event_id.split(",") if part)
    return {algo: int(offset) for algo, offset in pairs}
