"""The S3 test server itself (tests/support/s3server.py): a real SeaweedFS that the
S3 tests can fill, read, hand to a subprocess through its environment, and take away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

# the fixtures s3 and bucket come from support/s3server.py, through conftest.py


def test_put_get_list_round_trip(s3, bucket):
    s3.put(bucket, "data/part-0", b"\x00\x01" * 1000)
    s3.put(bucket, "data/a/b/c/part-1", b"hello")
    s3.put(bucket, "data/empty", b"")
    s3.put(bucket, "other", b"x")

    assert s3.get(bucket, "data/part-0") == b"\x00\x01" * 1000
    assert s3.get(bucket, "data/a/b/c/part-1") == b"hello"
    assert s3.get(bucket, "data/empty") == b""
    assert s3.keys(bucket, "data/") == ["data/a/b/c/part-1", "data/empty", "data/part-0"]
    assert s3.keys(bucket) == ["data/a/b/c/part-1", "data/empty", "data/part-0", "other"]
    assert s3.endpoint.startswith("http://127.0.0.1:")
    assert s3.env["AWS_ENDPOINT_URL"] == s3.endpoint
    assert not os.path.exists(s3.env["AWS_CONFIG_FILE"])
    assert not os.path.exists(s3.env["AWS_SHARED_CREDENTIALS_FILE"])


def test_a_subprocess_reaches_s3_through_the_env_alone(s3, bucket):
    s3.put(bucket, "in/x", b"from the fixture")
    code = (
        "import json, sys, botocore.session\n"
        "c = botocore.session.get_session().create_client('s3')\n"
        "b = sys.argv[1]\n"
        "c.put_object(Bucket=b, Key='out/y', Body=b'from the child')\n"
        "print(json.dumps({'x': c.get_object(Bucket=b, Key='in/x')['Body'].read().decode(),\n"
        "                  'region': c.meta.region_name, 'endpoint': c.meta.endpoint_url}))\n"
    )
    env = s3.environ({**os.environ, "AWS_PROFILE": "no-such-profile", "AWS_SESSION_TOKEN": "stale"})
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    result = subprocess.run([sys.executable, "-c", code, bucket], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"x": "from the fixture", "region": "us-east-1",
                                         "endpoint": s3.endpoint}
    assert s3.get(bucket, "out/y") == b"from the child"


def test_stop_and_start_keep_the_endpoint_and_the_data(s3, bucket):
    s3.put(bucket, "kept/one", b"1" * 100_000)
    endpoint, old_pid = s3.endpoint, s3.pid
    port = int(endpoint.rsplit(":", 1)[1])

    s3.stop()
    assert s3.pid is None and not s3.running
    assert not os.path.exists(f"/proc/{old_pid}") or _is_zombie_or_gone(old_pid)
    with pytest.raises(OSError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    s3.start()
    assert s3.running and s3.pid != old_pid and s3.endpoint == endpoint
    assert s3.get(bucket, "kept/one") == b"1" * 100_000
    assert s3.keys(bucket) == ["kept/one"]


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True

