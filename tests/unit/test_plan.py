"""Job + inventory → one HostPlan per host: what happens on algo-k, decided before anything runs."""

from __future__ import annotations

import json

import pytest

from fleet.contract.container import Mount
from fleet.contract.job import parse_job
from fleet.errors import InvalidInput
from fleet.inventory import parse_inventory
from fleet.plan import plan_cluster, select_hosts

INPUTS = ["/opt/ml/processing/input/train", "/opt/ml/processing/input/test"]
OUTPUTS = ["/opt/ml/processing/output/model", "/opt/ml/processing/output/report"]


def job(count: int = 2, name: str = "plan-job"):
    return parse_job({
        "ProcessingJobName": name,
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": "registry.lab/train:1"},
        "ProcessingInputs": [
            {"InputName": f"in{i}", "S3Input": {"S3Uri": f"s3://b/in{i}/", "LocalPath": path,
                                                "S3DataType": "S3Prefix"}}
            for i, path in enumerate(INPUTS)],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": f"out{i}", "S3Output": {"S3Uri": f"s3://b/out{i}/", "LocalPath": path,
                                                   "S3UploadMode": "EndOfJob"}}
            for i, path in enumerate(OUTPUTS)]},
    }, "job.json")


def inventory(*names: str, workdir: str = "/srv/fleet"):
    return parse_inventory({
        "defaults": {"workdir": workdir, "user": "ops"},
        "hosts": [{"address": f"{n}.lab", "name": n, "ip": f"10.0.0.{i}"} for i, n in enumerate(names, 1)],
    }, "hosts.yaml")


def plan(processing_job, inv):
    hosts = select_hosts(processing_job, inv)
    return plan_cluster(processing_job, hosts, [h.ip for h in hosts], stop_grace=30,
                        region="us-east-1", account="000000000000")


# -- select_hosts -------------------------------------------------------------------------------

def test_instance_count_above_the_inventory_is_invalid_input():
    with pytest.raises(InvalidInput) as caught:
        select_hosts(job(count=3), inventory("a", "b"))
    assert caught.value.exit_code == 2
    assert "InstanceCount" in caught.value.message
    assert "3" in caught.value.message and "2" in caught.value.message


def test_the_first_instance_count_hosts_are_used_in_inventory_order():
    hosts = select_hosts(job(count=2), inventory("c", "a", "b"))
    assert [h.label for h in hosts] == ["c", "a"]


def test_instance_count_equal_to_the_inventory_uses_every_host():
    assert len(select_hosts(job(count=3), inventory("a", "b", "c"))) == 3


# -- algo names ---------------------------------------------------------------------------------

def test_hosts_become_algo_1_to_n_in_inventory_order():
    cluster = plan(job(count=3), inventory("zeta", "alpha", "mid", "spare"))
    assert [(hp.algo, hp.host.label, hp.address) for hp in cluster.hosts] == [
        ("algo-1", "zeta", "10.0.0.1"), ("algo-2", "alpha", "10.0.0.2"), ("algo-3", "mid", "10.0.0.3")]


# -- mounts -------------------------------------------------------------------------------------

def test_every_input_and_output_local_path_is_mounted():
    for hp in plan(job(), inventory("a", "b")).hosts:
        targets = [m.target for m in hp.mounts]
        for path in INPUTS + OUTPUTS:
            assert targets.count(path) == 1
        assert all(not m.read_only for m in hp.mounts if m.target in INPUTS + OUTPUTS)


def test_config_is_mounted_read_only_and_output_read_write():
    for hp in plan(job(), inventory("a", "b")).hosts:
        by_target = {m.target: m for m in hp.mounts}
        assert by_target["/opt/ml/config"] == Mount(f"{hp.job_dir}/ml/config", "/opt/ml/config", read_only=True)
        assert by_target["/opt/ml/output"] == Mount(f"{hp.job_dir}/ml/output", "/opt/ml/output", read_only=False)


