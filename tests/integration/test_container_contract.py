"""What the container sees on 3 real hosts: the SageMaker Processing container contract."""

from __future__ import annotations

import json
import re

import pytest

from conftest import IMAGE, make_job

pytestmark = pytest.mark.engines  # scripts/test runs this module on every engine of the bed


def _lines(out: str, algo: str) -> list[str]:
    prefix = f"[{algo}] "
    return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]


def test_each_container_reads_its_own_resourceconfig(fleet):
    run = fleet.run_job(make_job("cat /opt/ml/config/resourceconfig.json"))
    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3):
        seen = json.loads("\n".join(_lines(run.stdout, f"algo-{k}")))
        assert seen == {"current_host": f"algo-{k}", "hosts": ["algo-1", "algo-2", "algo-3"]}


def test_processingjobconfig_is_the_request_with_defaults_filled_in(fleet, tmp_path):
    # file:// data (fleet's extension) keeps this test about the config, not about S3.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x.csv").write_text("x\n")
    job = make_job("cat /opt/ml/config/processingjobconfig.json", count=1,
                   Environment={"A": "1"},
                   ProcessingInputs=[{"InputName": "raw", "S3Input": {
                       "S3Uri": f"file://{tmp_path}/raw", "LocalPath": "/opt/ml/processing/raw",
                       "S3DataType": "S3Prefix"}}],
                   ProcessingOutputConfig={"Outputs": [{"OutputName": "out", "S3Output": {
                       "S3Uri": f"file://{tmp_path}/out", "LocalPath": "/opt/ml/processing/out",
                       "S3UploadMode": "EndOfJob"}}]})
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    seen = json.loads("\n".join(_lines(run.stdout, "algo-1")))
    assert re.fullmatch(r"arn:aws:sagemaker:[a-z0-9-]+:\d{12}:processing-job/" + job["ProcessingJobName"],
                        seen["ProcessingJobArn"])
    assert seen["ProcessingJobName"] == job["ProcessingJobName"]
    assert seen["AppSpecification"]["ImageUri"] == IMAGE
    assert seen["AppSpecification"]["ContainerArguments"] is None
    assert seen["Environment"] == {"A": "1"}
    s3_input = seen["ProcessingInputs"][0]["S3Input"]
    assert s3_input["S3Uri"] == f"file://{tmp_path}/raw"
    assert s3_input["S3InputMode"] == "File"
    assert s3_input["S3DataDistributionType"] == "FullyReplicated"
    assert s3_input["S3CompressionType"] == "None"
    assert seen["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3UploadMode"] == "EndOfJob"
    assert seen["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert seen["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}


def test_the_container_hostname_is_its_algo_name(fleet):
    run = fleet.run_job(make_job("hostname"))
    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3):
        assert _lines(run.stdout, f"algo-{k}") == [f"algo-{k}"]


def test_every_algo_name_resolves_in_every_container_to_its_host(fleet, cluster):
    script = "for h in algo-1 algo-2 algo-3; do echo $h $(ping -c 1 -W 2 $h | head -1); done"
    run = fleet.run_job(make_job(script))
    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3):
        lines = _lines(run.stdout, f"algo-{k}")
        for i, host in enumerate(cluster.hosts, start=1):
            assert any(line.startswith(f"algo-{i} PING algo-{i} ({host.address})") for line in lines), lines


def test_a_container_on_algo_2_connects_to_a_server_on_algo_1_by_name(fleet):
    # busybox `nc -l` with stdin at EOF (a container's /dev/null) may drop what it received:
    # the server hands the connection to a program (-e) that copies it to the log.
    script = (
        'case $(hostname) in '
        'algo-1) printf "#!/bin/sh\\ncat >&2" > /r; chmod +x /r; nc -l -p 9123 -e /r ;; '
        'algo-2) for i in $(seq 50); do echo "hello from algo-2" | nc -w 2 algo-1 9123 && exit 0; sleep 0.2; done; exit 1 ;; '
        '*) true ;; esac')
    run = fleet.run_job(make_job(script))
    assert run.returncode == 0, run.stderr + run.stdout
    assert "hello from algo-2" in _lines(run.stdout, "algo-1")


def test_network_isolation_gives_the_container_no_network(fleet, cluster):
    job = make_job(f"cat /proc/net/dev | cut -d: -f1 | tail -n +3; nc -w 2 {cluster.hosts[1].address} 22 </dev/null 2>/dev/null "
                   "&& echo reached || echo unreachable", count=1,
                   NetworkConfig={"EnableNetworkIsolation": True})
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in _lines(run.stdout, "algo-1")]
    assert lines == ["lo", "unreachable"]


def test_no_entrypoint_and_no_arguments_runs_the_image_entrypoint(fleet):
    run = fleet.run_job(make_job(count=1))
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout, "algo-1") == ["default entrypoint"]


def test_arguments_alone_go_to_the_image_entrypoint(fleet):
    job = make_job(count=1)
    job["AppSpecification"]["ContainerArguments"] = ["data-format", "csv"]
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout, "algo-1") == ["default entrypoint data-format csv"]


def test_an_entrypoint_alone_replaces_the_image_entrypoint(fleet):
    job = make_job(count=1)
    job["AppSpecification"]["ContainerEntrypoint"] = ["echo", "-n", "only", "the", "entrypoint"]
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout, "algo-1") == ["only the entrypoint"]


