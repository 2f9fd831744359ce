"""Bad input and broken hosts: one clear message naming the field or the host, no
traceback, exit 2 for input and 75 for hosts (the machinery: worth a retry; 1 when the job
cannot run as asked), and nothing started on any host."""

from __future__ import annotations

import os
import signal
import subprocess

from conftest import make_job


def _refused(run, code: int, *needles: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def _nothing_started(fleet, cluster, name: str) -> None:
    assert cluster.leftovers(name) == []
    for host in cluster.hosts:
        assert host.containers(name) == []


def test_malformed_json_is_refused_naming_the_file(fleet, cluster):
    path = fleet.tmp / "broken.json"
    path.write_text('{"ProcessingJobName": "x",\n "AppSpecification": }')
    _refused(fleet("run", "--inventory", str(cluster.inventory), str(path)), 2, str(path), "line 2")
    assert not (fleet.home / "jobs").exists() or list((fleet.home / "jobs").iterdir()) == []


def test_malformed_inventory_yaml_is_refused_naming_the_file(fleet, tmp_path):
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  - address: [unclosed\n")
    run = fleet("run", "--inventory", str(inventory), str(fleet.write_job(make_job("true"))))
    _refused(run, 2, str(inventory), "malformed YAML")


def test_a_value_over_its_limit_is_refused_naming_the_field(fleet):
    job = make_job("true")
    job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 101
    _refused(fleet.run_job(job), 2, "ProcessingResources.ClusterConfig.InstanceCount")
    _nothing_started(fleet, fleet.cluster, job["ProcessingJobName"])


def test_more_instances_than_hosts_is_refused_before_anything_starts(fleet, cluster):
    job = make_job("true", count=4)
    _refused(fleet.run_job(job), 2, "InstanceCount is 4 but the inventory has 3 host(s)")
    _nothing_started(fleet, cluster, job["ProcessingJobName"])


def test_an_unsupported_feature_is_refused(fleet):
    job = make_job("true", ProcessingInputs=[{"InputName": "q", "DatasetDefinition": {
        "AthenaDatasetDefinition": {}}}])
    _refused(fleet.run_job(job), 2, "DatasetDefinition", "not supported")


def test_a_missing_identity_file_is_refused_naming_it(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["hosts"][2]["identity_file"] = str(tmp_path / "no-such-key")
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _refused(fleet.run_job(make_job("true"), inventory=inventory), 2, str(tmp_path / "no-such-key"), "h3")


def _host_failure(fleet, cluster, inventory, *needles, args=(), code=75):
    job = make_job("sleep 30")
    run = fleet.run_job(job, *args, inventory=inventory)
    _refused(run, code, *needles)
    _nothing_started(fleet, cluster, job["ProcessingJobName"])
    record = fleet.record(job["ProcessingJobName"])
    assert record["ProcessingJobStatus"] == "Failed"
    return record


def test_a_refused_key_fails_naming_the_host(fleet, cluster, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    doc = cluster.inventory_doc()
    doc["hosts"][1]["identity_file"] = str(tmp_path / "stranger")
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _host_failure(fleet, cluster, inventory, "algo-2 (h2, 10.251.7.12): SSH login refused for user root")


def test_a_wrong_host_key_fails_naming_the_host(fleet, cluster, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()[:2]
    lines = [f"{cluster.hosts[2].address} {' '.join(impostor)}" if line.startswith(cluster.hosts[2].address + " ")
             else line for line in cluster.known_hosts.read_text().splitlines()]
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    doc = cluster.inventory_doc()
    doc["defaults"]["known_hosts"] = str(tmp_path / "known_hosts")
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _host_failure(fleet, cluster, inventory, "algo-3 (h3, 10.251.7.13): SSH host key not verified")


def test_an_unknown_host_key_is_refused_when_strict(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["defaults"]["known_hosts"] = str(tmp_path / "empty_known_hosts")
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _host_failure(fleet, cluster, inventory, "algo-1 (h1, 10.251.7.11): SSH host key not verified",
                  "algo-3 (h3, 10.251.7.13)")


def test_accept_new_records_unknown_keys_then_holds_them(fleet, cluster, tmp_path):
    known = tmp_path / "known_hosts"
    doc = cluster.inventory_doc()
    doc["defaults"]["known_hosts"] = str(known)
    doc["defaults"]["host_key_checking"] = "accept-new"
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    run = fleet.run_job(make_job("true"), inventory=inventory)
    assert run.returncode == 0, run.stderr
    recorded = {line.split()[0]: line.split()[2] for line in known.read_text().splitlines()}
    real = {line.split()[0]: line.split()[2] for line in cluster.known_hosts.read_text().splitlines()}
    assert recorded == real
    # Now a changed key is refused, as OpenSSH's accept-new does.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    known.write_text("".join(f"{addr} {' '.join(other)}\n" for addr in recorded))
    _host_failure(fleet, cluster, inventory, "SSH host key not verified")


def test_host_key_checking_off_needs_no_known_hosts(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["defaults"]["known_hosts"] = str(tmp_path / "none")
    doc["defaults"]["host_key_checking"] = "off"
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    run = fleet.run_job(make_job("true", count=1), inventory=inventory)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "none").exists()


def test_an_unreachable_host_fails_naming_it(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["hosts"][1]["address"] = "10.251.7.99"  # in the test bed's subnet; nobody is there
    doc["hosts"][1]["connect_timeout"] = 2
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _host_failure(fleet, cluster, inventory, "algo-2 (h2, 10.251.7.99):")


def test_an_unknown_host_name_fails_naming_it(fleet, cluster, tmp_path):
    # Run the controller inside test host h1's namespace: it has no route to any DNS server,
    # so the lookup fails at once and no query leaves the machine.
    doc = cluster.inventory_doc()
    doc["hosts"][2]["address"] = "no-such-host.fleet-test.invalid"
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    job = make_job("sleep 30")
    command = ["ip", "netns", "exec", "fleet-h1", *fleet.command(
        "run", "--inventory", str(inventory), str(fleet.write_job(job)))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=fleet.env(), cwd=fleet.tmp)
    assert result.returncode == 75, result.stderr
    assert "algo-3 (h3, no-such-host.fleet-test.invalid): cannot resolve no-such-host.fleet-test.invalid" \
        in result.stderr
    assert "Traceback" not in result.stderr
    _nothing_started(fleet, cluster, job["ProcessingJobName"])


def test_docker_missing_on_a_host_fails_naming_it(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["hosts"][2]["docker"] = "/opt/no-such-docker/docker"
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    _host_failure(fleet, cluster, inventory, "algo-3 (h3, 10.251.7.13): docker command not found")


def test_a_hung_docker_daemon_fails_in_bounded_time_and_nothing_starts(fleet, cluster, tmp_path):
    pid = int((cluster.hosts[1].dir / "dockerd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        job = make_job("sleep 30")
        run = fleet.run_job(job, "--docker-timeout", "2", timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    _refused(run, 75, "algo-2 (h2, 10.251.7.12): docker did not answer within 2 s")
    _nothing_started(fleet, cluster, job["ProcessingJobName"])


def test_an_image_that_cannot_be_pulled_is_a_client_error_naming_host_and_image(fleet, cluster):
    job = make_job("true")
    job["AppSpecification"]["ImageUri"] = "registry.invalid/fleet/no-such-image:1"
    run = fleet.run_job(job)
    _refused(run, 75, "cannot pull image registry.invalid/fleet/no-such-image:1")  # the host's pull: 75
    reason = fleet.record(job["ProcessingJobName"])["FailureReason"]
    assert reason.startswith("ClientError: algo-1 (h1, 10.251.7.11): cannot pull image "
                             "registry.invalid/fleet/no-such-image:1")
    _nothing_started(fleet, cluster, job["ProcessingJobName"])


def test_dry_run_prints_the_plan_and_touches_nothing(fleet, cluster):
    job = make_job("echo hi")
    run = fleet.run_job(job, "--dry-run")
    assert run.returncode == 0, run.stderr
    name = job["ProcessingJobName"]
    for k, host in enumerate(cluster.hosts, start=1):
        assert f"algo-{k}: h{k} (ssh root@{host.address}:22)" in run.stdout
        assert f"docker create --name {name}-algo-{k}" in run.stdout
        assert f"docker start {name}-algo-{k}" in run.stdout
    assert not (fleet.home / "jobs").exists()
    _nothing_started(fleet, cluster, name)


def test_a_docker_option_docker_refuses_fails_before_any_container_starts(fleet, cluster, tmp_path):
    doc = cluster.inventory_doc()
    doc["hosts"][2]["docker_args"] = ["--no-such-option"]
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", doc)
    record = _host_failure(fleet, cluster, inventory,
                           "algo-3 (h3, 10.251.7.13): docker could not create the container", code=1)
    assert record["FailureReason"].startswith("ClientError: algo-3")


def test_ctrl_c_while_hosts_are_prepared_stops_before_anything_starts(fleet, cluster):
    # h2's docker hangs, so the job waits in preparation; h1 and h3 have created (not
    # started) their containers. Ctrl-C then: Stopped, nothing ever ran, nothing remains.
    pid = int((cluster.hosts[1].dir / "dockerd.pid").read_text())
    job = make_job("echo must never run")
    name = job["ProcessingJobName"]
    os.kill(pid, signal.SIGSTOP)
    try:
        process = fleet.start("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                              "--docker-timeout", "60")
        import time
        for _ in range(300):
            if cluster.hosts[0].containers(name) and cluster.hosts[2].containers(name):
                break
            time.sleep(0.1)
        assert cluster.hosts[0].docker("ps", "-a", "--filter", f"label=fleet.job={name}",
                                       "--format", "{{.State}}").split() == ["created"]
        process.send_signal(signal.SIGINT)
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "must never run" not in out
    assert fleet.record(name)["ProcessingJobStatus"] == "Stopped"
    _nothing_started(fleet, cluster, name)
