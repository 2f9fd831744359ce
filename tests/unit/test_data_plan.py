"""plan_data: which objects each host gets, by which path, and what each output uploads,
decided from the ClusterPlan and the listing alone (no network, no files)."""

from __future__ import annotations

from fleet.contract.job import parse_job
from fleet.data.locations import FileLocation, S3Location
from fleet.data.plan import CONTROLLER, DIRECT, plan_data
from fleet.data.sources import InputObject
from fleet.inventory import SshHost
from fleet.plan import plan_cluster


def _job(inputs: list[dict] = (), outputs: list[dict] = (), count: int = 3):
    return parse_job({
        "ProcessingJobName": "planned",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox"},
        "ProcessingInputs": [{"InputName": f"in{k}", "S3Input": {
            "LocalPath": f"/opt/ml/processing/in{k}", "S3DataType": "S3Prefix", **spec}}
            for k, spec in enumerate(inputs)],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": f"out{k}", "S3Output": {
            "LocalPath": f"/opt/ml/processing/out{k}", "S3UploadMode": "EndOfJob", **spec}}
            for k, spec in enumerate(outputs)]},
    }, "job.json")


def _cluster(job, paths: list[str] | None = None):
    paths = paths or ["controller"] * job.instance_count
    hosts = [SshHost(address=f"10.0.0.{k}", data_path=path) for k, path in enumerate(paths, start=1)]
    return plan_cluster(job, hosts, [h.address for h in hosts], stop_grace=1, region="r", account="1")


def _s3(*keys: str, size: int = 10) -> list[InputObject]:
    return [InputObject(S3Location("b", f"data/{key}"), key, size) for key in keys]


def _names(plan) -> list[list[str]]:
    return [[o.relative for o in host.objects] for host in plan.hosts]


def test_sharded_by_s3_key_gives_each_object_to_one_host_in_key_order_round_robin():
    job = _job([{"S3Uri": "s3://b/data/", "S3DataDistributionType": "ShardedByS3Key"}])
    data = plan_data(_cluster(job), [_s3("e", "a", "d", "b", "c")])
    assert _names(data.inputs[0]) == [["a", "d"], ["b", "e"], ["c"]]
    assert (data.inputs[0].objects, data.inputs[0].bytes) == (5, 50)  # each object counted once


def test_fully_replicated_gives_every_host_every_object():
    job = _job([{"S3Uri": "s3://b/data/"}])
    data = plan_data(_cluster(job), [_s3("a", "b")])
    assert _names(data.inputs[0]) == [["a", "b"]] * 3
    assert data.inputs[0].replicated
    assert (data.inputs[0].objects, data.inputs[0].bytes) == (2, 20)  # read once, whatever the hosts


def test_one_object_sharded_over_many_hosts_leaves_the_others_an_empty_input():
    job = _job([{"S3Uri": "s3://b/data/", "S3DataDistributionType": "ShardedByS3Key"}])
    data = plan_data(_cluster(job), [_s3("only")])
    assert _names(data.inputs[0]) == [["only"], [], []]
    assert [h.bytes for h in data.inputs[0].hosts] == [10, 0, 0]


def test_an_empty_listing_plans_an_empty_input_on_every_host():
    job = _job([{"S3Uri": "s3://b/data/"}, {"S3Uri": "s3://b/data/", "S3DataDistributionType": "ShardedByS3Key"}])
    data = plan_data(_cluster(job), [[], []])
    assert [_names(i) for i in data.inputs] == [[[], [], []]] * 2
    assert all(i.listed for i in data.inputs)


def test_each_host_input_lands_in_its_partial_directory():
    job = _job([{"S3Uri": "s3://b/data/"}, {"S3Uri": "s3://b/more/"}])
    cluster = _cluster(job)
    data = plan_data(cluster, [_s3("a"), _s3("b")])
    for index, item in enumerate(data.inputs, start=1):
        assert [h.directory for h in item.hosts] == [p.partial_input_dir(index) for p in cluster.hosts]
        assert [h.algo for h in item.hosts] == ["algo-1", "algo-2", "algo-3"]


def test_a_direct_host_fetches_s3_objects_itself_the_others_through_the_controller():
    job = _job([{"S3Uri": "s3://b/data/"}])
    data = plan_data(_cluster(job, ["direct", "controller", "direct"]), [_s3("a")])
    assert [h.path for h in data.inputs[0].hosts] == [DIRECT, CONTROLLER, DIRECT]
    assert "presigned" in data.inputs[0].hosts[0].why
    assert "data_path controller" in data.inputs[0].hosts[1].why