def test_every_mount_source_is_a_distinct_directory_of_the_private_dir():
    for hp in plan(job(), inventory("a", "b")).hosts:
        assert hp.private_dir == f"{hp.job_dir}/ml"
        sources = [m.source for m in hp.mounts]
        assert len(set(sources)) == len(sources)
        relative = [s.removeprefix(hp.private_dir + "/") for s in sources]
        assert all(s.startswith(hp.private_dir + "/") for s in sources)
        assert sorted(relative) == sorted(hp.dirs)


def test_the_session_makes_every_directory_parents_first_none_writable_by_others():
    """The directories the container writes are given to its user (`container`), the
    inputs are 0755: no mount source is 0777 (issue 19, 11)."""
    hp = plan(job(count=1), inventory("a")).hosts[0]
    assert hp.tree == [("config", "0755"), ("output", "container"), ("inputs", "0755"),
                       ("inputs/1", "0755"), ("inputs/1.partial", "0755"), ("inputs/2", "0755"),
                       ("inputs/2.partial", "0755"), ("outputs", "0755"), ("outputs/1", "container"),
                       ("outputs/2", "container")]
    assert [hp.partial_input_dir(i) for i in (1, 2)] == [f"{hp.private_dir}/inputs/{i}.partial" for i in (1, 2)]
    assert [hp.output_dir(i) for i in (1, 2)] == [f"{hp.private_dir}/outputs/{i}" for i in (1, 2)]


def test_the_env_file_is_in_the_private_dir_and_its_content_in_no_repr():
    hp = plan(job(count=1), inventory("a")).hosts[0]
    assert hp.env_file == f"{hp.private_dir}/env"
    assert [hp.env_value_file(i) for i in (1, 2)] == [f"{hp.private_dir}/env.1", f"{hp.private_dir}/env.2"]
    assert "environment" not in repr(hp) and "inherited" not in repr(hp)


def test_mounts_reach_docker_as_volumes():
    for hp in plan(job(), inventory("a", "b")).hosts:
        volumes = [hp.docker_create[i + 1] for i, w in enumerate(hp.docker_create) if w == "--volume"]
        assert f"{hp.private_dir}/config:/opt/ml/config:ro" in volumes
        assert f"{hp.private_dir}/output:/opt/ml/output" in volumes
        assert sorted(v.split(":")[1] for v in volumes) == sorted(
            ["/opt/ml/config", "/opt/ml/output", *INPUTS, *OUTPUTS])


# -- job directory ------------------------------------------------------------------------------

def test_job_dir_is_workdir_slash_name_slash_algo_k():
    cluster = plan(job(name="nightly"), inventory("a", "b", workdir="/data/fleet"))
    assert [hp.job_dir for hp in cluster.hosts] == ["/data/fleet/nightly/algo-1", "/data/fleet/nightly/algo-2"]


def test_message_file_is_under_the_output_mount():
    for hp in plan(job(), inventory("a", "b")).hosts:
        assert hp.message_file == f"{hp.private_dir}/output/message"


# -- files --------------------------------------------------------------------------------------

def test_files_hold_both_config_files():
    for hp in plan(job(), inventory("a", "b")).hosts:
        assert set(hp.files) == {"config/resourceconfig.json", "config/processingjobconfig.json"}
        assert json.loads(hp.files["config/resourceconfig.json"])["current_host"] == hp.algo
        assert json.loads(hp.files["config/processingjobconfig.json"])["ProcessingJobName"] == "plan-job"


def test_config_files_land_in_the_directory_mounted_at_opt_ml_config():
    for hp in plan(job(), inventory("a", "b")).hosts:
        config_source = next(m.source for m in hp.mounts if m.target == "/opt/ml/config")
        for path in hp.files:
            assert f"{hp.private_dir}/{path}".startswith(config_source + "/")


def test_plan_carries_the_arn_and_name():
    cluster = plan(job(name="Mixed-Case"), inventory("a", "b"))
    assert cluster.name == "Mixed-Case"
    assert cluster.arn == "arn:aws:sagemaker:us-east-1:000000000000:processing-job/mixed-case"
