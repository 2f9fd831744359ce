"""GET /metrics of a real `fleet serve` (a subprocess on loopback, a temp FLEET_HOME with jobs
in every status, a `transport: local` inventory: no container runs), read with Prometheus's
own parser (prometheus_client): the jobs by status, the queue, the hosts, the API's requests
and their latency, the ended jobs' durations; no job or profile name in it; bounded whatever
operation names clients invent; who may read it (issue 21, point 5)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve_attacks import BUSY, KEY, WAITING, Served, _job

from fleet.contract.describe import new_record
from fleet.contract.job import parse_job
from fleet.inventory import parse_inventory
from fleet.runtime.store import JobStore
from fleet.serve.metrics import MAX_ERRORS, OPERATION, Metrics

from support.serving import free_port, served_fixture

TOKEN = "s3cret-metrics-token-0123456789"
# name -> (status, seconds from start to end); seeded before serve starts
ENDED = {"zq-done-1": ("Completed", 3.0), "zq-done-2": ("Completed", 40.0), "zq-fail": ("Failed", 10.0),
         "zq-stop": ("Stopped", 100.0)}


def _ended(store: JobStore, name: str, status: str, seconds: float) -> None:
    """A job record as `fleet run` leaves it once the job ended."""
    record = new_record(parse_job(_job(name), "test"), f"arn:aws:sagemaker:us-east-1:0:processing-job/{name}", {})
    record.update(ProcessingJobStatus=status, ProcessingStartTime="2026-11-29T10:00:00+00:00",
                  ProcessingEndTime=f"2026-11-29T10:00:{seconds:09.6f}+00:00" if seconds < 60 else
                  f"2026-11-29T10:{int(seconds // 60):02d}:{seconds % 60:09.6f}+00:00")
    store.create(record)


class MetricsServed(Served):
    """Served (test_serve_attacks): BUSY runs on the only host, WAITING waits for it; and the
    ENDED jobs."""

    def _seed(self, inventory) -> None:
        super()._seed(inventory)
        for name, (status, seconds) in ENDED.items():
            _ended(self.store, name, status, seconds)

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, answer.getheader("Content-Type", ""), answer.read().decode()
        finally:
            conn.close()

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """The samples: name -> labels (sorted pairs) -> value."""
        status, content_type, text = self.get()
        assert status == 200, text
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples


served = served_fixture(MetricsServed)


def _by(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def test_metrics_count_the_jobs_by_status_the_queue_and_the_hosts(served):
    samples = served.scrape()

    assert _by(samples, "fleet_jobs", "status") == {"InProgress": 2, "Stopping": 0, "Completed": 2, "Failed": 1,
                                                    "Stopped": 1}
    assert samples["fleet_queue_length"][()] == 1
    assert samples["fleet_queue_oldest_wait_seconds"][()] > 0
    assert _by(samples, "fleet_hosts", "state") == {"busy": 1, "free": 0}
    counts = _by(samples, "fleet_job_duration_seconds_count", "status")
    sums = _by(samples, "fleet_job_duration_seconds_sum", "status")
    assert counts == {"Completed": 2, "Failed": 1, "Stopped": 1}
    assert sums == pytest.approx({"Completed": 43.0, "Failed": 10.0, "Stopped": 100.0})
    buckets = {(labels["status"], labels["le"]): value for labels, value in
               ((dict(k), v) for k, v in samples["fleet_job_duration_seconds_bucket"].items())}
    assert buckets[("Completed", "5.0")] == 1 and buckets[("Completed", "60.0")] == 2
    assert buckets[("Stopped", "60.0")] == 0 and buckets[("Stopped", "+Inf")] == 1

    # The waiting job is stopped through the API; a `fleet run` job ends in the same store;
    # a stop is asked of the running one: the next scrape sees all three.
    assert served.call("SageMaker.StopProcessingJob", {"ProcessingJobName": WAITING}).status == 200
    _ended(served.store, "zq-run-later", "Completed", 1.0)
    (served.store.job_dir(BUSY) / "stop-asked").touch()
    samples = served.scrape()
    assert _by(samples, "fleet_jobs", "status") == {"InProgress": 0, "Stopping": 1, "Completed": 3, "Failed": 1,
                                                    "Stopped": 2}
    assert samples["fleet_queue_length"][()] == 0 and samples["fleet_queue_oldest_wait_seconds"][()] == 0
    # a job stopped before it started has no duration
    assert _by(samples, "fleet_job_duration_seconds_count", "status") == {"Completed": 3, "Failed": 1,
                                                                          "Stopped": 1}


def test_requests_are_counted_by_operation_code_and_error_with_their_latency(served):
    assert served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": BUSY}).status == 200
    assert served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": BUSY}).status == 200
    assert served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": "zq-none"}).code == \
        "ResourceNotFound"
    assert served.call("SageMaker.ListProcessingJobs", {}).status == 200
    assert served.call("SageMaker.CreateTrainingJob", {}).code == "UnknownOperationException"
    unsigned = served.send([("Host", f"127.0.0.1:{served.port}"), ("X-Amz-Target", "SageMaker.ListProcessingJobs"),
                            ("Content-Type", "application/x-amz-json-1.1")], b"{}")
    assert unsigned.status == 403

    samples = served.scrape()

    requests = {(labels["operation"], labels["code"], labels["error"]): value for labels, value in
                ((dict(k), v) for k, v in samples["fleet_api_requests_total"].items())}
    assert requests == {("SageMaker.DescribeProcessingJob", "200", ""): 2,
                        ("SageMaker.DescribeProcessingJob", "400", "ResourceNotFound"): 1,
                        ("SageMaker.ListProcessingJobs", "200", ""): 1,
                        ("SageMaker.ListProcessingJobs", "403", "MissingAuthenticationToken"): 1,
                        ("unknown", "400", "UnknownOperationException"): 1}
    latency = _by(samples, "fleet_api_request_duration_seconds_count", "operation")
    assert latency == {"SageMaker.DescribeProcessingJob": 3, "SageMaker.ListProcessingJobs": 2, "unknown": 1}
    inf = {dict(k)["operation"]: v for k, v in samples["fleet_api_request_duration_seconds_bucket"].items()
           if dict(k)["le"] == "+Inf"}
    assert inf == latency
    assert all(v > 0 for v in _by(samples, "fleet_api_request_duration_seconds_sum", "operation").values())
    # the scrapes themselves are not API requests
    assert "fleet_api_requests_total" in served.get()[2]
    assert sum(served.scrape()["fleet_api_requests_total"].values()) == 6


def test_metrics_name_no_job_and_no_profile(served):
    served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": BUSY})
    served.call("SageMaker.DescribeProcessingJob", {"ProcessingJobName": "zq-secret-project"})
    status, _, text = served.get()
    assert status == 200
    for secret in ("zq-", "alice", KEY, "h1", "localhost"):
        assert secret not in text


def test_invented_operation_names_add_no_series(served):
    baseline = served.scrape()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)  # one keep-alive connection
    try:
        for n in range(3000):
            conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": f"SageMaker.Invented{n:07d}",
                                                           "Content-Type": "application/x-amz-json-1.1"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 403
    finally:
        conn.close()

    samples = served.scrape()

    requests = {(dict(k)["operation"], dict(k)["code"]): v for k, v in samples["fleet_api_requests_total"].items()}
    assert requests == {("unknown", "403"): 3000}
    assert {dict(k)["operation"] for k in samples["fleet_api_request_duration_seconds_count"]} == {"unknown"}
    series = sum(len(values) for values in samples.values())
    before = sum(len(values) for values in baseline.values())
    assert series == before + 1 + 14 + 2  # one counter, one histogram's 14 buckets, its sum and count


def test_a_page_rebound_to_loopback_gets_no_metrics(served):
    """DNS rebinding: a web page of evil.example whose name now resolves to 127.0.0.1 reaches
    serve's loopback port; its requests say `Host: evil.example:PORT`. Open /metrics answers
    only requests naming loopback."""
    for host in (f"evil.example:{served.port}", "evil.example", f"127.0.0.1.evil.example:{served.port}"):
        status, _, text = served.get(headers={"Host": host})
        assert status == 403 and "fleet_jobs" not in text, (host, status, text)
    for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}", "[::1]", "127.0.0.1"):
        assert served.get(headers={"Host": host})[0] == 200, host


def test_with_a_token_file_metrics_need_its_bearer_token(tmp_path):
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = MetricsServed(tmp_path, extra=("--metrics-token-file", str(token_file)))
    try:
        status, _, text = server.get()
        assert status == 401 and "Bearer" in text
        assert server.get(headers={"Authorization": "Bearer not-the-token-at-all"})[0] == 401
        assert server.get(headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        status, _, text = server.get(headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and 'fleet_jobs{status="Completed"} 2' in text
    finally:
        server.close()


@pytest.mark.parametrize(("content", "mode", "said"), [
    (TOKEN, 0o644, "others can read it (mode 644); chmod 600"),
    ("short", 0o600, "16 or more printable characters"),
])
def test_a_bad_token_file_is_refused_naming_it(tmp_path, content, mode, said):
    token_file = tmp_path / "metrics-token"
    token_file.write_text(content)
    token_file.chmod(mode)
    (tmp_path / "hosts.yaml").write_text('{"hosts": [{"address": "localhost", "transport": "local"}]}')
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(FLEET_HOME=str(tmp_path / "home"), AWS_ACCESS_KEY_ID="AKIDMETRICS", AWS_SECRET_ACCESS_KEY="x",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_REGION="us-east-1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-m", "fleet", "serve", "--inventory", str(tmp_path / "hosts.yaml"),
                           "--listen", "127.0.0.1:1", "--metrics-token-file", str(token_file)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"--metrics-token-file {token_file}" in done.stderr and said in done.stderr
    assert "Traceback" not in done.stderr


def test_without_a_token_file_metrics_are_off_on_a_non_loopback_listen(tmp_path, monkeypatch):
    import test_serve_attacks
    port = free_port()
    monkeypatch.setattr(test_serve_attacks, "free_port", lambda: port)
    server = MetricsServed(tmp_path, extra=("--listen", f"0.0.0.0:{port}"))  # the last --listen wins
    try:
        status, _, text = server.get()
        assert status == 403 and "--metrics-token-file" in text
        assert "GET /metrics is off" in server.log.read_text()
        server.alive()  # the API still answers
    finally:
        server.close()


def test_a_million_invented_operations_and_error_codes_stay_within_fixed_series(tmp_path):
    inventory = parse_inventory({"hosts": [{"address": "localhost", "transport": "local"}]}, "hosts.yaml")
    metrics = Metrics(JobStore(tmp_path / "home"), inventory, ["SageMaker.DescribeProcessingJob"], token=None,
                      open_without_token=True)
    metrics.requests.count("SageMaker.DescribeProcessingJob", 200, "", 0.002)
    before = metrics.exposition()

    for n in range(1_000_000):
        metrics.requests.count(f"SageMaker.Invented{n}", 400 + n % 300, f"Error{n}" if n % 2 else "", 0.001)

    after = metrics.exposition()
    assert len(after.splitlines()) <= len(before.splitlines()) + 16 + (32 + 2) * 300
    assert len(metrics.requests.requests) <= 1 + (MAX_ERRORS + 2) * 301
    assert {operation for operation, _, _ in metrics.requests.requests} == {"SageMaker.DescribeProcessingJob",
                                                                           "unknown"}
    assert set(metrics.requests.latency.counts) == {"SageMaker.DescribeProcessingJob", "unknown"}
    assert "Invented" not in after


async def test_a_handler_not_dispatching_on_x_amz_target_names_its_operation(tmp_path):
    """STS's Query protocol names its Action in the body: its handler tells the middleware."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    inventory = parse_inventory({"hosts": [{"address": "localhost", "transport": "local"}]}, "hosts.yaml")
    metrics = Metrics(JobStore(tmp_path / "home"), inventory, ["SageMaker.ListProcessingJobs"], token=None,
                      open_without_token=True)

    async def handle(request: web.Request) -> web.Response:
        request[OPERATION] = (await request.post())["Action"]
        return web.Response(text="ok")

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_post("/", handle)
    app.router.add_get("/metrics", metrics.handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for action in ("STS.GetCallerIdentity", "STS.AssumeRole", "STS.GetCallerIdentity"):
            assert (await client.post("/", data={"Action": action})).status == 200
        text = await (await client.get("/metrics")).text()
    assert 'fleet_api_requests_total{operation="STS.GetCallerIdentity",code="200",error=""} 2' in text
    assert 'fleet_api_requests_total{operation="unknown",code="200",error=""} 1' in text
    assert "AssumeRole" not in text
