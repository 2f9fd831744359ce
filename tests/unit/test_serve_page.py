"""The jobs page of `fleet serve` (issue 21, point 6) through aiohttp's test client on a real
store, without a browser: no page without the login, the cookie's flags, Stop refused without
the CSRF token or from another origin, each profile seeing only its own jobs, and container
text shown as text (tests/integration/test_serve_page_browser.py drives the same page in Chromium)."""

from __future__ import annotations

import asyncio
import html
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fleet.inventory import parse_inventory
from fleet.runtime.store import JobStore, RunOptions
from fleet.serve.auth import CONTROLLER, Principal
from fleet.serve.page import COOKIE, MAX_SESSIONS, MAX_STREAMS, PROFILE_SESSIONS, Page, PageAccess
from fleet.serve.scheduler import Scheduler
from fleet.serve.services import Services

ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB = Principal("alice"), Principal("bob")
HOSTILE = b"<script>window.pwned=1</script> \x1b]52;c;Zm9v\x07\x1b[2J\x9b31m done\r\n"


def _request(name: str, **fields) -> dict:
    return {"ProcessingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
                                                      "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "zq:1"}, **fields}


@pytest.fixture
async def page(tmp_path: Path):
    """A served page with alice's job (a hostile log and failure), bob's, and a login token
    for each of alice, bob and the operator."""
    inventory = parse_inventory({"hosts": [{"address": "h1"}]}, "hosts.yaml")
    store = JobStore(tmp_path / "home")
    api = Services(store, Scheduler(store, inventory, RunOptions()), "us-east-1", "000000000000")
    await api.sagemaker.create(_request("zq-alice", Environment={"API_TOKEN": "s3cr3t-value"}), ALICE)
    await api.sagemaker.create(_request("zq-bob"), BOB)
    record = store.record("zq-alice")
    record.update(Hosts={"algo-1": {"Name": "h1"}}, FailureReason="AlgorithmError: <img src=x onerror=alert(1)>")
    store.log_path("zq-alice", "algo-1").write_bytes(b"first line\n" + HOSTILE)
    access = PageAccess()
    tokens = {who.name: access.mint(who) for who in (ALICE, BOB, CONTROLLER)}
    app = web.Application()
    Page(api, access).add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, tokens, api
    finally:
        await client.close()


async def _login(client: TestClient, token: str) -> None:
    answer = await client.get("/login", params={"token": token}, allow_redirects=False)
    assert answer.status == 303, await answer.text()


async def _csrf(client: TestClient, job: str) -> str:
    text = await (await client.get(f"/jobs/{job}")).text()
    return re.search(r'name="csrf" value="([^"]+)"', text)[1]


async def test_no_page_without_the_login_token(page):
    client, _, _ = page
    for path in ("/", "/jobs/zq-alice", "/jobs/zq-alice/events"):
        answer = await client.get(path)
        assert answer.status == 401, path
        assert "login URL" in await answer.text()
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert (await client.post("/jobs/zq-alice/stop", data={"csrf": "x"})).status == 401
    answer = await client.get("/login", params={"token": "not-the-token"}, allow_redirects=False)
    assert answer.status == 401 and COOKIE not in answer.cookies
    client.session.cookie_jar.update_cookies({COOKIE: "made-up-session"})
    assert (await client.get("/")).status == 401


async def test_login_sets_an_httponly_samesite_strict_cookie_secure_under_tls(page):
    client, tokens, _ = page
    answer = await client.get("/login", params={"token": tokens["alice"]}, allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == "/"
    assert answer.headers["Referrer-Policy"] == "same-origin"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    assert (await client.get("/")).status == 200
    access = PageAccess(secure=True)
    app = web.Application()
    Page(page[2], access).add_routes(app)
    async with TestClient(TestServer(app)) as tls_client:
        answer = await tls_client.get("/login", params={"token": access.mint(ALICE)}, allow_redirects=False)
        assert "Secure" in answer.headers["Set-Cookie"]


async def test_each_profile_sees_only_its_own_jobs_and_the_operator_all(page):
    client, tokens, _ = page
    await _login(client, tokens["alice"])
    listed = await (await client.get("/")).text()
    assert 'data-job="zq-alice"' in listed and "zq-bob" not in listed
    assert (await client.get("/jobs/zq-bob")).status == 404
    assert (await client.get("/jobs/zq-bob/events")).status == 404
    csrf = await _csrf(client, "zq-alice")
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    answer = await client.post("/jobs/zq-bob/stop", data={"csrf": csrf}, headers=origin, allow_redirects=False)
    assert answer.status == 404
    client.session.cookie_jar.clear()
    await _login(client, tokens["fleet-controller"])
    listed = await (await client.get("/")).text()
    assert 'data-job="zq-alice"' in listed and 'data-job="zq-bob"' in listed
    filtered = await (await client.get("/", params={"name": "bob"})).text()
    assert 'data-job="zq-bob"' in filtered and "zq-alice" not in filtered


async def test_the_list_is_newest_first_paged_and_filtered_by_status(page):
    client, tokens, api = page
    for i in range(30):
        await api.sagemaker.create(_request(f"zq-many-{i:02d}"), ALICE)
    api.store.record("zq-many-07").update(ProcessingJobStatus="Failed", FailureReason="AlgorithmError: boom")
    await _login(client, tokens["alice"])
    first = await (await client.get("/")).text()
    names = re.findall(r'<tr data-job="([^"]+)"', first)
    assert names == [f"zq-many-{i:02d}" for i in range(29, 4, -1)]  # 25, newest first
    older = html.unescape(re.search(r'<a id="older" href="([^"]+)"', first)[1])
    rest = re.findall(r'<tr data-job="([^"]+)"', await (await client.get(older)).text())
    assert rest == ["zq-many-04", "zq-many-03", "zq-many-02", "zq-many-01", "zq-many-00", "zq-alice"]
    failed = await (await client.get("/", params={"status": "Failed"})).text()
    assert re.findall(r'<tr data-job="([^"]+)"', failed) == ["zq-many-07"] and "AlgorithmError: boom" in failed
    assert (await client.get("/", params={"next": "not-a-token"})).status == 400


async def test_stop_needs_the_sessions_csrf_token_and_this_origin(page):
    client, tokens, api = page
    await _login(client, tokens["alice"])
    csrf = await _csrf(client, "zq-alice")
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    stop = "/jobs/zq-alice/stop"
    assert (await client.post(stop, data={}, headers=origin)).status == 403
    wrong = csrf[:-1] + ("B" if csrf[-1] == "A" else "A")
    assert (await client.post(stop, data={"csrf": wrong}, headers=origin)).status == 403
    assert (await client.post(stop, data={"csrf": csrf}, headers={"Origin": "http://evil.example"})).status == 403
    assert (await client.post(stop, data={"csrf": csrf})).status == 403  # no Origin
    assert api.store.load("zq-alice").ProcessingJobStatus == "InProgress"
    answer = await client.post(stop, data={"csrf": csrf}, headers=origin, allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == "/jobs/zq-alice"
    assert api.store.load("zq-alice").ProcessingJobStatus == "Stopped"  # it waited for hosts: stopped at once
    described = await (await client.get("/jobs/zq-alice")).text()
    assert '<dd id="status" class="status">Stopped</dd>' in described and 'id="stop"' not in described
    client.session.cookie_jar.clear()
    await _login(client, tokens["bob"])
    assert (await client.post("/jobs/zq-bob/stop", data={"csrf": csrf}, headers=origin)).status == 403


async def test_container_text_is_shown_as_text_and_environment_values_never(page):
    client, tokens, api = page
    await _login(client, tokens["alice"])
    listed = await (await client.get("/")).text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in listed and "<img" not in listed
    described = await (await client.get("/jobs/zq-alice")).text()
    assert "API_TOKEN" in described and "s3cr3t-value" not in described and "(redacted)" in described
    assert "<img" not in described and "<script>window" not in described
    api.store.record("zq-alice").update(ProcessingJobStatus="Stopped")  # the stream drains the log, then ends
    answer = await client.get("/jobs/zq-alice/events")
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    stream = await answer.text()
    assert "<" not in stream and "\x1b" not in stream and "\x9b" not in stream
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    lines = [line for event in events if "lines" in event for line in event["lines"]]
    assert lines == ["first line", "<script>window.pwned=1</script> \\x1b]52;c;Zm9v\\x07\\x1b[2J\\x9b31m done"]
    assert any(event.get("status") == "Stopped" for event in events)
    assert "event: end" in stream


async def test_the_event_stream_resumes_at_the_last_event_id(page):
    client, tokens, api = page
    await _login(client, tokens["alice"])
    api.store.record("zq-alice").update(ProcessingJobStatus="Completed")
    stream = await (await client.get("/jobs/zq-alice/events", headers={"Last-Event-ID": "algo-1:11"})).text()
    assert "first line" not in stream and "window.pwned" in stream
    for malformed in ("algo-1:x", "algo-1:1algo-2:2", "algo-1:1,"):  # starts over
        answer = await client.get("/jobs/zq-alice/events", headers={"Last-Event-ID": malformed})
        assert answer.status == 200 and "first line" in await answer.text()


async def test_a_last_event_id_past_the_logs_end_still_ends_the_stream(page):
    """A made-up Last-Event-ID beyond the log: an ended job's stream says `end` at once
    (it polled for STREAM_SECONDS, and the browser came back with the same id forever)."""
    client, tokens, api = page
    await _login(client, tokens["alice"])
    api.store.record("zq-alice").update(ProcessingJobStatus="Completed")
    async with asyncio.timeout(10):
        answer = await client.get("/jobs/zq-alice/events", headers={"Last-Event-ID": "algo-1:999999999"})
        stream = await answer.text()
    assert "event: end" in stream and "first line" not in stream, stream


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, list[str], dict[str, str], list[str]]:
    """A real `fleet serve` on loopback (one local host; the operator's key from the
    environment, alice's from --credentials): (the process, its command, its environment, the
    (profile, URL) pairs it printed)."""
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(json.dumps({"hosts": [{"address": "localhost", "name": "h1", "transport": "local"}]}))
    credentials = tmp_path / "credentials"
    credentials.write_text("[alice]\naws_access_key_id = AKIDFLEETPAGEALICE01\naws_secret_access_key = a-secret\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(FLEET_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true", AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="AKIDFLEETPAGEOPERATOR", AWS_SECRET_ACCESS_KEY="operator-secret")
    command = [sys.executable, "-m", "fleet", "serve", "--inventory", str(inventory), "--credentials",
               str(credentials), *args]
    if "--listen" not in args:
        return subprocess.Popen(["true"]), command, env, []
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    for _ in range(300):
        if "the jobs page for" in log.read_text() and log.read_text().endswith("\n"):
            break
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    time.sleep(0.2)
    return process, command, env, re.findall(r"the jobs page for (\S+): (\S+)", log.read_text())


def _listen() -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ["--listen", f"127.0.0.1:{s.getsockname()[1]}"]


def _signed_in(url: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    for _ in range(100):
        try:
            opener.open(url, timeout=10).read()
            return opener
        except urllib.error.URLError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_serve_prints_a_login_url_per_page_profile_acting_for_it(tmp_path):
    """--page-profile alice prints alice's login URL (and not the operator's), whose session
    sees what alice sees; an unknown profile is refused, naming it."""
    _, command, env, _ = _serve(tmp_path)
    refused = subprocess.run([*command, "--page-profile", "nobody"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "--page-profile nobody: no profile of that name" in refused.stderr
    assert "Traceback" not in refused.stderr
    listen = _listen()
    process, _, _, urls = _serve(tmp_path, "--page-profile", "alice", *listen)
    try:
        assert [profile for profile, _ in urls] == ["alice"]
        assert urls[0][1].startswith(f"http://{listen[1]}/login?token=")
        page = _signed_in(urls[0][1]).open(f"http://{listen[1]}/", timeout=10).read().decode()
        assert "Signed in as alice" in page
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_event_streams_count_against_the_connection_caps_and_end_when_serve_stops(tmp_path):
    """Each open event stream holds a connection of its client's share (a third connection
    past --max-connections-per-client 2 is answered 503), and ends when serve is told to stop
    (aiohttp would wait for it)."""
    store = JobStore(tmp_path / "home")
    store.create({"ProcessingJobName": "zq-open", "ProcessingJobStatus": "InProgress",
                  "CreationTime": "2026-01-01T00:00:00+00:00", "Hosts": {"algo-1": {"Name": "h1"}}})
    store.log_path("zq-open", "algo-1").write_bytes(b"a line\n")
    listen = _listen()
    process, _, _, urls = _serve(tmp_path, *listen, "--max-connections-per-client", "2")
    try:
        assert [profile for profile, _ in urls] == ["fleet-controller"]
        opener = _signed_in(urls[0][1])
        streams = [opener.open(f"http://{listen[1]}/jobs/zq-open/events", timeout=30) for _ in range(2)]
        for stream in streams:
            assert b"a line" in b"".join(stream.readline() for _ in range(8))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"http://{listen[1]}/", timeout=10)
        assert refused.value.code == 503
        process.terminate()
        process.wait(timeout=10)  # its stream's longest life is 300 s
        assert all(not stream.read().strip() for stream in streams)  # they ended
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _session_of(client: TestClient, token: str) -> dict[str, str]:
    """A fresh login's cookie as a header (the client's own jar left empty, so that each call
    says which session it acts in)."""
    answer = await client.get("/login", params={"token": token}, allow_redirects=False)
    assert answer.status == 303
    cookie = answer.cookies[COOKIE].value
    client.session.cookie_jar.clear()
    return {"Cookie": f"{COOKIE}={cookie}"}


async def test_one_profile_logging_in_again_and_again_signs_no_other_out(page):
    """The attack: bob's token (or a script holding it) logs in MAX_SESSIONS times; each login
    evicted the oldest session of all, so alice's was gone after bob's 256th."""
    client, tokens, _ = page
    alice = await _session_of(client, tokens["alice"])
    bobs = [await _session_of(client, tokens["bob"]) for _ in range(MAX_SESSIONS)]
    assert (await client.get("/", headers=alice)).status == 200
    assert (await client.get("/", headers=bobs[-1])).status == 200
    assert (await client.get("/", headers=bobs[0])).status == 401  # bob's own oldest gave way


async def test_one_profile_cannot_take_every_event_stream(page):
    """The attack: alice opens MAX_STREAMS event streams of her running job (a script, or tabs)
    and holds them; bob's job page then got 503 for its logs until they ended (STREAM_SECONDS)."""
    client, tokens, _ = page
    alice = await _session_of(client, tokens["alice"])
    bob = await _session_of(client, tokens["bob"])
    held, refused = [], []
    try:
        for _ in range(MAX_STREAMS):
            answer = await client.get("/jobs/zq-alice/events", headers=alice)
            (held if answer.status == 200 else refused).append(answer)
        assert refused and refused[0].status == 503 and "alice follows" in await refused[0].text()
        answer = await client.get("/jobs/zq-bob/events", headers=bob)
        assert answer.status == 200
        answer.close()
    finally:
        for answer in held:
            answer.close()


async def test_an_event_stream_ends_with_its_session(page, monkeypatch):
    """The attack: a session ended (expired, or evicted by its profile's newer logins) kept
    its open event streams, reading new log lines for up to STREAM_SECONDS more."""
    client, tokens, api = page
    monkeypatch.setattr("fleet.serve.page.STREAM_SECONDS", 5.0)  # s25 ran the stream this long, then ended it
    first = await _session_of(client, tokens["alice"])
    answer = await client.get("/jobs/zq-alice/events", headers=first)
    assert answer.status == 200
    assert b"first line" in await answer.content.readuntil(b"first line")
    for _ in range(PROFILE_SESSIONS):  # alice's newer logins end the first session
        await _session_of(client, tokens["alice"])
    assert (await client.get("/", headers=first)).status == 401
    path = api.store.log_path("zq-alice", "algo-1")
    path.write_bytes(path.read_bytes() + b"written after the session ended\n")
    rest = await answer.content.read()
    assert b"written after the session ended" not in rest
