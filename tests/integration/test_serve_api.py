"""`fleet serve` driven by real clients (boto3, the AWS CLI) on the test bed: the SageMaker
calls and their error codes, the logs, authentication, jobs waiting for hosts, and a server
killed mid-job and started again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from conftest import make_job
from support.serving import free_port, serve_argv, wait_listening

boto3 = pytest.importorskip("boto3")
pytestmark = pytest.mark.integration

KEY, SECRET = "AKIDFLEETSERVETEST", "fleet-serve-test-secret"
GROUP = "/aws/sagemaker/ProcessingJobs"


class Served:
    def __init__(self, fleet, inventory: Path) -> None:
        self.fleet = fleet
        self.inventory = inventory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = fleet.env(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                             AWS_ENDPOINT_URL_SAGEMAKER=self.url, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=self.url,
                             AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        self.process: subprocess.Popen | None = None
        self.log = fleet.tmp / f"serve-{self.port}.log"

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 (the server's, closed with it)
        self.process = subprocess.Popen(serve_argv(self.inventory, self.port), env=self.env, stdout=log,
                                        stderr=log, cwd=self.fleet.tmp)
        wait_listening(self.process, self.port, self.log.read_text)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def client(self, service: str, secret: str = SECRET):
        return boto3.session.Session(aws_access_key_id=KEY, aws_secret_access_key=secret,
                                     region_name="us-east-1").client(service, endpoint_url=self.url)

    def wait(self, name: str, statuses=("Completed", "Failed", "Stopped"), timeout: float = 120) -> dict:
        sm = self.client("sagemaker")
        deadline = time.monotonic() + timeout
        while True:
            described = sm.describe_processing_job(ProcessingJobName=name)
            if described["ProcessingJobStatus"] in statuses:
                return described
            assert time.monotonic() < deadline, described
            time.sleep(0.3)


@contextmanager
def served(fleet, inventory: Path | None = None):
    server = Served(fleet, inventory or fleet.cluster.inventory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        _wait_workers(fleet)


def _wait_workers(fleet, timeout: float = 60) -> None:
    """The jobs' own fleet processes outlive the server: let them end (the fixture then
    checks that no job left anything on a host)."""
    deadline = time.monotonic() + timeout
    jobs = fleet.home / "jobs"
    while time.monotonic() < deadline:
        live = [p for p in (jobs.glob("*/describe.json") if jobs.exists() else [])
                if json.loads(p.read_text()).get("ProcessingJobStatus") in ("InProgress", "Stopping")]
        if not live:
            return
        time.sleep(0.3)


def _request(job: dict) -> dict:
    """A make_job request as boto3 takes it."""
    return {**job, "RoleArn": "arn:aws:iam::000000000000:role/fleet-test"}


def test_sagemaker_calls_and_their_error_codes_through_boto3(fleet, cluster):
    with served(fleet) as server:
        sm = server.client("sagemaker")
        job = _request(make_job("echo line-one; echo line-two", count=2))
        name = job["ProcessingJobName"]
        too_many = json.loads(json.dumps(job))
        too_many["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 4
        with pytest.raises(sm.exceptions.ClientError) as refused:
            sm.create_processing_job(**too_many)
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert "the inventory has 3 host(s)" in refused.value.response["Error"]["Message"]
        bad = json.loads(json.dumps(job))
        bad["ProcessingInputs"] = [{"InputName": "x", "S3Input": {
            "S3Uri": "s3://b/k", "LocalPath": "/etc/x", "S3DataType": "S3Prefix", "S3InputMode": "File"}}]
        with pytest.raises(sm.exceptions.ClientError) as refused:
            sm.create_processing_job(**bad)
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert "LocalPath" in refused.value.response["Error"]["Message"]

        arn = sm.create_processing_job(**job)["ProcessingJobArn"]
        assert arn.endswith(f":processing-job/{name}")
        with pytest.raises(sm.exceptions.ClientError) as again:
            sm.create_processing_job(**job)
        assert again.value.response["Error"]["Code"] == "ResourceInUse"
        with pytest.raises(sm.exceptions.ClientError) as unknown:
            sm.describe_processing_job(ProcessingJobName="no-such-job")
        assert unknown.value.response["Error"]["Code"] == "ResourceNotFound"
        with pytest.raises(sm.exceptions.ClientError) as unknown:
            sm.stop_processing_job(ProcessingJobName="no-such-job")
        assert unknown.value.response["Error"]["Code"] == "ResourceNotFound"

        described = server.wait(name)
        assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
        assert described["ProcessingJobArn"] == arn
        assert isinstance(described["ProcessingEndTime"], datetime)
        with pytest.raises(sm.exceptions.ClientError) as ended:
            sm.stop_processing_job(ProcessingJobName=name)
        assert ended.value.response["Error"]["Code"] == "ValidationException"

        # The logs, as the SDK reads them: a stream per host, each line an event, paged.
        logs = server.client("logs")
        streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/",
                                            orderBy="LogStreamName")["logStreams"]
        names = [s["logStreamName"] for s in streams]
        assert [n.rsplit("-", 1)[0] for n in names] == [f"{name}/algo-1", f"{name}/algo-2"]
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=names[0], startFromHead=True, limit=1)
        assert [e["message"] for e in page["events"]] == ["line-one"]
        rest = logs.get_log_events(logGroupName=GROUP, logStreamName=names[0], startFromHead=True,
                                   nextToken=page["nextForwardToken"])
        assert [e["message"] for e in rest["events"]] == ["line-two"]
        end = logs.get_log_events(logGroupName=GROUP, logStreamName=names[0], startFromHead=True,
                                  nextToken=rest["nextForwardToken"])
        assert end["events"] == [] and end["nextForwardToken"] == rest["nextForwardToken"]
        with pytest.raises(logs.exceptions.ClientError) as missing:
            logs.get_log_events(logGroupName="/aws/other", logStreamName=names[0])
        assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"

        # List: filters, sort, paging.
        other = _request(make_job("true", count=1))
        sm.create_processing_job(**other)
        server.wait(other["ProcessingJobName"])
        listed = sm.list_processing_jobs(SortBy="Name", SortOrder="Ascending", MaxResults=1)
        first = listed["ProcessingJobSummaries"]
        second = sm.list_processing_jobs(SortBy="Name", SortOrder="Ascending", MaxResults=1,
                                         NextToken=listed["NextToken"])["ProcessingJobSummaries"]
        assert [s["ProcessingJobName"] for s in first + second] == sorted([name, other["ProcessingJobName"]])
        contains = sm.list_processing_jobs(NameContains=name[-6:])["ProcessingJobSummaries"]
        assert [s["ProcessingJobName"] for s in contains] == [name]
        assert sm.list_processing_jobs(StatusEquals="Failed")["ProcessingJobSummaries"] == []
        later = sm.list_processing_jobs(CreationTimeAfter=datetime.now(UTC) + timedelta(minutes=1))
        assert later["ProcessingJobSummaries"] == []
        # The same store as the CLI's.
        listing = fleet("list")
        assert name in listing.stdout and "Completed" in listing.stdout


def _raw(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_every_request_is_authenticated(fleet, cluster):
    with served(fleet) as server:
        target = {"X-Amz-Target": "SageMaker.ListProcessingJobs", "Content-Type": "application/x-amz-json-1.1"}
        status, answer = _raw(server.url + "/", b"{}", target)
        assert (status, answer["__type"]) == (403, "MissingAuthenticationToken")
        wrong = server.client("sagemaker", secret="not-the-secret")
        with pytest.raises(wrong.exceptions.ClientError) as refused:
            wrong.list_processing_jobs()
        assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
        stranger = boto3.session.Session(aws_access_key_id="AKIDSTRANGER", aws_secret_access_key="x",
                                         region_name="us-east-1").client("sagemaker", endpoint_url=server.url)
        with pytest.raises(stranger.exceptions.ClientError) as refused:
            stranger.list_processing_jobs()
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
        # A request signed 20 minutes ago, replayed now.
        sm = server.client("sagemaker")
        captured = {}

        def keep(request, **kwargs):
            captured.update(url=request.url, body=request.body, headers=dict(request.headers))
            return _Sent()
        sm.meta.events.register("before-send.sagemaker.ListProcessingJobs", keep)
        then = datetime.now(UTC) - timedelta(minutes=20)
        with mock.patch("botocore.auth.get_current_datetime", return_value=then.replace(tzinfo=None)):
            sm.list_processing_jobs()
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in captured["headers"].items()}
        status, answer = _raw(captured["url"], captured["body"] or b"", headers)
        assert (status, answer["__type"]) == (403, "InvalidSignatureException")
        assert answer["message"].startswith("Signature expired")


class _Sent:
    """What a before-send hook returns instead of sending: an empty success."""

    status_code = 200
    headers: dict = {}
    content = b'{"ProcessingJobSummaries": []}'
    raw = None

    @property
    def text(self) -> str:
        return self.content.decode()


def test_a_job_waits_for_free_hosts_then_runs_and_a_restarted_server_finishes_the_jobs(fleet, cluster):
    server = Served(fleet, cluster.inventory)
    server.start()
    try:
        sm = server.client("sagemaker")
        first = _request(make_job("sleep 6; echo first done", count=2))
        second = _request(make_job("echo second ran", count=2))
        sm.create_processing_job(**first)
        server.wait(first["ProcessingJobName"], statuses=("InProgress",))
        deadline = time.monotonic() + 30
        while not any(h.containers(first["ProcessingJobName"]) for h in cluster.hosts):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        sm.create_processing_job(**second)
        waiting = sm.describe_processing_job(ProcessingJobName=second["ProcessingJobName"])
        assert waiting["ProcessingJobStatus"] == "InProgress" and "ProcessingStartTime" not in waiting
        # SecondaryStatus is in the answer (boto3's DescribeProcessingJob shape has no such member,
        # so it drops it): the record says it.
        assert fleet.record(second["ProcessingJobName"])["SecondaryStatus"] == "Starting"
        # The server dies (SIGKILL) while the first runs and the second waits; started again,
        # it lets the first finish (its own fleet process never stopped) and starts the second.
        server.stop(signal.SIGKILL)
        server.start()
        assert server.wait(first["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"
        done = server.wait(second["ProcessingJobName"])
        assert done["ProcessingJobStatus"] == "Completed", done.get("FailureReason")
        assert fleet.log(second["ProcessingJobName"], "algo-1") == "second ran\n"
        assert done["ProcessingStartTime"] >= sm.describe_processing_job(
            ProcessingJobName=first["ProcessingJobName"])["ProcessingEndTime"] - timedelta(seconds=1)
    finally:
        server.stop()
        _wait_workers(fleet)


def test_stop_processing_job_stops_a_running_job_and_a_waiting_one(fleet, cluster):
    with served(fleet) as server:
        sm = server.client("sagemaker")
        running = _request(make_job("trap 'echo got SIGINT; exit 0' INT; sleep 300 & wait", count=3))
        waiting = _request(make_job("echo never", count=1))
        sm.create_processing_job(**running)
        deadline = time.monotonic() + 30
        while sum(bool(h.containers(running["ProcessingJobName"])) for h in cluster.hosts) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        sm.create_processing_job(**waiting)
        sm.stop_processing_job(ProcessingJobName=waiting["ProcessingJobName"])
        assert server.wait(waiting["ProcessingJobName"])["ProcessingJobStatus"] == "Stopped"
        sm.stop_processing_job(ProcessingJobName=running["ProcessingJobName"])
        assert server.wait(running["ProcessingJobName"])["ProcessingJobStatus"] == "Stopped"
        assert "got SIGINT" in fleet.log(running["ProcessingJobName"], "algo-1")


def test_the_aws_cli_creates_a_job_from_its_cli_input_json(fleet, cluster):
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        pytest.skip("the AWS CLI is not installed (test extras)")
    with served(fleet) as server:
        job = _request(make_job("echo from the cli", count=1, name=f"cli-{uuid.uuid4().hex[:8]}"))
        path = fleet.tmp / "cli-job.json"
        path.write_text(json.dumps(job))
        result = subprocess.run([aws, "sagemaker", "create-processing-job", "--cli-input-json", f"file://{path}"],
                                capture_output=True, text=True, env=server.env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ProcessingJobArn"].endswith(job["ProcessingJobName"])
        assert server.wait(job["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"
        described = subprocess.run([aws, "sagemaker", "describe-processing-job", "--processing-job-name",
                                    job["ProcessingJobName"]], capture_output=True, text=True, env=server.env,
                                   timeout=60)
        assert json.loads(described.stdout)["ProcessingJobStatus"] == "Completed"
    assert os.path.exists(fleet.home / "jobs" / job["ProcessingJobName"] / "describe.json")
