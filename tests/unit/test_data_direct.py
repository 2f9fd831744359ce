"""The direct data path (data_path: direct): the protocol with fetch.sh / put.sh, the
decisions about a failure, and the host scripts run here (curl, then GNU wget) against a
small HTTP server that plays S3: resuming, signing again, refusing a path, never a URL in an
argv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

import pytest

from fleet.data import direct
from fleet.data.direct import Reply, Verdict, judge
from fleet.data.locations import S3Location
from fleet.data.outputs import OutputCount
from fleet.data.sources import InputObject
from fleet.data.staging import Destination, TransferCount
from fleet.errors import ClientError, HostError
from fleet.host import script_text
from fleet.inventory import LocalHost, SshHost, parse_inventory
from fleet.transport import transport_for

from support.fake_s3 import PresignedS3

# -- the protocol (pure) ----------------------------------------------------------------------


def test_replies_parse_and_anything_else_is_a_host_error():
    assert direct.parse_reply(b"3 done 17", "algo-1") == Reply(3, "done", 17)
    assert direct.parse_reply(b"4 fail 100 403 0 AccessDenied", "algo-1") == Reply(4, "fail", 100, "403", 0,
                                                                                     "AccessDenied")
    assert direct.parse_reply(b"5 refused", "algo-1").outcome == "refused"
    for line in (b"", b"x done 1", b"1 done", b"1 fail 0 4033 0 -", b"1 maybe"):
        with pytest.raises(HostError, match="algo-1"):
            direct.parse_reply(line, "algo-1")


def test_a_request_is_three_lines_and_the_url_comes_last():
    assert direct.fetch_request(7, 10, 20, "a/b c.txt", "http://s3/k?X-Amz-Signature=ab") == (
        b"7 10 20\na/b c.txt\nhttp://s3/k?X-Amz-Signature=ab\n")
    assert direct.put_request(1, 5, "out.bin", "http://s3/o") == b"1 5\nout.bin\nhttp://s3/o\n"


def test_a_path_with_a_line_break_cannot_take_the_direct_path():
    with pytest.raises(ClientError, match="data_path: controller can"):
        direct.fetch_request(1, 0, 1, "a\nb", "http://s3/k")


def test_a_url_that_curl_would_read_otherwise_is_never_sent_nor_shown():
    with pytest.raises(ValueError) as caught:
        direct.put_request(1, 1, "a", 'http://s3/k?X-Amz-Signature="secret')
    assert "secret" not in str(caught.value)


def test_a_403_after_the_url_expired_is_signed_again():
    fail = Reply(1, "fail", 500, "403", 0, "AccessDenied")
    assert judge(fail, signed=1000.7, expires=900, now=1900.0) is Verdict.EXPIRED  # X-Amz-Date is 1000
    assert judge(fail, signed=1000.7, expires=900, now=1899.9) is Verdict.FATAL  # still valid: refused


@pytest.mark.parametrize("http, verdict", [("000", Verdict.RETRY), ("200", Verdict.RETRY), ("206", Verdict.RETRY),
                                           ("503", Verdict.RETRY), ("429", Verdict.RETRY),
                                           ("404", Verdict.FATAL), ("400", Verdict.FATAL)])
def test_transient_failures_are_retried_others_are_not(http, verdict):
    assert judge(Reply(1, "fail", 0, http, 7), signed=0, expires=900, now=1) is verdict


def test_failures_read_without_any_url():
    assert direct.describe(Reply(1, "fail", 0, "404", 0, "NoSuchKey")) == "NoSuchKey (HTTP 404)"
    assert "status 7" in direct.describe(Reply(1, "fail", 0, "000", 7), "curl")
    assert "after 100 bytes" in direct.describe(Reply(1, "fail", 100, "206", 18))


def test_the_output_listing_keeps_odd_names_and_types():
    listing = b"f 12 a b.txt\0l 4 link\0p 0 fifo\0f 3 sub/\xff.bin\0"
    assert direct.parse_listing(listing) == [("f", 12, "a b.txt"), ("l", 4, "link"), ("p", 0, "fifo"),
                                             ("f", 3, "sub/\udcff.bin")]
    with pytest.raises(ClientError):
        direct.parse_listing(b"f x name\0")


def test_reach_problems_name_the_client_and_the_endpoint():
    assert direct.reach_row({"http_client": "none"}, []) == [
        "data_path direct: no HTTP client (curl or GNU wget) on the host"]
    assert direct.reach_row({"http_client": "curl"}, ["ok 403 http://s3:9000"]) == []
    assert direct.reach_row({"http_client": "curl"}, ["unreachable 7 http://127.0.0.1:9000"]) == [
        "data_path direct: cannot reach S3 at http://127.0.0.1:9000 (curl status 7)"]


def test_url_lifetime_is_fifteen_minutes_unless_told(monkeypatch):
    monkeypatch.delenv(direct.URL_SECONDS_VARIABLE, raising=False)
    assert direct.url_seconds() == 900
    monkeypatch.setenv(direct.URL_SECONDS_VARIABLE, "2")
    assert direct.url_seconds() == 2
    monkeypatch.setenv(direct.URL_SECONDS_VARIABLE, "99999")
    assert direct.url_seconds() == 900


def test_data_path_is_controller_unless_the_inventory_says_direct():
    inventory = parse_inventory({"defaults": {"data_path": "direct"},
                                 "hosts": [{"address": "a"}, {"address": "b", "data_path": "controller"}]}, "h.yaml")
    assert [h.data_path for h in inventory.hosts] == ["direct", "controller"]
    assert SshHost(address="c").data_path == "controller"
    with pytest.raises(Exception, match="data_path"):
        parse_inventory({"hosts": [{"address": "a", "data_path": "s3"}]}, "h.yaml")


# -- the host scripts, run here against a server playing S3 ------------------------------------


@pytest.fixture
def s3_fake():
    with PresignedS3() as server:
        yield server


def _path_without(tmp_path: Path, program: str) -> str:
    """A PATH of this machine's tools without `program` (to make a host without curl)."""
    bin_dir = tmp_path / f"bin-without-{program}"
    bin_dir.mkdir()
    for tool in ("mkdir", "rm", "mv", "cat", "wc", "sed", "head", "tail", "find", "curl", "wget", "sh"):
        found = shutil.which(tool)
        if found and tool != program:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


