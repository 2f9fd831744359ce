"""`fleet serve` driven by the real SageMaker Python SDK (v2, the test extras'): a
ScriptProcessor on the 3 test hosts, through the SageMaker and CloudWatch Logs APIs that
`fleet serve` answers, with S3 on the test SeaweedFS.

The SDK runs in this process. Its one boto3 session signs with the S3 server's key, which is
also the key of `fleet serve`'s own AWS chain (the server's jobs read and write that S3 with
it); its endpoints come from the environment as a user would set them:
AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_CLOUDWATCH_LOGS point at `fleet serve`,
AWS_ENDPOINT_URL_S3 at SeaweedFS, and AWS_ENDPOINT_URL (any other service, STS say) at
`fleet serve` too, so an unexpected call is answered there (and seen) rather than sent to AWS.
Every socket this process opens must go to loopback (a guard refuses anything else), and
every AWS call the SDK makes is recorded (service, operation, request, the response's fields):
`FLEET_TEST_SDK_CALLS=DIR` writes them to DIR/TESTNAME.json.

The SDK polls: `logs=True` reads the logs every 10 s and describes the job every 30 s, so a
job run with wait=True takes at least ~40 s here whatever it does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import PYTHON_IMAGE, python_image  # noqa: F401  (fixture)

from conftest import wait_running

ROLE = "arn:aws:iam::000000000000:role/x"
REGION = "us-east-1"
INPUT = "/opt/ml/processing/input/data"  # the SDK puts the code in /opt/ml/processing/input/code
OUTPUT = "/opt/ml/processing/output"
NO_TELEMETRY = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

pytestmark = pytest.mark.timeout(420)


def _serve_exists() -> bool:
    result = subprocess.run([sys.executable, "-m", "fleet", "serve", "--help"], capture_output=True, timeout=60)
    return result.returncode == 0


@pytest.fixture(scope="module")
def sdk():
    """The SageMaker Python SDK, or a skip when it or `fleet serve` is missing."""
    if not _serve_exists():
        pytest.skip("`fleet serve` is not there yet (fleet serve --help failed)")
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    return pytest.importorskip("sagemaker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A running `fleet serve` (a subprocess, stopped by its pid)."""

    def __init__(self, process: subprocess.Popen, endpoint: str, log: Path, env: dict[str, str]) -> None:
        self.process, self.endpoint, self.log, self.env = process, endpoint, log, env

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def serve(sdk, cluster, s3, fleet_home, tmp_path, python_image):  # noqa: F811  (python_image: a fixture)
    """`fleet serve --inventory CLUSTER --listen 127.0.0.1:PORT`, FLEET_HOME of the test, the
    S3 server's env and key as its AWS chain. Waits for the port; SIGTERM by pid at the end
    (SIGKILL past 20 s)."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**s3.environ(), "FLEET_HOME": str(fleet_home), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fleet", "serve", "--inventory", str(cluster.inventory),
                                    "--listen", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    server = Serve(process, endpoint, log, env)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"fleet serve exited with {process.returncode}:\n{server.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"fleet serve did not listen within 30 s:\n{server.log_text()}") from None
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class Calls:
    """Every AWS call of a boto3 session: service, operation, the request's params, and the
    response (parsed) or the error code."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def before(self, model, params, **_) -> None:
        body = params.get("body")
        if isinstance(body, bytes | bytearray) and params.get("headers", {}).get("Content-Type", "").startswith(
                "application/x-amz-json"):
            with contextlib.suppress(ValueError):
                body = json.loads(body)
        elif body is not None and not isinstance(body, dict | str):
            body = f"<{type(body).__name__}>"
        self.calls.append({"service": model.service_model.service_name, "operation": model.name,
                           "target": params.get("headers", {}).get("X-Amz-Target"),
                           "url_path": params.get("url_path"), "request": body})

    def after(self, http_response, parsed, model, **_) -> None:
        for call in reversed(self.calls):
            if call["operation"] == model.name and "status" not in call:
                call["status"] = getattr(http_response, "status_code", None)
                call["response"] = {k: v for k, v in (parsed or {}).items() if k != "ResponseMetadata"}
                break

    def of(self, service: str) -> list[dict]:
        return [c for c in self.calls if c["service"] == service]

    def operations(self) -> list[str]:
        return [f"{c['service']}.{c['operation']}" for c in self.calls]

    def dump(self, name: str) -> None:
        where = os.environ.get("FLEET_TEST_SDK_CALLS")
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
            (Path(where) / f"{name}.json").write_text(json.dumps(self.calls, indent=1, default=str))


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse (and list) any connection of this process that is not to loopback: nothing of
    the SDK's may reach AWS (telemetry, STS, a default endpoint)."""
    refused: list = []
    original = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            refused.append(address)
            raise OSError(f"test guard: connection to {address} refused (loopback only)")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield refused
    assert refused == [], f"the SDK tried to connect outside loopback: {refused}"


