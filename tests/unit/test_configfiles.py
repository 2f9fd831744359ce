"""/opt/ml/config/resourceconfig.json and processingjobconfig.json, as the container reads them."""

from __future__ import annotations

import json

import pytest

from fleet.contract import configfiles
from fleet.contract.job import parse_job
from fleet.inventory import SshHost
from fleet.plan import plan_cluster

# The example file of the contract ("How Amazon SageMaker Processing Configures Your Processing Container").
AWS_EXAMPLE = json.loads("""
{ "ProcessingJobArn": "<processing_job_arn>", "ProcessingJobName": "<processing_job_name>",
  "AppSpecification": { "ImageUri": "<image_uri>", "ContainerEntrypoint": null, "ContainerArguments": null },
  "Environment": { "KEY": "VALUE" },
  "ProcessingInputs": [ { "InputName": "input-1", "S3Input": {
      "LocalPath": "/opt/ml/processing/input/dataset", "S3Uri": "<s3_uri>",
      "S3DataDistributionType": "FullyReplicated", "S3DataType": "S3Prefix", "S3InputMode": "File",
      "S3CompressionType": "None", "S3DownloadMode": "StartOfJob" } } ],
  "ProcessingOutputConfig": { "Outputs": [ { "OutputName": "output-1", "S3Output": {
      "LocalPath": "/opt/ml/processing/output/dataset", "S3Uri": "<s3_uri>", "S3UploadMode": "EndOfJob" } } ],
    "KmsKeyId": null },
  "ProcessingResources": { "ClusterConfig": { "InstanceCount": 1, "InstanceType": "ml.m5.xlarge",
      "VolumeSizeInGB": 30, "VolumeKmsKeyId": null } },
  "RoleArn": "<IAM role>", "StoppingCondition": { "MaxRuntimeInSeconds": 86400 } }
""")

REGION = "eu-central-1"
ACCOUNT = "123456789012"


def request(**overrides) -> dict:
    """A request written with only the required fields, so SageMaker's defaults must be filled in."""
    document = {
        "ProcessingJobName": "Nightly-ETL",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": "registry.lab/etl:2"},
        "ProcessingInputs": [{"InputName": "input-1", "S3Input": {
            "S3Uri": "s3://bucket/in/", "LocalPath": "/opt/ml/processing/input/dataset",
            "S3DataType": "S3Prefix"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "output-1", "S3Output": {
            "S3Uri": "s3://bucket/out/", "LocalPath": "/opt/ml/processing/output/dataset",
            "S3UploadMode": "EndOfJob"}}]},
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
    }
    document.update(overrides)
    return document


def written_config(document: dict, count: int = 1) -> list[dict]:
    """processingjobconfig.json as each host's container reads it."""
    document = {**document}
    document["ProcessingResources"] = {"ClusterConfig": {
        **document["ProcessingResources"]["ClusterConfig"], "InstanceCount": count}}
    job = parse_job(document, "job.json")
    hosts = [SshHost(address=f"h{i}", ip=f"10.0.0.{i}", user="u", workdir="/w") for i in range(1, count + 1)]
    plan = plan_cluster(job, hosts, [h.ip for h in hosts], stop_grace=30, region=REGION, account=ACCOUNT)
    return [json.loads(hp.files["config/processingjobconfig.json"]) for hp in plan.hosts]


def config(document: dict) -> dict:
    return written_config(document)[0]


