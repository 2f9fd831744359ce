"""`fleet run` of a job without S3 data, serve or a pull imports only what that job needs:
the interpreter's start is a fixed cost the baseline `ssh HOST docker run` does not pay
(issue 20). aiohttp (~0.1 s) comes with a registry or S3, aiobotocore with S3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("aiohttp", "aiobotocore", "botocore", "boto3")

# What `fleet run` imports before it connects: the CLI, the executor, the SSH transport.
START = """
import sys
import fleet.cli, fleet.runtime.executor
from fleet.inventory import SshHost
from fleet.transport import transport_for
transport_for(SshHost(address="h1"), "algo-1")
print(" ".join(sorted(name for name in sys.modules if name.partition(".")[0] in {heavy!r})))
"""


def test_a_plain_fleet_run_imports_no_http_client_or_s3_library():
    done = subprocess.run([sys.executable, "-c", START.format(heavy=set(HEAVY))], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