CLIENTS = ["curl", pytest.param("wget", marks=pytest.mark.skipif(
    "GNU Wget" not in subprocess.run(["sh", "-c", "wget --version 2>/dev/null || true"], capture_output=True,
                                     text=True).stdout, reason="no GNU wget"))]


def _client_env(tmp_path: Path, client: str) -> dict[str, str]:
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    return {**os.environ, "PATH": _path_without(tmp_path, "curl")} if client == "wget" else dict(os.environ)


def _run_script(script: str, args: list[str], stdin: bytes, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", script_text(script), f"fleet-{script}", *args], input=stdin,
                          capture_output=True, env=env, timeout=60)


@pytest.mark.parametrize("client", CLIENTS)
def test_fetch_writes_each_file_under_its_name_only_when_complete(tmp_path, s3_fake, client):
    env = _client_env(tmp_path, client)
    s3_fake.objects = {"/b/a.txt": b"alpha\n", "/b/empty": b"", "/b/big": os.urandom(300_000)}
    s3_fake.breaks["/b/big"] = 100_000
    target, work = tmp_path / "1.partial", tmp_path / "1.partial.fetch0"
    url = s3_fake.base + "/b/{}?X-Amz-Signature=zz"
    requests = (direct.fetch_request(0, 0, 6, "a.txt", url.format("a.txt"))
                + direct.fetch_request(1, 0, 0, "d/e/empty", url.format("empty"))
                + direct.fetch_request(2, 0, 300_000, "big", url.format("big"))
                + direct.fetch_request(3, 0, 1, "../escape", url.format("a.txt"))
                + direct.fetch_request(4, 0, 1, "/abs", url.format("a.txt"))
                + direct.fetch_request(5, 0, 1, "a//b", url.format("a.txt"))
                + direct.fetch_request(6, 0, 1, "gone", url.format("gone")))
    result = _run_script("fetch", [str(target), str(work)], requests, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "0 done 6"
    assert lines[1] == "1 done 0"
    assert lines[2].startswith("2 fail 100000 200 ")  # broken: 100,000 bytes kept for a resume
    assert lines[3:6] == ["3 refused", "4 refused", "5 refused"]
    assert re.fullmatch(r"6 fail 0 404 \d+ NoSuchKey", lines[6])  # curl says 0, wget 8
    assert (target / "a.txt").read_bytes() == b"alpha\n"
    assert (target / "d/e/empty").read_bytes() == b""
    assert not (target / "big").exists()  # never under its name before it is complete
    assert sorted(p.name for p in tmp_path.rglob("escape")) == []
    assert not work.exists()  # the pieces go with the command


@pytest.mark.parametrize("client", CLIENTS)
def test_put_sends_regular_files_and_never_a_symlink(tmp_path, s3_fake, client):
    env = _client_env(tmp_path, client)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x.bin").write_bytes(b"x" * 5000)
    (out / "link").symlink_to("/etc/passwd")
    url = s3_fake.base + "/b/res/{}?X-Amz-Signature=zz"
    requests = (direct.put_request(0, 5000, "sub/x.bin", url.format("sub/x.bin"))
                + direct.put_request(1, 10, "link", url.format("link"))
                + direct.put_request(2, 1, "../x", url.format("x"))
                + direct.put_request(3, 5000, "sub/x.bin", url.format("sub/x.bin") + "&exp=1"))
    result = _run_script("put", [str(out), str(tmp_path / "put0")], requests, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["0 done 5000", "1 gone", "2 refused"]
    assert re.fullmatch(r"3 fail 0 403 \d+ AccessDenied", lines[3])
    assert s3_fake.puts == {"/b/res/sub/x.bin": b"x" * 5000}


def test_a_host_without_curl_or_gnu_wget_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = _run_script("fetch", [str(tmp_path / "d"), str(tmp_path / "w")], b"",
                         {**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 40
    report = _run_script("reach", ["http://127.0.0.1:1"], b"", {**os.environ, "PATH": str(bin_dir)})
    assert report.stdout == b"http_client=none\n"


def test_reach_tells_an_answering_endpoint_from_an_unreachable_one(s3_fake):
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    report = _run_script("reach", [s3_fake.base, "http://127.0.0.1:1"], b"", dict(os.environ))
    lines = report.stdout.decode().splitlines()
    assert lines[0] == "http_client=curl"
    assert lines[1] == f"endpoint=ok 404 {s3_fake.base}"
    assert lines[2].startswith("endpoint=unreachable 7 http://127.0.0.1:1")


# -- the controller's side, with the local transport -----------------------------------------


def _fake_signer(server: PresignedS3, signed: list[str]):
    async def sign(method: str, location: S3Location, expires: int) -> str:
        url = f"{server.base}/{location.bucket}/{location.key}?exp={time.time() // 1 + expires}&X-Amz-Signature=s"
        signed.append(method)
        return url
    return sign


def _local(tmp_path: Path):
    return transport_for(LocalHost(address="localhost", name="h", workdir=str(tmp_path)),
                         "algo-1 (h)")


async def test_a_get_broken_then_expired_is_resumed_with_a_new_url(tmp_path, s3_fake, monkeypatch):
    monkeypatch.setenv(direct.URL_SECONDS_VARIABLE, "1")
    body = os.urandom(400_000)
    s3_fake.objects = {"/b/in/big": body, "/b/in/small": b"s"}
    s3_fake.breaks["/b/in/big"] = 123_456  # the first GET breaks off
    s3_fake.stalls["/b/in/big"] = [0, 2.1]  # the second (the resume) is answered after its URL expired
    signed: list[str] = []
    objects = [InputObject(S3Location("b", "in/big"), "big", len(body)),
               InputObject(S3Location("b", "in/small"), "sub/small", 1)]
    count = TransferCount()
    target = tmp_path / "1.partial"

    async def main() -> None:
        async with _local(tmp_path) as transport:
            await direct.stage_input_direct([objects], [Destination(transport.label, transport, str(target))],
                                            _fake_signer(s3_fake, signed), count)
    await main()
    assert (target / "big").read_bytes() == body
    assert (target / "sub" / "small").read_bytes() == b"s"
    ranges = [r for method, path, r in s3_fake.seen if path == "/b/in/big"]
    # Broken, expired, resumed. A URL living 1 s may expire before it is used on a loaded
    # machine, the first GET's too (then it is tried again whole): whole tries until the one that
    # broke off at its 123,456th byte, then only tries resuming there.
    whole = ranges.index("bytes=123456-")
    assert whole >= 1 and set(ranges[:whole]) == {None} and set(ranges[whole:]) == {"bytes=123456-"}, ranges
    assert len(ranges) >= 3, ranges  # the resume's first URL expired: it took another
    assert count.objects == 2 and count.bytes == len(body) + 1 and count.host_bytes == len(body) + 1
    # A URL per try, the small object's included (its 1 s URL may expire before its GET too).
    assert len(signed) == len([path for method, path, r in s3_fake.seen if method == "GET"])


async def test_an_object_that_cannot_be_read_names_the_key_and_the_host(tmp_path, s3_fake):
    async def main() -> None:
        async with _local(tmp_path) as transport:
            await direct.stage_input_direct([[InputObject(S3Location("b", "in/nope"), "nope", 3)]],
                                            [Destination(transport.label, transport, str(tmp_path / "1.partial"))],
                                            _fake_signer(s3_fake, []), TransferCount())
    with pytest.raises(ClientError) as caught:
        await main()
    assert caught.value.message == "cannot read s3://b/in/nope on algo-1 (h): NoSuchKey (HTTP 404)"
    assert "exp=" not in caught.value.message


async def test_outputs_go_up_by_relative_path_and_symlinks_are_skipped_with_a_warning(tmp_path, s3_fake):
    out = tmp_path / "outputs" / "1"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "a.bin").write_bytes(b"a" * 3000)
    (out / "e").write_bytes(b"")
    (out / "link").symlink_to("/etc/passwd")
    os.mkfifo(out / "fifo")
    warnings: list[str] = []
    count = OutputCount()

    async def main() -> None:
        async with _local(tmp_path) as transport:
            await direct.upload_host_direct(transport, "algo-1", str(out), S3Location("b", "res"), "out", count,
                                            _fake_signer(s3_fake, []), warnings.append)
    await main()
    assert s3_fake.puts == {"/b/res/sub/a.bin": b"a" * 3000, "/b/res/e": b""}
    assert sorted(warnings) == ["output out: skipped algo-1:fifo, not a regular file",
                                "output out: skipped the symlink algo-1:link (symlinks are never followed)"]
    assert (count.objects, count.bytes) == (2, 3000)
    assert not any(p.name.startswith("1.put") for p in out.parent.iterdir())  # the answers' dirs are gone


def test_requests_are_spread_over_lanes_in_order():
    requests = [direct._Request(i, S3Location("b", str(i)), str(i), 1) for i in range(10)]
    lanes = direct._lanes(requests)
    assert len(lanes) == direct.LANES
    assert sorted(r.id for lane in lanes for r in lane) == list(range(10))
    assert all(isinstance(lane, deque) for lane in lanes)
