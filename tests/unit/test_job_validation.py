"""job.json is a CreateProcessingJob request: the API's limits are fleet's limits.

Every refusal is an InvalidInput (exit 2) whose message names the file and the field path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from fleet.contract.job import ignored_fields, load_job, parse_job
from fleet.errors import InvalidInput

SOURCE = "job.json"


def request(**overrides) -> dict:
    """A minimal valid request with one input and one output; keyword arguments replace top-level fields."""
    document = {
        "ProcessingJobName": "preprocess",
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
        },
        "AppSpecification": {"ImageUri": "registry.lab/preprocess:1.0"},
        "ProcessingInputs": [
            {"InputName": "raw", "S3Input": {
                "S3Uri": "s3://bucket/raw/", "LocalPath": "/opt/ml/processing/input",
                "S3DataType": "S3Prefix"}},
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {"OutputName": "clean", "S3Output": {
                    "S3Uri": "s3://bucket/clean/", "LocalPath": "/opt/ml/processing/output",
                    "S3UploadMode": "EndOfJob"}},
            ],
        },
    }
    document.update(overrides)
    return document


def refused(document: dict) -> str:
    """The InvalidInput message for a document that must be refused."""
    with pytest.raises(InvalidInput) as caught:
        parse_job(document, SOURCE)
    assert caught.value.exit_code == 2
    return caught.value.message


def s3_input(name: str = "raw", local_path: str = "/opt/ml/processing/input", **fields) -> dict:
    spec = {"S3Uri": "s3://bucket/raw/", "LocalPath": local_path, "S3DataType": "S3Prefix", **fields}
    return {"InputName": name, "S3Input": spec}


def s3_output(name: str = "clean", local_path: str = "/opt/ml/processing/output", **fields) -> dict:
    spec = {"S3Uri": "s3://bucket/clean/", "LocalPath": local_path, "S3UploadMode": "EndOfJob", **fields}
    return {"OutputName": name, "S3Output": spec}


def with_cluster(**fields) -> dict:
    document = request()
    document["ProcessingResources"]["ClusterConfig"].update(fields)
    return document


def with_app(**fields) -> dict:
    document = request()
    document["AppSpecification"].update(fields)
    return document


def test_minimal_request_is_accepted():
    job = parse_job(request(), SOURCE)
    assert job.ProcessingJobName == "preprocess"
    assert job.instance_count == 1


# -- ProcessingJobName: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}, 1..63 characters --------------------

def test_job_name_of_63_characters_is_accepted():
    name = "a" + "-b" * 31  # 63 characters
    assert len(name) == 63
    assert parse_job(request(ProcessingJobName=name), SOURCE).ProcessingJobName == name


def test_job_name_of_64_characters_is_refused():
    message = refused(request(ProcessingJobName="a" * 64))
    assert "job.json: ProcessingJobName:" in message


@pytest.mark.parametrize("name", ["-abc", "abc-", "a_b", "a.b", "a b", ""])
def test_job_name_must_match_the_api_pattern(name):
    assert "ProcessingJobName" in refused(request(ProcessingJobName=name))


def test_job_name_with_inner_hyphens_is_accepted():
    assert parse_job(request(ProcessingJobName="A--9-x"), SOURCE).ProcessingJobName == "A--9-x"


# -- ProcessingResources.ClusterConfig.InstanceCount: 1..100 ----------------------------------

@pytest.mark.parametrize("count", [1, 100])
def test_instance_count_within_1_to_100_is_accepted(count):
    assert parse_job(with_cluster(InstanceCount=count), SOURCE).instance_count == count


@pytest.mark.parametrize("count", [0, 101, -1])
def test_instance_count_outside_1_to_100_is_refused(count):
    message = refused(with_cluster(InstanceCount=count))
    assert "ProcessingResources.ClusterConfig.InstanceCount" in message


@pytest.mark.parametrize("count", ["2", 2.5, True])
def test_instance_count_must_be_an_integer(count):
    assert "InstanceCount" in refused(with_cluster(InstanceCount=count))


def test_volume_size_outside_1_to_16384_is_refused():
    assert "VolumeSizeInGB" in refused(with_cluster(VolumeSizeInGB=0))
    assert "VolumeSizeInGB" in refused(with_cluster(VolumeSizeInGB=16385))


# -- StoppingCondition.MaxRuntimeInSeconds: 1..777600 -----------------------------------------

@pytest.mark.parametrize("seconds", [0, 777601])
def test_max_runtime_outside_1_to_777600_is_refused(seconds):
    message = refused(request(StoppingCondition={"MaxRuntimeInSeconds": seconds}))
    assert "StoppingCondition.MaxRuntimeInSeconds" in message


@pytest.mark.parametrize("seconds", [1, 777600])
def test_max_runtime_within_limits_is_accepted(seconds):
    job = parse_job(request(StoppingCondition={"MaxRuntimeInSeconds": seconds}), SOURCE)
    assert job.max_runtime == seconds


def test_max_runtime_defaults_to_one_day():
    assert parse_job(request(), SOURCE).max_runtime == 86400


# -- Environment: at most 100 entries; key [a-zA-Z_][a-zA-Z0-9_]*; value at most 256 -------------

def test_environment_of_100_entries_is_accepted():
    env = {f"VAR_{i}": "x" for i in range(100)}
    assert parse_job(request(Environment=env), SOURCE).Environment == env


def test_environment_of_more_than_100_entries_is_refused():
    message = refused(request(Environment={f"VAR_{i}": "x" for i in range(101)}))
    assert "Environment" in message and "100" in message


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "ÄB"])
def test_environment_key_must_match_the_api_pattern(key):
    message = refused(request(Environment={key: "x"}))
    assert "Environment" in message and repr(key) in message


def test_environment_key_with_a_trailing_newline_is_refused():
    message = refused(request(Environment={"KEY\n": "x"}))
    assert "Environment" in message


def test_environment_value_of_256_characters_is_accepted():
    job = parse_job(request(Environment={"V": "x" * 256}), SOURCE)
    assert job.Environment == {"V": "x" * 256}


def test_environment_value_of_257_characters_is_refused():
    message = refused(request(Environment={"LONG": "x" * 257}))
    assert "Environment" in message and "LONG" in message


def test_environment_value_must_be_a_string():
    assert "Environment" in refused(request(Environment={"N": 1}))


VERBATIM = {"LINES": "line1\nline2", "TRAILING": "trailing\n\n", "CR": "ends with CR\r",
            "SHELL": "it's \"$(touch /tmp/x)\" `id`", "CRLF": "a\r\nb\r\n"}


def test_environment_values_with_newlines_quotes_and_a_trailing_cr_are_accepted_verbatim():
    """The API allows any characters in a value; so does fleet (see
    test_container_argv.py for how each reaches the container)."""
    assert parse_job(request(Environment=VERBATIM), SOURCE).Environment == VERBATIM


def test_environment_value_of_256_characters_with_newlines_is_accepted_and_257_refused():
    assert parse_job(request(Environment={"V": "a\n" * 128}), SOURCE).Environment == {"V": "a\n" * 128}
    assert "LONG" in refused(request(Environment={"LONG": "a\n" * 128 + "b"}))


def test_environment_value_with_a_nul_is_refused_naming_its_key():
    message = refused(request(Environment={"OK": "fine", "ZQ_NUL": "a\0b"}))
    assert message == (f"{SOURCE}: Environment: the value of ZQ_NUL contains a NUL character, which no "
                       f"process environment can hold")


def test_environment_value_that_is_not_unicode_is_refused_naming_its_key():
    document = json.loads(json.dumps(request(Environment={"ZQ_HALF": "x"})).replace("\"x\"", '"\\ud800"'))
    message = refused(document)
    assert "ZQ_HALF" in message and "lone surrogate" in message


@pytest.mark.parametrize("key", ["DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_ZQ_ANY", "HOME", "PATH", "TMPDIR",
                                 "HTTP_PROXY", "https_proxy", "no_proxy", "ALL_PROXY", "SSL_CERT_FILE", "GODEBUG",
                                 "LD_PRELOAD", "OTEL_EXPORTER_OTLP_ENDPOINT", "CONTAINERS_CONF", "XDG_CONFIG_HOME",
                                 "BASH_ENV", "SSH_AUTH_SOCK"])
@pytest.mark.parametrize("value", ["a\nb", "ends with CR\r"])
def test_a_variable_docker_itself_reads_cannot_hold_a_value_only_dockers_environment_carries(key, value):
    """Such a value reaches the container through the docker process's environment (its env
    file cannot carry it): under a name docker reads, it would steer docker itself."""
    message = refused(request(Environment={"OK": "x\ny", key: value}))
    assert f"Environment: the value of {key} " in message
    assert "docker's env file cannot carry it" in message and "steer docker itself" in message
    assert value not in message


@pytest.mark.parametrize("key", ["DOCKER_HOST", "HOME", "HTTP_PROXY", "LD_PRELOAD"])
def test_a_variable_docker_itself_reads_with_a_one_line_value_goes_in_the_env_file_and_is_accepted(key):
    assert parse_job(request(Environment={key: "value \r inside"}), SOURCE).Environment == {key: "value \r inside"}


@pytest.mark.parametrize("key", ["DOCKERHOST", "MY_HOME", "HOME_DIR", "PATHS", "GOOGLE_CREDENTIALS", "SSH", "home",
                                 "No_Proxy"])
def test_names_docker_does_not_read_take_any_value(key):
    assert parse_job(request(Environment={key: "a\nb"}), SOURCE).Environment == {key: "a\nb"}


# -- ProcessingInputs / Outputs: at most 10; names unique --------------------------------------

def test_ten_inputs_and_ten_outputs_are_accepted():
    document = request(
        ProcessingInputs=[s3_input(f"in{i}", f"/opt/ml/processing/in{i}") for i in range(10)],
        ProcessingOutputConfig={"Outputs": [s3_output(f"out{i}", f"/opt/ml/processing/out{i}")
                                            for i in range(10)]},
    )
    job = parse_job(document, SOURCE)
    assert len(job.inputs) == 10 and len(job.outputs) == 10


def test_more_than_10_inputs_are_refused():
    document = request(ProcessingInputs=[s3_input(f"in{i}", f"/opt/ml/processing/in{i}") for i in range(11)])
    assert "ProcessingInputs" in refused(document)


def test_more_than_10_outputs_are_refused():
    document = request(ProcessingOutputConfig={
        "Outputs": [s3_output(f"out{i}", f"/opt/ml/processing/out{i}") for i in range(11)]})
    assert "ProcessingOutputConfig.Outputs" in refused(document)


def test_duplicate_input_names_are_refused():
    document = request(ProcessingInputs=[s3_input("same", "/opt/ml/processing/a"),
                                         s3_input("same", "/opt/ml/processing/b")])
    message = refused(document)
    assert "ProcessingInputs" in message and "InputName" in message and "same" in message


def test_duplicate_output_names_are_refused():
    document = request(ProcessingOutputConfig={"Outputs": [s3_output("same", "/opt/ml/processing/a"),
                                                           s3_output("same", "/opt/ml/processing/b")]})
    message = refused(document)
    assert "OutputName" in message and "same" in message


def test_input_and_output_sharing_a_local_path_are_refused():
    document = request(ProcessingInputs=[s3_input(local_path="/opt/ml/processing/data")],
                       ProcessingOutputConfig={"Outputs": [s3_output(local_path="/opt/ml/processing/data/")]})
    assert "/opt/ml/processing/data" in refused(document)


def test_no_inputs_and_no_outputs_is_accepted():
    document = request()
    del document["ProcessingInputs"], document["ProcessingOutputConfig"]
    job = parse_job(document, SOURCE)
    assert job.inputs == [] and job.outputs == []


# -- LocalPath: a directory under /opt/ml/processing/ ------------------------------------------

@pytest.mark.parametrize("local_path", [
    "/opt/ml/processing/input",
    "/opt/ml/processing/input/",
    "/opt/ml/processing/a/b/c",
])
def test_local_path_under_opt_ml_processing_is_accepted(local_path):
    job = parse_job(request(ProcessingInputs=[s3_input(local_path=local_path)]), SOURCE)
    assert job.inputs[0].S3Input.LocalPath == local_path


@pytest.mark.parametrize("local_path", [
    "/tmp/input",
    "/opt/ml/input",
    "/opt/ml/processinginput",
    "opt/ml/processing/input",
])
def test_input_local_path_outside_opt_ml_processing_is_refused(local_path):
    message = refused(request(ProcessingInputs=[s3_input(local_path=local_path)]))
    assert "job.json: ProcessingInputs[0].S3Input.LocalPath:" in message
    assert "/opt/ml/processing/" in message


@pytest.mark.parametrize("local_path", [
    "/opt/ml/processing/../config",
    "/opt/ml/processing/a/../../config",
    "/opt/ml/processing/..",
    "/opt/ml/processing/a/../b",
])
def test_local_path_with_dot_dot_is_refused(local_path):
    message = refused(request(ProcessingInputs=[s3_input(local_path=local_path)]))
    assert "ProcessingInputs[0].S3Input.LocalPath" in message


@pytest.mark.parametrize("local_path", ["/opt/ml/processing/", "/opt/ml/processing", "/opt/ml/processing//"])
def test_local_path_equal_to_opt_ml_processing_is_refused(local_path):
    assert "ProcessingInputs[0].S3Input.LocalPath" in refused(
        request(ProcessingInputs=[s3_input(local_path=local_path)]))


def test_output_local_path_outside_opt_ml_processing_is_refused():
    message = refused(request(ProcessingOutputConfig={"Outputs": [s3_output(local_path="/etc")]}))
    assert "ProcessingOutputConfig.Outputs[0].S3Output.LocalPath" in message


def test_local_path_error_names_the_index_of_the_input():
    document = request(ProcessingInputs=[s3_input("a", "/opt/ml/processing/a"),
                                         s3_input("b", "/opt/ml/processing/../b")])
    assert "ProcessingInputs[1].S3Input.LocalPath" in refused(document)


# -- AppSpecification ---------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["ContainerEntrypoint", "ContainerArguments"])
def test_container_word_list_of_zero_items_is_refused(field):
    assert f"AppSpecification.{field}" in refused(with_app(**{field: []}))


@pytest.mark.parametrize("field", ["ContainerEntrypoint", "ContainerArguments"])
def test_container_word_list_of_101_items_is_refused(field):
    assert f"AppSpecification.{field}" in refused(with_app(**{field: ["w"] * 101}))


@pytest.mark.parametrize("field", ["ContainerEntrypoint", "ContainerArguments"])
def test_container_word_lists_of_1_and_100_items_are_accepted(field):
    assert getattr(parse_job(with_app(**{field: ["w"]}), SOURCE).AppSpecification, field) == ["w"]
    assert len(getattr(parse_job(with_app(**{field: ["w"] * 100}), SOURCE).AppSpecification, field)) == 100


def test_container_word_longer_than_256_characters_is_refused():
    assert "AppSpecification.ContainerArguments[1]" in refused(with_app(ContainerArguments=["ok", "x" * 257]))


def test_image_uri_is_required():
    document = request()
    document["AppSpecification"] = {}
    assert "AppSpecification.ImageUri" in refused(document)


# -- enums --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("S3DataType", "S3Object"),
    ("S3InputMode", "Stream"),
    ("S3DataDistributionType", "Sharded"),
    ("S3CompressionType", "Zip"),
    ("S3CompressionType", "none"),
])
def test_s3_input_enum_outside_the_api_values_is_refused(field, value):
    message = refused(request(ProcessingInputs=[s3_input(**{field: value})]))
    assert f"ProcessingInputs[0].S3Input.{field}" in message


def test_s3_upload_mode_outside_the_api_values_is_refused():
    message = refused(request(ProcessingOutputConfig={"Outputs": [s3_output(S3UploadMode="AtEnd")]}))
    assert "ProcessingOutputConfig.Outputs[0].S3Output.S3UploadMode" in message


@pytest.mark.parametrize("field, value", [
    ("S3DataType", "ManifestFile"),
    ("S3InputMode", "File"),
    ("S3DataDistributionType", "ShardedByS3Key"),
    ("S3CompressionType", "Gzip"),
])
def test_s3_input_enum_values_of_the_api_are_accepted(field, value):
    job = parse_job(request(ProcessingInputs=[s3_input(**{field: value})]), SOURCE)
    assert getattr(job.inputs[0].S3Input, field) == value


def test_s3_uri_must_be_s3_or_https():
    message = refused(request(ProcessingInputs=[s3_input(S3Uri="ftp://bucket/raw")]))
    assert "ProcessingInputs[0].S3Input.S3Uri" in message


# -- unknown keys -------------------------------------------------------------------------------

def test_unknown_top_level_key_is_refused_naming_it():
    assert "job.json: ProcessingJobname: unknown field" in refused(request(ProcessingJobname="typo"))


def test_unknown_nested_key_is_refused_naming_its_path():
    document = request()
    document["ProcessingInputs"][0]["S3Input"]["LocalPat"] = "/opt/ml/processing/x"
    assert "job.json: ProcessingInputs[0].S3Input.LocalPat: unknown field" in refused(document)


def test_unknown_key_in_cluster_config_is_refused_naming_its_path():
    message = refused(with_cluster(InstanceCounts=2))
    assert "ProcessingResources.ClusterConfig.InstanceCounts: unknown field" in message


def test_error_message_names_the_field_path_of_a_bad_value():
    document = request()
    document["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/data"
    assert refused(document).startswith("job.json: ProcessingInputs[0].S3Input.LocalPath: ")


def test_every_problem_gets_its_own_line():
    document = with_cluster(InstanceCount=0)
    document["Bogus"] = 1
    lines = refused(document).splitlines()
    assert any("InstanceCount" in line for line in lines)
    assert any("Bogus: unknown field" in line for line in lines)
    assert all(line.startswith("job.json: ") for line in lines)


def test_request_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidInput, match="job.json"):
        parse_job([request()], SOURCE)


# -- what fleet does not support ----------------------------------------------------------------

def test_dataset_definition_input_is_refused_as_unsupported():
    document = request(ProcessingInputs=[{"InputName": "athena", "DatasetDefinition": {
        "AthenaDatasetDefinition": {"Catalog": "c", "Database": "d", "QueryString": "select 1",
                                    "OutputS3Uri": "s3://b/o", "OutputFormat": "PARQUET"},
        "LocalPath": "/opt/ml/processing/athena"}}])
    message = refused(document)
    assert "ProcessingInputs[0]" in message
    assert "DatasetDefinition" in message and "not supported" in message


def test_feature_store_output_is_refused_as_unsupported():
    document = request(ProcessingOutputConfig={"Outputs": [
        {"OutputName": "features", "FeatureStoreOutput": {"FeatureGroupName": "fg"}}]})
    message = refused(document)
    assert "ProcessingOutputConfig.Outputs[0]" in message
    assert "FeatureStoreOutput" in message and "not supported" in message


def test_app_managed_input_is_refused_as_unsupported():
    document = request(ProcessingInputs=[{**s3_input(), "AppManaged": True}])
    message = refused(document)
    assert "AppManaged" in message and "not supported" in message


def test_app_managed_output_is_refused_as_unsupported():
    document = request(ProcessingOutputConfig={"Outputs": [{**s3_output(), "AppManaged": True}]})
    message = refused(document)
    assert "AppManaged" in message and "not supported" in message


def test_input_without_a_source_is_refused():
    assert "S3Input" in refused(request(ProcessingInputs=[{"InputName": "nothing"}]))


# -- RoleArn ------------------------------------------------------------------------------------

def test_role_arn_is_optional():
    document = request()
    assert "RoleArn" not in document
    assert parse_job(document, SOURCE).RoleArn is None


def test_role_arn_when_given_must_match_the_api_pattern():
    assert "RoleArn" in refused(request(RoleArn="not-an-arn-but-long-enough"))
    job = parse_job(request(RoleArn="arn:aws:iam::123456789012:role/SageMakerRole"), SOURCE)
    assert job.RoleArn == "arn:aws:iam::123456789012:role/SageMakerRole"


# -- files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_yaml_job_file_loads_the_same_as_json(tmp_path: Path, suffix):
    document = request(Environment={"LOG_LEVEL": "info"}, RoleArn="arn:aws:iam::123456789012:role/R")
    json_file = tmp_path / "job.json"
    json_file.write_text(json.dumps(document))
    yaml_file = tmp_path / f"job{suffix}"
    yaml_file.write_text(yaml.safe_dump(document))
    assert load_job(yaml_file) == load_job(json_file)


def test_malformed_json_names_the_file_and_the_line(tmp_path: Path):
    job_file = tmp_path / "job.json"
    text = json.dumps(request(), indent=2).splitlines()
    text.insert(3, '  "Oops": ,')  # line 4
    job_file.write_text("\n".join(text))
    with pytest.raises(InvalidInput) as caught:
        load_job(job_file)
    assert str(job_file) in caught.value.message
    assert "line 4" in caught.value.message
    assert caught.value.exit_code == 2


def test_malformed_yaml_names_the_file(tmp_path: Path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text("ProcessingJobName: [unclosed\n")
    with pytest.raises(InvalidInput) as caught:
        load_job(job_file)
    assert str(job_file) in caught.value.message


def test_missing_job_file_is_invalid_input_naming_it(tmp_path: Path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidInput) as caught:
        load_job(missing)
    assert str(missing) in caught.value.message


def test_validation_errors_from_a_file_name_that_file(tmp_path: Path):
    job_file = tmp_path / "my-job.json"
    job_file.write_text(json.dumps(with_cluster(InstanceCount=0)))
    with pytest.raises(InvalidInput) as caught:
        load_job(job_file)
    assert caught.value.message.startswith(f"{job_file}: ProcessingResources.ClusterConfig.InstanceCount")


# -- --name -------------------------------------------------------------------------------------

def test_name_override_replaces_processing_job_name(tmp_path: Path):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(request()))
    assert load_job(job_file, name="rerun-2").ProcessingJobName == "rerun-2"


def test_name_override_supplies_a_missing_processing_job_name():
    document = request()
    del document["ProcessingJobName"]
    assert parse_job(document, SOURCE, name="given").ProcessingJobName == "given"


def test_name_override_is_validated_like_the_field():
    assert "ProcessingJobName" in refused_with_name("bad_name")


def refused_with_name(name: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_job(request(), SOURCE, name=name)
    return caught.value.message


def test_name_override_does_not_change_the_callers_document():
    document = request()
    before = copy.deepcopy(document)
    parse_job(document, SOURCE, name="other")
    assert document == before


# -- fields accepted for compatibility that mean nothing on-prem ---------------------------------

def test_ignored_fields_lists_every_field_that_has_no_effect():
    document = request(
        RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
        Tags=[{"Key": "team", "Value": "ml"}],
        ExperimentConfig={"ExperimentName": "exp"},
        NetworkConfig={"VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}},
    )
    document["ProcessingOutputConfig"]["KmsKeyId"] = "alias/out"
    document["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] = "alias/vol"
    notices = ignored_fields(parse_job(document, SOURCE))
    fields = [notice.split(":", 1)[0] for notice in notices]
    assert fields == [
        "RoleArn",
        "Tags",
        "ExperimentConfig",
        "NetworkConfig.VpcConfig",
        "ProcessingOutputConfig.KmsKeyId",
        "ProcessingResources.ClusterConfig.VolumeKmsKeyId",
        "ProcessingResources.ClusterConfig.InstanceType",
    ]
    assert all("ignored" in notice for notice in notices)


def test_instance_type_notice_is_always_given_and_names_the_type():
    notices = ignored_fields(parse_job(request(), SOURCE))
    assert len(notices) == 1
    assert notices[0].startswith("ProcessingResources.ClusterConfig.InstanceType: ignored")
    assert "ml.m5.xlarge" in notices[0]


# -- the newest API: ClusterConfig.InstancePreferences (botocore's service model) -----------------

def with_preferences(*preferences: dict, **fields) -> dict:
    document = request()
    cluster = document["ProcessingResources"]["ClusterConfig"]
    del cluster["InstanceType"]
    cluster.pop("InstanceCount")
    cluster.update(fields)
    cluster["InstancePreferences"] = list(preferences)
    return document


def test_instance_preferences_without_instance_type_are_accepted_with_one_count_for_the_job():
    # What SDK v3's instance_preferences= sends: no InstanceType, ClusterConfig.InstanceCount for all.
    job = parse_job(with_preferences({"InstanceType": "ml.g5.xlarge"}, {"InstanceType": "ml.g4dn.xlarge"},
                                     InstanceCount=3), SOURCE)
    assert job.instance_count == 3
    assert job.instance_type == "ml.g5.xlarge"


def test_instance_preferences_with_a_count_each_run_on_the_first_preferences_count():
    job = parse_job(with_preferences({"InstanceType": "ml.g5.xlarge", "InstanceCount": 2},
                                     {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 4}), SOURCE)
    assert job.instance_count == 2


def test_instance_preferences_are_ignored_with_a_notice_naming_them():
    job = parse_job(with_preferences({"InstanceType": "ml.g5.xlarge"}, {"InstanceType": "ml.g4dn.xlarge"},
                                     InstanceCount=2), SOURCE)
    notices = ignored_fields(job)
    assert len(notices) == 1
    assert notices[0].startswith("ProcessingResources.ClusterConfig.InstancePreferences: ignored")
    assert "ml.g5.xlarge" in notices[0] and "ml.g4dn.xlarge" in notices[0]


@pytest.mark.parametrize("preferences, fields, words", [
    ([{"InstanceType": "ml.g5.xlarge"}], {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1},
     "mutually exclusive with InstanceType"),
    ([{"InstanceType": "ml.g5.xlarge", "InstanceCount": 2}], {"InstanceCount": 2}, "both"),
    ([{"InstanceType": "ml.g5.xlarge", "InstanceCount": 2}, {"InstanceType": "ml.g4dn.xlarge"}], {},
     "every preference or on none"),
    ([{"InstanceType": "ml.g5.xlarge"}], {}, "InstanceCount"),
    ([{"InstanceType": "ml.g5.xlarge"}, {"InstanceType": "ml.g5.xlarge"}], {"InstanceCount": 1},
     "appears twice"),
    ([], {"InstanceCount": 1}, "at least 1"),
    ([{"InstanceType": f"ml.m5.{n}xlarge"} for n in range(2, 8)], {"InstanceCount": 1}, "at most 5"),
    ([{"InstanceCount": 1}], {}, "InstanceType"),
    ([{"InstanceType": "ml.g5.xlarge", "InstanceCount": 0}], {}, "InstanceCount"),
])
def test_instance_preferences_follow_the_api_rules(preferences, fields, words):
    message = refused(with_preferences(*preferences, **fields))
    assert "ProcessingResources.ClusterConfig" in message
    assert words in message


def test_instance_count_defaults_to_1_as_the_api_documents():
    document = request()
    del document["ProcessingResources"]["ClusterConfig"]["InstanceCount"]
    assert parse_job(document, SOURCE).instance_count == 1


def test_neither_instance_type_nor_instance_preferences_is_refused():
    document = request()
    del document["ProcessingResources"]["ClusterConfig"]["InstanceType"]
    assert "one of InstanceType or InstancePreferences" in refused(document)


@pytest.mark.parametrize("field, value", [("SelectedInstanceType", "ml.g5.xlarge"), ("SelectedInstanceCount", 2)])
def test_read_only_selected_instance_fields_are_refused_saying_why(field, value):
    message = refused(with_cluster(**{field: value}))
    assert f"ProcessingResources.ClusterConfig.{field}: read-only" in message


# -- messages: S3Uri says which forms are allowed, not a regex ------------------------------------

@pytest.mark.parametrize("uri", ["ftp://bucket/raw", "bucket/raw", "file://relative/path", "S3://bucket/x"])
def test_a_bad_s3_uri_names_the_allowed_forms_not_a_regex(uri):
    message = refused(request(ProcessingInputs=[s3_input(S3Uri=uri)]))
    assert "ProcessingInputs[0].S3Input.S3Uri" in message
    assert "pattern" not in message and "(https|s3)" not in message
    for form in ("s3://bucket/prefix", "https://bucket.s3.region.amazonaws.com/", "https://s3.region.amazonaws.com/bucket/",
                 "file:///"):
        assert form in message
    assert repr(uri) in message
