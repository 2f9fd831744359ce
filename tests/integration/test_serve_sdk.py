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
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import PYTHON_IMAGE, python_image  # noqa: F401  (fixture)

from conftest import wait_running
from support.serving import free_port, serve_argv, wait_listening

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


class Serve:
    """A running `fleet serve` (a subprocess, stopped by its pid)."""

    def __init__(self, process: subprocess.Popen, endpoint: str, log: Path, env: dict[str, str]) -> None:
        self.process, self.endpoint, self.log, self.env = process, endpoint, log, env

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exports(self) -> dict[str, str]:
        """The variables of the `export NAME=VALUE` lines serve printed at start (as a shell
        would read them), once all 4 are there."""
        deadline = time.monotonic() + 30
        while True:
            found = {}
            for line in self.log_text().splitlines():
                if line.startswith("export "):
                    name, _, value = line.removeprefix("export ").partition("=")
                    found[name] = shlex.split(value)[0]
            if len(found) == 4 or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture
def serve(sdk, cluster, s3, fleet_home, tmp_path, python_image):  # noqa: F811  (python_image: a fixture)
    """`fleet serve --inventory CLUSTER --listen 127.0.0.1:PORT`, FLEET_HOME of the test, the
    S3 server's env and key as its AWS chain. Waits for the port; SIGTERM by pid at the end
    (SIGKILL past 20 s)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**s3.environ(), "FLEET_HOME": str(fleet_home), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_argv(cluster.inventory, port), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    server = Serve(process, endpoint, log, env)
    try:
        wait_listening(process, port, server.log_text)
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


# --- issue 21: zero code change, STS, the CLI's waiter ---

SDK_BUCKET = "sagemaker-us-east-1-000000000000"  # sagemaker-REGION-ACCOUNT: serve's default, as the SDK names it


class ApiCalls:
    """Every API call any botocore client of this process makes (service, operation, endpoint):
    an observer of BaseClient._make_api_call, which changes nothing the SDK does."""

    def __init__(self, monkeypatch) -> None:
        from botocore.client import BaseClient

        self.calls: list[tuple[str, str, str]] = []
        original = BaseClient._make_api_call

        def record(client, operation_name, api_params):
            self.calls.append((client.meta.service_model.service_name, operation_name, client.meta.endpoint_url))
            return original(client, operation_name, api_params)

        monkeypatch.setattr(BaseClient, "_make_api_call", record)

    def services(self) -> set[str]:
        return {service for service, _, _ in self.calls}


@pytest.fixture
def user_shell(serve, s3, monkeypatch, loopback_only):
    """This process's environment as a user's shell after running serve's export lines, plus
    their S3 (endpoint, key, region) and nothing else of AWS's or the SDK's: no
    AWS_ENDPOINT_URL catch-all, so a call to any other service would go to AWS (and the
    loopback guard would refuse and list it)."""
    import boto3

    exports = serve.exports()
    assert sorted(exports) == ["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "AWS_ENDPOINT_URL_SAGEMAKER",
                               "AWS_ENDPOINT_URL_STS", "SAGEMAKER_USER_CONFIG_OVERRIDE"], serve.log_text()
    for key in [k for k in os.environ if k.startswith(("AWS_", "SAGEMAKER_"))]:
        monkeypatch.delenv(key)
    no_file = str(serve.log.parent / "no-such-aws-file")
    for key, value in {**exports, "AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": REGION,
                       "AWS_CONFIG_FILE": no_file, "AWS_SHARED_CREDENTIALS_FILE": no_file,
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return exports


def _drop_bucket(s3, name: str) -> None:
    with contextlib.suppress(Exception):
        for key in s3.keys(name):
            s3.delete(name, key)
        s3.client.delete_bucket(Bucket=name)


def test_with_only_the_printed_exports_an_unchanged_script_processor_runs_on_3_hosts(
        sdk, serve, s3, cluster, user_shell, monkeypatch, tmp_path, capfd):
    """The code of a SageMaker user, unchanged: no session, no bucket, no endpoint in it."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor

    _drop_bucket(s3, SDK_BUCKET)  # the SDK finds it missing and creates it in the user's S3
    calls = ApiCalls(monkeypatch)
    token = secrets.token_hex(6)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"part-{i}.txt").write_text(f"{i} {token}\n")
    # The files wherever under LocalPath they land: the SDK uploads a local source to
    # s3://BUCKET/JOB/input/input-1 (no trailing '/'), which fleet places under input-1/.
    code = _script(tmp_path, (
        f"files = sorted(f for _, _, names in os.walk({INPUT!r}) for f in names)\n"
        f"os.makedirs({OUTPUT!r}, exist_ok=True)\n"
        f"open(os.path.join({OUTPUT!r}, HOST + '.txt'), 'w').write(' '.join(files))\n"
        f"print('zq-zero-{token}', HOST, len(files), flush=True)\n"))
    try:
        processor = ScriptProcessor(command=["python3"], image_uri=PYTHON_IMAGE, role=ROLE, instance_count=3,
                                    instance_type="ml.m5.xlarge")
        processor.run(code=code, inputs=[ProcessingInput(source=str(data), destination=INPUT)],
                      outputs=[ProcessingOutput(source=OUTPUT)], wait=True, logs=True)
        job = processor.jobs[-1]
        out = capfd.readouterr().out
        described = job.describe()
        assert described["ProcessingJobStatus"] == "Completed", described
        for k in (1, 2, 3):
            assert f"zq-zero-{token} algo-{k} 3" in out, out
        # the SDK's default bucket is the one serve's config file named, in the user's S3
        assert processor.sagemaker_session.default_bucket() == SDK_BUCKET
        destination = described["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        assert destination.startswith(f"s3://{SDK_BUCKET}/{job.job_name}/"), destination
        prefix = destination.removeprefix(f"s3://{SDK_BUCKET}/")
        assert sorted(s3.keys(SDK_BUCKET, prefix)) == [f"{prefix}/algo-{k}.txt" for k in (1, 2, 3)]
        assert s3.get(SDK_BUCKET, f"{prefix}/algo-1.txt").decode() == "part-0.txt part-1.txt part-2.txt"
        assert f"{job.job_name}/input/code/script.py" in s3.keys(SDK_BUCKET, job.job_name)
        # no STS call at all (the config file gave the bucket), and every call went to serve or S3
        assert calls.services() <= {"sagemaker", "logs", "s3"}, calls.calls
        assert {endpoint for _, _, endpoint in calls.calls} <= {serve.endpoint, s3.endpoint}, calls.calls
        assert ("s3", "CreateBucket", s3.endpoint) in calls.calls
        _assert_clean(cluster, job.job_name)
    finally:
        _drop_bucket(s3, SDK_BUCKET)


def test_boto3_and_the_aws_cli_get_the_caller_identity_from_serve(sdk, serve, s3, user_shell, monkeypatch):
    """AWS_ENDPOINT_URL_STS from the exports: answered by serve (the guard refuses AWS), with the
    account of the ARNs of serve's jobs and the signing key's profile (the operator's here)."""
    import boto3

    calls = ApiCalls(monkeypatch)
    identity = boto3.client("sts").get_caller_identity()
    assert calls.calls == [("sts", "GetCallerIdentity", serve.endpoint)]
    assert identity["Account"] == "000000000000"
    assert identity["Arn"] == "arn:aws:iam::000000000000:user/fleet-controller"
    cli = Path(sys.executable).with_name("aws")
    result = subprocess.run([str(cli), "sts", "get-caller-identity", "--output", "json"], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {k: identity[k] for k in ("UserId", "Account", "Arn")}


def test_the_aws_clis_waiter_returns_when_the_job_completes_and_fails_on_a_failed_job(
        sdk, serve, s3, user_shell, cluster):
    import boto3

    client = boto3.client("sagemaker")
    cli = [str(Path(sys.executable).with_name("aws")), "sagemaker", "wait", "processing-job-completed-or-stopped",
           "--processing-job-name"]

    def create(name: str, script: str) -> None:
        client.create_processing_job(
            ProcessingJobName=name, RoleArn=ROLE,
            ProcessingResources={"ClusterConfig": {"InstanceCount": 3, "InstanceType": "ml.m5.xlarge",
                                                   "VolumeSizeInGB": 1}},
            AppSpecification={"ImageUri": PYTHON_IMAGE, "ContainerEntrypoint": ["python3", "-c", script]})

    failing = f"zq-wait-fail-{secrets.token_hex(3)}"
    create(failing, "import sys; sys.exit(3)")
    for _ in range(600):
        if client.describe_processing_job(ProcessingJobName=failing)["ProcessingJobStatus"] == "Failed":
            break
        time.sleep(0.2)
    result = subprocess.run([*cli, failing], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 255, result
    assert "Waiter ProcessingJobCompletedOrStopped failed" in result.stderr, result.stderr
    _assert_clean(cluster, failing)
    # a job still running when the waiter starts: it polls (every 60 s, botocore's model) until Completed
    name = f"zq-wait-{secrets.token_hex(3)}"
    create(name, "import time; time.sleep(3)")
    result = subprocess.run([*cli, name], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result
    assert client.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Completed"
    _assert_clean(cluster, name)


# --- the SDK v3 line, in its own virtualenv (scripts/setup: .venv-sdk3) ---

SDK3_PYTHON = Path(__file__).resolve().parents[2] / ".venv-sdk3" / "bin" / "python"


def _sdk3(scenario: str, serve, s3, name: str) -> tuple[dict, str]:
    """tests/integration/sdk3_client.py SCENARIO in .venv-sdk3, its environment a user's shell
    after serve's exports (plus the test S3): what it found, and what it printed."""
    if not SDK3_PYTHON.exists():
        pytest.skip(f"{SDK3_PYTHON} is missing: scripts/setup builds it (the SDK v3 line, sagemaker-core 2.x)")
    no_file = str(serve.log.parent / "no-such-aws-file")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "PYTHON"))}
    env.update(serve.exports(), AWS_ENDPOINT_URL_S3=s3.endpoint, AWS_ACCESS_KEY_ID=s3.access_key,
               AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=no_file,
               AWS_SHARED_CREDENTIALS_FILE=no_file, AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run([str(SDK3_PYTHON), str(Path(__file__).with_name("sdk3_client.py")), scenario,
                             PYTHON_IMAGE, ROLE, name], capture_output=True, text=True, timeout=360, env=env,
                            cwd=serve.log.parent)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, f"{result.stdout}\n{result.stderr}"
    found = json.loads(lines[-1].removeprefix("RESULT "))
    assert found["refused"] == [], found["refused"]
    assert {call[2] for call in found["calls"]} <= {serve.endpoint, s3.endpoint}, found["calls"]
    assert "sts" not in {call[0] for call in found["calls"]}, found["calls"]
    return found, result.stdout


def test_sdk3_script_processor_runs_on_3_hosts_with_only_the_exports(sdk, serve, s3, cluster):
    name = f"zq-v3sp-{secrets.token_hex(3)}"
    _drop_bucket(s3, SDK_BUCKET)
    try:
        found, out = _sdk3("script-processor", serve, s3, name)
        assert found["status"] == "Completed", found
        assert found["bucket"] == SDK_BUCKET
        assert found["code"] and found["code"][0].startswith(f"s3://{SDK_BUCKET}/"), found
        for k in (1, 2, 3):
            assert f"zq-v3-{name} algo-{k}" in out, out
        _assert_clean(cluster, found["name"])
    finally:
        _drop_bucket(s3, SDK_BUCKET)


def test_sdk3_processing_job_resource_creates_waits_with_logs_stops_and_lists(sdk, serve, s3, cluster):
    name = f"zq-v3res-{secrets.token_hex(3)}"
    found, out = _sdk3("resources", serve, s3, name)
    assert found["done"] == "Completed", found
    for k in (1, 2, 3):
        assert f"zq-v3-res algo-{k}" in out, out
    assert found["right_after_stop"] in ("Stopping", "Stopped"), found
    assert found["stopped"] == "Stopped", found
    assert found["all"] == [f"{name}-done", f"{name}-stop"], found
    _assert_clean(cluster, f"{name}-done")
    _assert_clean(cluster, f"{name}-stop")