def test_entrypoint_and_arguments_run_entrypoint_words_then_arguments(fleet):
    job = make_job(count=1)
    job["AppSpecification"]["ContainerEntrypoint"] = ["sh", "-c", 'echo "$0|$1|$2"', "zero"]
    job["AppSpecification"]["ContainerArguments"] = ["data-format", "csv"]
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout, "algo-1") == ["zero|data-format|csv"]


def test_every_local_path_and_opt_ml_output_exist(fleet, tmp_path):
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "f").write_text(n)
    job = make_job("for d in /opt/ml/processing/in/a /opt/ml/processing/in/b /opt/ml/processing/out "
                   "/opt/ml/output; do [ -d $d ] && touch $d/w && echo ok $d; done",
                   ProcessingInputs=[
                       {"InputName": n, "S3Input": {"S3Uri": f"file://{tmp_path}/{n}", "LocalPath": f"/opt/ml/processing/in/{n}",
                                                    "S3DataType": "S3Prefix"}} for n in ("a", "b")],
                   ProcessingOutputConfig={"Outputs": [{"OutputName": "o", "S3Output": {
                       "S3Uri": f"file://{tmp_path}/o", "LocalPath": "/opt/ml/processing/out",
                       "S3UploadMode": "EndOfJob"}}]})
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3):
        assert _lines(run.stdout, f"algo-{k}") == [
            "ok /opt/ml/processing/in/a", "ok /opt/ml/processing/in/b", "ok /opt/ml/processing/out",
            "ok /opt/ml/output"]


HOSTILE = ["$(touch /tmp/fleet-pwned-env)", "`touch /tmp/fleet-pwned-tick`", "it's \"quoted\"",
           "a; touch /tmp/fleet-pwned-semi", "line one\nline two", "--entrypoint"]


# The same as Environment values: the one with a newline reaches the container through the
# environment of `docker create` (docker's env file cannot carry it), the others in that file.
HOSTILE_ENV = HOSTILE


def test_environment_values_and_arguments_reach_the_container_verbatim(fleet, tmp_path):
    job = make_job(count=2, Environment={f"V{i}": v for i, v in enumerate(HOSTILE_ENV)})
    job["AppSpecification"]["ContainerEntrypoint"] = [
        "sh", "-c", 'for i in 0 1 2 3 4 5; do eval "printf \'%s|\' \\"\\$V$i\\""; done; echo; printf "<%s>" "$@"; echo', "sh"]
    job["AppSpecification"]["ContainerArguments"] = HOSTILE
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    for k in (1, 2):
        text = "\n".join(_lines(run.stdout, f"algo-{k}"))
        assert text == "|".join(HOSTILE_ENV) + "|\n" + "".join(f"<{v}>" for v in HOSTILE)
    import glob
    assert glob.glob("/tmp/fleet-pwned-*") == []


def test_docker_args_from_the_inventory_reach_docker_run(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["defaults"]["docker_args"] = ["--shm-size", "77m"]
    inventory = cluster.write_inventory(tmp_path / "shm.yaml", doc)
    run = fleet.run_job(make_job("df -m /dev/shm | tail -1", count=1), inventory=inventory)
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout, "algo-1")[0].split()[1] == "77"


def test_containers_are_named_and_labelled_while_they_run(fleet, cluster):
    job = make_job("sleep 30")
    process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                          "--stop-grace", "1")
    try:
        name = job["ProcessingJobName"]
        import time
        for _ in range(200):
            seen = {h.name: h.docker("ps", "--filter", f"label=fleet.job={name}",
                                     "--format", '{{.Names}} {{.Label "fleet.host"}}').strip()
                    for h in cluster.hosts}
            if all(seen.values()):
                break
            time.sleep(0.1)
        assert seen == {"h1": f"{name}-algo-1 algo-1", "h2": f"{name}-algo-2 algo-2",
                        "h3": f"{name}-algo-3 algo-3"}
    finally:
        import signal
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130


def test_a_host_with_gpus_but_no_gpu_runtime_fails_in_preflight_with_a_readable_error(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["hosts"][1]["gpus"] = "all"
    inventory = cluster.write_inventory(tmp_path / "gpu.yaml", doc)
    job = make_job("echo must not run", count=2)
    run = fleet.run_job(job, inventory=inventory)
    assert run.returncode == 75
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason == ("ClientError: algo-2 (h2, 10.251.7.12): the inventory gives this host GPUs but Docker "
                      "there has no NVIDIA runtime and no CDI GPU devices; install the NVIDIA Container "
                      "Toolkit on that host, or remove `gpus` from its inventory entry")
    assert "must not run" not in run.stdout  # preflight: nothing started anywhere, algo-1 included
    assert "Traceback" not in run.stderr


def test_a_missing_image_is_pulled_on_the_hosts_that_lack_it(fleet, cluster, registry):
    image = f"{registry}/fleet-test:pull-{fleet.tmp.name[-12:].lower().replace('_', '-')}"
    first = cluster.hosts[0]
    first.docker("tag", IMAGE, image)
    first.docker("push", image)
    try:
        assert cluster.hosts[1].docker("image", "ls", "-q", image).strip() == ""
        job = make_job("echo pulled and ran")
        job["AppSpecification"]["ImageUri"] = image
        run = fleet.run_job(job)
        assert run.returncode == 0, run.stderr
        for k, host in enumerate(cluster.hosts, start=1):
            assert _lines(run.stdout, f"algo-{k}") == ["pulled and ran"]
            assert host.docker("image", "ls", "-q", image).strip() != ""
    finally:
        for host in cluster.hosts:
            host.docker("image", "rm", "--force", image, check=False)
