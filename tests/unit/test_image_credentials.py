"""Image references as Docker reads them, and the registry credentials the controller finds
(its Docker config: auths, credHelpers, credsStore through a real helper program; ECR), and
what a host receives of them. No hosts."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from fleet import host as scripts
from fleet.errors import ClientError, InvalidInput
from fleet.image.credentials import RegistryAuth, docker_config_auth
from fleet.image.reference import parse_reference
from fleet.image.registry import base_url

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("uri", "registry", "repository", "tag", "digest"), [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("team/proc:1.2", "docker.io", "team/proc", "1.2", None),
    ("10.0.0.5:5000/proc", "10.0.0.5:5000", "proc", "latest", None),
    ("localhost/a/b:x", "localhost", "a/b", "x", None),
    (f"reg.lab/a@{DIGEST}", "reg.lab", "a", None, DIGEST),
    (f"reg.lab/a:t@{DIGEST}", "reg.lab", "a", "t", DIGEST),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/sm/proc:3", "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
     "sm/proc", "3", None),
])
def test_references_are_read_as_docker_reads_them(uri, registry, repository, tag, digest):
    ref = parse_reference(uri)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_ecr_registries_are_recognised_with_their_account_and_region():
    assert parse_reference("123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1").ecr == ("123456789012", "us-east-1")
    assert parse_reference("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/x").ecr == ("123456789012", "cn-north-1")
    assert parse_reference("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/x").ecr is not None
    assert parse_reference("evil.com/123456789012.dkr.ecr.us-east-1.amazonaws.com/x").ecr is None
    assert parse_reference("12345.dkr.ecr.us-east-1.amazonaws.com/x").ecr is None  # not an account


def test_a_pinned_reference_names_the_digest_and_hub_images_keep_their_short_name():
    assert parse_reference("busybox:1").pinned(DIGEST) == f"busybox@{DIGEST}"
    assert parse_reference("reg.lab:5000/a/b:1").pinned(DIGEST) == f"reg.lab:5000/a/b@{DIGEST}"


@pytest.mark.parametrize("uri", ["UPPER/case", "reg.lab/a@sha256:short", "a:b:c:d", "reg.lab/a:-tag", "a//b"])
def test_a_bad_reference_is_refused_naming_the_field(uri):
    with pytest.raises(InvalidInput, match=r"AppSpecification\.ImageUri"):
        parse_reference(uri)


def test_the_registry_api_is_https_unless_on_loopback_or_declared_insecure():
    none = RegistryAuth("none")
    assert base_url(parse_reference("reg.lab/a"), none, frozenset()) == "https://reg.lab"
    assert base_url(parse_reference("busybox"), none, frozenset()) == "https://registry-1.docker.io"
    assert base_url(parse_reference("localhost:5000/a"), none, frozenset()) == "http://localhost:5000"
    assert base_url(parse_reference("10.0.0.5:5000/a"), none, frozenset({"10.0.0.5:5000"})) == "http://10.0.0.5:5000"
    ecr = RegistryAuth("ECR", "AWS", "pw", endpoint="https://1.dkr.ecr.x.amazonaws.com")
    assert base_url(parse_reference("123456789012.dkr.ecr.x-1.amazonaws.com/a"), ecr, frozenset()) == \
        "https://1.dkr.ecr.x.amazonaws.com"


def _config(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


async def test_auths_give_the_user_and_password_the_host_gets_as_its_own_docker_config(tmp_path):
    auth = base64.b64encode(b"zq-user:zq pass:word").decode()
    path = _config(tmp_path, {"auths": {"https://reg.lab:5000/v1/": {"auth": auth}}})
    ref = parse_reference("reg.lab:5000/team/proc:1")
    found = await docker_config_auth(ref, path)
    assert (found.source, found.username, found.password) == ("docker config", "zq-user", "zq pass:word")
    assert "zq pass" not in repr(found)  # never in a log by accident
    given = json.loads(found.docker_config(ref))
    assert given == {"auths": {"reg.lab:5000": {"auth": auth}}}
    # What the session reads: a line announcing the bytes, then the bytes (never an argv).
    step = scripts.image_pull(ref.pinned(DIGEST), found.docker_config(ref))
    line, _, rest = step.partition(b"\n")
    assert line == f"pull reg.lab:5000/team/proc@{DIGEST} {len(rest)}".encode() and json.loads(rest) == given


async def test_no_entry_for_the_registry_means_no_credentials(tmp_path):
    path = _config(tmp_path, {"auths": {"other.lab": {"auth": base64.b64encode(b"u:p").decode()}}})
    found = await docker_config_auth(parse_reference("reg.lab/a"), path)
    assert found.anonymous and found.docker_config(parse_reference("reg.lab/a")) == b""
    assert (await docker_config_auth(parse_reference("reg.lab/a"), tmp_path / "absent.json")).anonymous


def _helper(tmp_path: Path, monkeypatch, name: str, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    program = bin_dir / f"docker-credential-{name}"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


async def test_a_credential_helper_is_asked_for_the_registry_on_stdin(tmp_path, monkeypatch):
    asked = tmp_path / "asked"
    _helper(tmp_path, monkeypatch, "zq", f'[ "$1" = get ] || exit 9\ncat > {asked}\n'
            'echo \'{"ServerURL":"reg.lab","Username":"helped","Secret":"s3cret"}\'\n')
    path = _config(tmp_path, {"credHelpers": {"reg.lab": "zq"},
                              "auths": {"reg.lab": {"auth": base64.b64encode(b"stale:old").decode()}}})
    found = await docker_config_auth(parse_reference("reg.lab/a:1"), path)
    assert (found.username, found.password, found.source) == ("helped", "s3cret", "docker config (zq)")
    assert asked.read_text() == "reg.lab"


async def test_credsstore_that_has_nothing_falls_back_to_anonymous_and_a_broken_one_is_named(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "empty", 'echo "credentials not found in native keychain"; exit 1\n')
    found = await docker_config_auth(parse_reference("reg.lab/a"), _config(tmp_path, {"credsStore": "empty"}))
    assert found.anonymous
    _helper(tmp_path, monkeypatch, "broken", 'echo "the keychain is locked" >&2; exit 3\n')
    with pytest.raises(ClientError, match=r"docker-credential-broken get failed for reg.lab \(status 3\)"):
        await docker_config_auth(parse_reference("reg.lab/a"), _config(tmp_path, {"credsStore": "broken"}))
    with pytest.raises(ClientError, match="credential helper 'absent'"):
        await docker_config_auth(parse_reference("reg.lab/a"), _config(tmp_path, {"credsStore": "absent"}))


async def test_a_docker_config_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ClientError, match=str(path)):
        await docker_config_auth(parse_reference("reg.lab/a"), path)
