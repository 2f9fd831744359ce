"""The SDK config file `fleet serve` writes for SAGEMAKER_USER_CONFIG_OVERRIDE (issue 21, point
1): its mode, its content as the SageMaker SDK's own loader reads it, an atomic rewrite, and a
symlink in its place refused (never followed)."""

from __future__ import annotations

import os
import threading

import pytest

from fleet.errors import InvalidInput
from fleet.serve.sdkconfig import FILE_NAME, check_bucket, default_bucket_name, exports, write_sdk_config


def _loaded(path) -> dict:
    """What the SDK (v2, sagemaker.config) makes of the file, as a user exporting it gets it."""
    from sagemaker.config.config import load_sagemaker_config
    return load_sagemaker_config([str(path)])["SageMaker"]["PythonSDK"]["Modules"]


def test_the_file_is_0600_and_gives_the_sdk_its_bucket_and_telemetry_off(tmp_path):
    os.umask(0o022)
    path = write_sdk_config(tmp_path / "home", "team-bucket")
    assert path == tmp_path / "home" / FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    modules = _loaded(path)
    assert modules["Session"]["DefaultS3Bucket"] == "team-bucket"
    assert modules["TelemetryOptOut"] is True
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no temporary file left


def test_a_rewrite_replaces_the_file_whole_and_a_reader_sees_the_old_or_the_new(tmp_path):
    path = write_sdk_config(tmp_path, "bucket-old")
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(_loaded(path)["Session"]["DefaultS3Bucket"])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            write_sdk_config(tmp_path, f"bucket-{i % 2}")
    finally:
        stop.set()
        reader.join()
    assert seen <= {"bucket-old", "bucket-0", "bucket-1"}, seen
    assert _loaded(path)["Session"]["DefaultS3Bucket"] == "bucket-1"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_symlink_in_the_files_place_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.write_text("mine\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / FILE_NAME).symlink_to(target)
    with pytest.raises(InvalidInput) as raised:
        write_sdk_config(home, "team-bucket")
    assert str(home / FILE_NAME) in raised.value.message and "symbolic link" in raised.value.message
    assert target.read_text() == "mine\n"
    assert (home / FILE_NAME).is_symlink()
    # a dangling link too (it would create a file wherever it points)
    (home / FILE_NAME).unlink()
    (home / FILE_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidInput):
        write_sdk_config(home, "team-bucket")
    assert not (tmp_path / "elsewhere").exists()


def test_a_directory_in_the_files_place_is_refused(tmp_path):
    (tmp_path / FILE_NAME).mkdir()
    with pytest.raises(InvalidInput, match="not a regular file"):
        write_sdk_config(tmp_path, "team-bucket")


def test_an_unwritable_home_is_invalid_input_naming_it(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file, not a directory")
    with pytest.raises(InvalidInput) as raised:
        write_sdk_config(home, "team-bucket")
    assert str(home) in raised.value.message


def test_the_default_bucket_is_named_as_the_sdk_names_it():
    import inspect

    from sagemaker.session import generate_default_sagemaker_bucket_name  # its format, without its STS call
    assert '"sagemaker-{}-{}".format(region, account)' in inspect.getsource(generate_default_sagemaker_bucket_name)
    assert default_bucket_name("us-east-1", "000000000000") == "sagemaker-us-east-1-000000000000"


@pytest.mark.parametrize("bucket", ["ab", "Team", "team_bucket", "-team", "team-", "a" * 64, "te..am", "t m"])
def test_a_bucket_name_the_sdk_schema_refuses_is_invalid_input_naming_the_flag(bucket):
    with pytest.raises(InvalidInput) as raised:
        check_bucket(bucket, "--default-bucket")
    assert raised.value.message.startswith(f"--default-bucket {bucket!r}")


def test_exports_quote_values_for_the_shell(tmp_path):
    lines = exports("http://127.0.0.1:8180", tmp_path / "a b$c")
    assert lines[0] == "export AWS_ENDPOINT_URL_SAGEMAKER=http://127.0.0.1:8180"
    assert lines[-1] == f"export SAGEMAKER_USER_CONFIG_OVERRIDE='{tmp_path}/a b$c'"
    assert [line.split("=")[0] for line in lines] == [
        "export AWS_ENDPOINT_URL_SAGEMAKER", "export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
        "export AWS_ENDPOINT_URL_STS", "export SAGEMAKER_USER_CONFIG_OVERRIDE"]