def key_tree(value):
    """The shape of a JSON document: its keys, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [key_tree(value[0])] if value else []
    return None


# -- resourceconfig.json ------------------------------------------------------------------------

def test_resourceconfig_names_the_current_host_and_all_hosts_in_order():
    job = parse_job(request(ProcessingResources={"ClusterConfig": {
        "InstanceCount": 3, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}}), "job.json")
    hosts = [SshHost(address=f"h{i}", ip=f"10.0.0.{i}", user="u") for i in range(1, 4)]
    plan = plan_cluster(job, hosts, [h.ip for h in hosts], stop_grace=30, region=REGION, account=ACCOUNT)
    for k, hp in enumerate(plan.hosts, start=1):
        assert json.loads(hp.files["config/resourceconfig.json"]) == {
            "current_host": f"algo-{k}", "hosts": ["algo-1", "algo-2", "algo-3"]}


def test_resourceconfig_has_exactly_the_keys_of_the_contract():
    assert configfiles.resource_config("algo-1", ["algo-1"]) == {"current_host": "algo-1", "hosts": ["algo-1"]}


# -- processingjobconfig.json -------------------------------------------------------------------

def test_processingjobconfig_has_the_keys_of_the_aws_example():
    assert key_tree(config(request(Environment={"KEY": "VALUE"}))) == key_tree(AWS_EXAMPLE)


def test_processingjobconfig_is_the_same_on_every_host():
    first, *others = written_config(request(), count=3)
    assert all(other == first for other in others)
    assert first["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3


def test_s3_input_defaults_are_filled_in():
    s3_input = config(request())["ProcessingInputs"][0]["S3Input"]
    assert s3_input["S3InputMode"] == "File"
    assert s3_input["S3DataDistributionType"] == "FullyReplicated"
    assert s3_input["S3CompressionType"] == "None"
    assert s3_input["S3DownloadMode"] == "StartOfJob"


def test_s3_input_values_given_in_the_request_are_kept():
    document = request()
    document["ProcessingInputs"][0]["S3Input"].update(
        S3DataDistributionType="ShardedByS3Key", S3CompressionType="Gzip", S3DataType="ManifestFile")
    s3_input = config(document)["ProcessingInputs"][0]["S3Input"]
    assert s3_input["S3DataDistributionType"] == "ShardedByS3Key"
    assert s3_input["S3CompressionType"] == "Gzip"
    assert s3_input["S3DataType"] == "ManifestFile"
    assert s3_input["S3Uri"] == "s3://bucket/in/"
    assert s3_input["LocalPath"] == "/opt/ml/processing/input/dataset"


def test_environment_is_an_empty_object_when_absent():
    assert config(request())["Environment"] == {}


def test_environment_is_copied_verbatim():
    env = {"KEY": "VALUE", "TRICKY": "$(x) `y` \"z\"\t= "}  # a newline is refused (docker's env file)
    assert config(request(Environment=env))["Environment"] == env


def test_container_entrypoint_and_arguments_are_null_when_absent():
    app = config(request())["AppSpecification"]
    assert app == {"ImageUri": "registry.lab/etl:2", "ContainerEntrypoint": None, "ContainerArguments": None}


def test_container_entrypoint_and_arguments_are_lists_when_given():
    app = config(request(AppSpecification={
        "ImageUri": "registry.lab/etl:2",
        "ContainerEntrypoint": ["python3", "-v", "/processing_script.py"],
        "ContainerArguments": ["data-format", "csv"]}))["AppSpecification"]
    assert app["ContainerEntrypoint"] == ["python3", "-v", "/processing_script.py"]
    assert app["ContainerArguments"] == ["data-format", "csv"]


def test_output_kms_key_id_is_null_when_absent():
    assert config(request())["ProcessingOutputConfig"]["KmsKeyId"] is None


def test_volume_kms_key_id_is_null_when_absent():
    assert config(request())["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] is None


def test_cluster_config_is_copied():
    assert config(request())["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30, "VolumeKmsKeyId": None}


def test_stopping_condition_defaults_to_86400_seconds():
    assert config(request())["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}


def test_stopping_condition_given_is_kept():
    document = request(StoppingCondition={"MaxRuntimeInSeconds": 3600})
    assert config(document)["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}


def test_output_is_described_like_the_aws_example():
    assert config(request())["ProcessingOutputConfig"]["Outputs"] == [{
        "OutputName": "output-1",
        "S3Output": {"LocalPath": "/opt/ml/processing/output/dataset", "S3Uri": "s3://bucket/out/",
                     "S3UploadMode": "EndOfJob"}}]


def test_role_arn_is_echoed_when_given():
    assert config(request())["RoleArn"] == "arn:aws:iam::123456789012:role/SageMakerRole"


def test_job_name_keeps_its_case():
    assert config(request())["ProcessingJobName"] == "Nightly-ETL"


# -- the job's ARN ------------------------------------------------------------------------------

def test_processing_job_arn_has_the_sagemaker_shape_with_a_lower_cased_name():
    assert config(request())["ProcessingJobArn"] == \
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/nightly-etl"


@pytest.mark.parametrize("name, region, account, expected", [
    ("MyJob-1", "us-east-1", "000000000000", "arn:aws:sagemaker:us-east-1:000000000000:processing-job/myjob-1"),
    ("abc", "ap-south-1", "111122223333", "arn:aws:sagemaker:ap-south-1:111122223333:processing-job/abc"),
])
def test_job_arn(name, region, account, expected):
    assert configfiles.job_arn(name, region, account) == expected


def test_config_files_are_utf8_json_ending_in_a_newline():
    encoded = configfiles.encode({"Environment": {"K": "é"}})
    assert encoded.endswith(b"\n")
    assert json.loads(encoded.decode("utf-8")) == {"Environment": {"K": "é"}}


def test_processingjobconfig_names_the_instance_type_and_count_the_job_runs_with():
    # InstancePreferences (SDK v3) instead of InstanceType, a count on each preference: the
    # container reads the first preference's type and count, never null.
    document = request()
    document["ProcessingResources"] = {"ClusterConfig": {"VolumeSizeInGB": 30, "InstancePreferences": [
        {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}, {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 2}]}}
    job = parse_job(document, "job.json")
    host = SshHost(address="h1", ip="10.0.0.1", user="u", workdir="/w")
    plan = plan_cluster(job, [host], ["10.0.0.1"], stop_grace=30, region=REGION, account=ACCOUNT)
    cluster = json.loads(plan.hosts[0].files["config/processingjobconfig.json"])["ProcessingResources"]["ClusterConfig"]
    assert cluster["InstanceType"] == "ml.g5.xlarge"
    assert cluster["InstanceCount"] == 1