@pytest.fixture
def session(sdk, serve, s3, bucket, monkeypatch, loopback_only, request):
    """A sagemaker.Session on `fleet serve` and the test S3, default bucket `bucket` (which
    exists: no CreateBucket, no STS), telemetry off; `session.calls` records every AWS call."""
    import boto3

    for key in [k for k in os.environ if k.startswith(("AWS_", "SAGEMAKER_"))]:
        monkeypatch.delenv(key)
    no_file = str(serve.log.parent / "no-such-aws-file")
    for key, value in {
        "AWS_ENDPOINT_URL": serve.endpoint,  # any other service: fleet serve answers (or refuses) it
        "AWS_ENDPOINT_URL_SAGEMAKER": serve.endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": serve.endpoint,
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "AWS_CONFIG_FILE": no_file, "AWS_SHARED_CREDENTIALS_FILE": no_file,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }.items():
        monkeypatch.setenv(key, value)
    boto_session = boto3.Session(aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                                 region_name=REGION)
    calls = Calls()
    boto_session.events.register("before-call", calls.before)
    boto_session.events.register("after-call", calls.after)
    sm_session = sdk.Session(boto_session=boto_session, default_bucket=bucket, sagemaker_config=NO_TELEMETRY)
    sm_session.calls = calls
    yield sm_session
    calls.dump(request.node.name)


def _processor(sdk, session):
    from sagemaker.processing import ScriptProcessor

    return ScriptProcessor(command=["python3"], image_uri=PYTHON_IMAGE, role=ROLE, instance_count=3,
                           instance_type="ml.m5.xlarge", sagemaker_session=session)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "script.py"
    path.write_text("import json, os, sys, time\n"
                    "HOST = json.load(open('/opt/ml/config/resourceconfig.json'))['current_host']\n" + body)
    return str(path)


