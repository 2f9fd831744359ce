"""GET /metrics of `fleet serve` while it runs real jobs on the test bed's 3 hosts (boto3 as
the client, Prometheus's own parser reading the answer): 2 jobs Completed, 1 Failed, 1
Stopped while it ran, 1 running on one host and 1 waiting for all three (issue 21, point 5)."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve_api import _request, served

from conftest import make_job

pytestmark = pytest.mark.integration

SLEEPER = "trap 'exit 0' INT TERM; sleep 300 & wait"


def _scrape(url: str) -> dict[str, dict[frozenset, float]]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = answer.read().decode()
    samples: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def _by(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def _running_on(cluster, name: str, hosts: int) -> None:
    deadline = time.monotonic() + 60
    while sum(bool(h.containers(name)) for h in cluster.hosts) < hosts:
        assert time.monotonic() < deadline, f"{name} did not start on {hosts} host(s)"
        time.sleep(0.2)


def test_metrics_count_the_jobs_serve_ran_its_queue_hosts_and_requests(fleet, cluster):
    with served(fleet) as server:
        sm = server.client("sagemaker")
        done = [_request(make_job(f"echo job {n}", count=3)) for n in (1, 2)]
        failed = _request(make_job("echo oops; exit 3", count=3))
        stopped = _request(make_job(SLEEPER, count=3))
        running = _request(make_job(SLEEPER, count=1))
        queued = _request(make_job("echo never", count=3))
        for job in (*done, failed):
            sm.create_processing_job(**job)
        for job in done:
            assert server.wait(job["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"
        assert server.wait(failed["ProcessingJobName"])["ProcessingJobStatus"] == "Failed"
        sm.create_processing_job(**stopped)
        _running_on(cluster, stopped["ProcessingJobName"], 3)
        sm.stop_processing_job(ProcessingJobName=stopped["ProcessingJobName"])
        assert server.wait(stopped["ProcessingJobName"])["ProcessingJobStatus"] == "Stopped"
        sm.create_processing_job(**running)
        _running_on(cluster, running["ProcessingJobName"], 1)
        sm.create_processing_job(**queued)  # 3 hosts asked for, 2 free: it waits
        time.sleep(1.5)  # a scheduling round or two: it is still waiting
        assert fleet.record(queued["ProcessingJobName"])["SecondaryStatus"] == "Starting"

        samples = _scrape(server.url)

        assert _by(samples, "fleet_jobs", "status") == {"InProgress": 2, "Stopping": 0, "Completed": 2,
                                                        "Failed": 1, "Stopped": 1}
        assert samples["fleet_queue_length"][frozenset()] == 1
        assert 1.0 <= samples["fleet_queue_oldest_wait_seconds"][frozenset()] < 60
        assert _by(samples, "fleet_hosts", "state") == {"busy": 1, "free": 2}
        # the durations are the records' own, start to end
        expected: dict[str, list[float]] = {}
        for job in (*done, failed, stopped):
            record = fleet.record(job["ProcessingJobName"])
            expected.setdefault(record["ProcessingJobStatus"], []).append(
                datetime.fromisoformat(record["ProcessingEndTime"]).timestamp()
                - datetime.fromisoformat(record["ProcessingStartTime"]).timestamp())
        assert _by(samples, "fleet_job_duration_seconds_count", "status") == {
            status: len(seconds) for status, seconds in expected.items()}
        assert _by(samples, "fleet_job_duration_seconds_sum", "status") == pytest.approx(
            {status: sum(seconds) for status, seconds in expected.items()}, abs=1e-3)
        requests = {(dict(k)["operation"], dict(k)["code"]): v for k, v in samples["fleet_api_requests_total"].items()}
        assert requests[("SageMaker.CreateProcessingJob", "200")] == 6
        assert requests[("SageMaker.StopProcessingJob", "200")] == 1
        describes = requests[("SageMaker.DescribeProcessingJob", "200")]
        assert describes >= 5
        assert _by(samples, "fleet_api_request_duration_seconds_count", "operation")[
            "SageMaker.DescribeProcessingJob"] == describes
        text = urllib.request.urlopen(f"{server.url}/metrics", timeout=30).read().decode()
        for secret in (*(job["ProcessingJobName"] for job in (*done, failed, stopped, running, queued)),
                       *(host.name for host in cluster.hosts), *(host.address for host in cluster.hosts)):
            assert secret not in text  # no job's name, no host's

        sm.stop_processing_job(ProcessingJobName=queued["ProcessingJobName"])
        sm.stop_processing_job(ProcessingJobName=running["ProcessingJobName"])
        assert server.wait(running["ProcessingJobName"])["ProcessingJobStatus"] == "Stopped"
        samples = _scrape(server.url)
        assert _by(samples, "fleet_jobs", "status") == {"InProgress": 0, "Stopping": 0, "Completed": 2,
                                                        "Failed": 1, "Stopped": 3}
        assert samples["fleet_queue_length"][frozenset()] == 0
        assert _by(samples, "fleet_hosts", "state") == {"busy": 0, "free": 3}