def test_file_objects_take_the_controller_path_even_for_a_direct_host():
    job = _job([{"S3Uri": "file:///srv/data"}], [{"S3Uri": "s3://b/out/"}], count=1)
    objects = [InputObject(FileLocation("/srv/data/a"), "a", 3)]
    data = plan_data(_cluster(job, ["direct"]), [objects])
    assert data.inputs[0].hosts[0].path == CONTROLLER
    assert "file:// objects are the controller's" in data.inputs[0].hosts[0].why


def test_a_manifest_with_some_file_objects_takes_the_controller_path():
    job = _job([{"S3Uri": "file:///srv/manifest.json", "S3DataType": "ManifestFile"}], count=2)
    objects = _s3("a") + [InputObject(FileLocation("/srv/data/b"), "b", 3)]
    data = plan_data(_cluster(job, ["direct", "direct"]), [objects])
    assert [h.path for h in data.inputs[0].hosts] == [CONTROLLER, CONTROLLER]


def test_a_manifest_of_s3_objects_is_fetched_directly_and_sharded_like_a_prefix():
    job = _job([{"S3Uri": "s3://b/manifest.json", "S3DataType": "ManifestFile",
                 "S3DataDistributionType": "ShardedByS3Key"}], count=2)
    data = plan_data(_cluster(job, ["direct", "direct"]), [_s3("x/1", "x/2", "x/3")])
    assert _names(data.inputs[0]) == [["x/1", "x/3"], ["x/2"]]
    assert [h.path for h in data.inputs[0].hosts] == [DIRECT, DIRECT]


def test_without_a_listing_the_path_follows_the_uri_and_no_object_is_planned():
    job = _job([{"S3Uri": "s3://b/data/"}, {"S3Uri": "file:///srv/data"},
                {"S3Uri": "file:///srv/manifest.json", "S3DataType": "ManifestFile"}], count=1)
    data = plan_data(_cluster(job, ["direct"]), None)
    assert [i.listed for i in data.inputs] == [False, False, False]
    assert [i.hosts[0].objects for i in data.inputs] == [(), (), ()]
    assert [i.hosts[0].path for i in data.inputs] == [DIRECT, CONTROLLER, DIRECT]
    assert "if the manifest's prefix is in S3" in data.inputs[2].hosts[0].why


def test_an_end_of_job_output_to_s3_is_put_by_a_direct_host_itself():
    job = _job(outputs=[{"S3Uri": "s3://b/out/"}], count=2)
    cluster = _cluster(job, ["direct", "controller"])
    output = plan_data(cluster, []).outputs[0]
    assert output.destination == S3Location("b", "out/")
    assert [(h.algo, h.path) for h in output.hosts] == [("algo-1", DIRECT), ("algo-2", CONTROLLER)]
    assert [h.directory for h in output.hosts] == [p.output_dir(1) for p in cluster.hosts]
    assert not output.continuous


def test_a_continuous_output_is_always_read_by_the_controller():
    job = _job(outputs=[{"S3Uri": "s3://b/out/", "S3UploadMode": "Continuous"}], count=2)
    output = plan_data(_cluster(job, ["direct", "direct"]), []).outputs[0]
    assert output.continuous
    assert [h.path for h in output.hosts] == [CONTROLLER, CONTROLLER]
    assert "Continuous" in output.hosts[0].why


def test_a_file_output_is_the_controllers_even_from_a_direct_host():
    job = _job(outputs=[{"S3Uri": "file:///srv/out"}], count=1)
    output = plan_data(_cluster(job, ["direct"]), []).outputs[0]
    assert output.destination == FileLocation("/srv/out")
    assert output.hosts[0].path == CONTROLLER


def test_for_host_gathers_what_one_host_gets_and_uploads():
    job = _job([{"S3Uri": "s3://b/data/", "S3DataDistributionType": "ShardedByS3Key"}],
               [{"S3Uri": "s3://b/out/"}], count=2)
    inputs, outputs = plan_data(_cluster(job), [_s3("a", "b", "c")]).for_host("algo-2")
    assert [[o.relative for o in mine.objects] for _, mine in inputs] == [["b"]]
    assert [(o.name, u.algo) for o, u in outputs] == [("out0", "algo-2")]


def test_a_job_without_data_plans_nothing():
    data = plan_data(_cluster(_job(count=2)), None)
    assert (data.inputs, data.outputs) == ((), ())