def _wait_status(job, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        described = job.describe()
        if described["ProcessingJobStatus"] in statuses:
            return described
        if time.monotonic() > deadline:
            raise AssertionError(f"{job.job_name} still {described['ProcessingJobStatus']} after {timeout} s, "
                                 f"not one of {statuses}: {described}")
        time.sleep(1)


def _assert_clean(cluster, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (left := cluster.leftovers(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"job {name} left things behind"


def test_a_script_processor_runs_sharded_on_3_hosts_and_the_sdk_prints_every_hosts_log(
        sdk, session, serve, s3, bucket, cluster, tmp_path, capfd):
    from sagemaker.processing import ProcessingInput, ProcessingOutput

    token = secrets.token_hex(6)
    names = [f"part-{i:02d}.txt" for i in range(6)]
    for name in names:
        s3.put(bucket, f"data/{name}", f"{name} {token}\n".encode())
    code = _script(tmp_path, (
        f"files = sorted(os.listdir({INPUT!r}))\n"
        f"os.makedirs({OUTPUT!r}, exist_ok=True)\n"
        f"open(os.path.join({OUTPUT!r}, HOST + '.txt'), 'w').write('\\n'.join(files))\n"
        f"print('zq-marker-{token}', HOST, 'got', len(files), flush=True)\n"
        "print('second line of', HOST, flush=True)\n"))
    processor = _processor(sdk, session)
    processor.run(code=code,
                  inputs=[ProcessingInput(source=f"s3://{bucket}/data/", destination=INPUT,
                                          s3_data_distribution_type="ShardedByS3Key")],
                  outputs=[ProcessingOutput(source=OUTPUT, destination=f"s3://{bucket}/out/")],
                  wait=True, logs=True)
    job = processor.jobs[-1]
    out = capfd.readouterr().out
    described = job.describe()
    assert described["ProcessingJobStatus"] == "Completed", described
    for k in (1, 2, 3):
        assert f"zq-marker-{token} algo-{k} got" in out, f"algo-{k}'s log line missing from the SDK's output:\n{out}"
        assert f"second line of algo-{k}" in out
        assert out.count(f"zq-marker-{token} algo-{k} ") == 1, f"algo-{k}'s line printed more than once:\n{out}"
    # The outputs, in S3: one file per host; the shards together are every object, once.
    keys = sorted(s3.keys(bucket, "out/"))
    assert keys == [f"out/algo-{k}.txt" for k in (1, 2, 3)], keys
    shards = [s3.get(bucket, key).decode().split() for key in keys]
    assert sorted(f for shard in shards for f in shard) == names, shards
    # The code the SDK uploaded went to the default bucket, under the job's name.
    assert f"{job.job_name}/input/code/script.py" in s3.keys(bucket, job.job_name)
    sagemaker_calls = [c["operation"] for c in session.calls.of("sagemaker")]
    assert sagemaker_calls[0] == "CreateProcessingJob", sagemaker_calls
    assert {"sts", "iam"}.isdisjoint(c["service"] for c in session.calls.calls), session.calls.operations()
    _assert_clean(cluster, job.job_name)


def test_a_failing_script_raises_unexpected_status_with_the_failure_reason_and_exit_message(
        sdk, session, serve, cluster, tmp_path):
    from sagemaker.exceptions import UnexpectedStatusException

    message = f"zq-bad-input-{secrets.token_hex(4)}: column 7 is not a number"
    code = _script(tmp_path, (
        "if HOST == 'algo-2':\n"
        f"    open('/opt/ml/output/message', 'w').write({message!r})\n"
        "    print('failing on', HOST, flush=True)\n"
        "    sys.exit(3)\n"
        "time.sleep(2)\n"))
    processor = _processor(sdk, session)
    with pytest.raises(UnexpectedStatusException) as raised:
        processor.run(code=code, wait=True, logs=True)
    job = processor.jobs[-1]
    described = job.describe()
    assert described["ProcessingJobStatus"] == "Failed", described
    assert raised.value.actual_status == "Failed"
    reason = described.get("FailureReason", "")
    assert reason.startswith("AlgorithmError"), described
    assert reason in str(raised.value), (reason, str(raised.value))
    assert message in described.get("ExitMessage", ""), described
    _assert_clean(cluster, job.job_name)
    # The SDK's exception shows FailureReason only (never ExitMessage): fleet serve puts the
    # message the container wrote into it.
    assert message in str(raised.value), (reason, str(raised.value))


def test_stop_of_a_long_running_job_goes_stopping_then_stopped(sdk, session, serve, cluster, tmp_path):
    code = _script(tmp_path, (
        "print('started', HOST, flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"))
    processor = _processor(sdk, session)
    processor.run(code=code, wait=False, logs=False)
    job = processor.jobs[-1]
    wait_running(cluster, job.job_name)
    assert job.describe()["ProcessingJobStatus"] == "InProgress"
    job.stop()
    right_after = job.describe()["ProcessingJobStatus"]
    described = _wait_status(job, {"Stopped", "Failed", "Completed"}, timeout=90)
    assert described["ProcessingJobStatus"] == "Stopped", described
    _assert_clean(cluster, job.job_name)
    # SageMaker answers StopProcessingJob once the job is Stopping: a describe right after says so.
    assert right_after in ("Stopping", "Stopped"), right_after
