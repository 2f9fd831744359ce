"""What a shell user exports to point unchanged SageMaker SDK code at `fleet serve`, and the
SDK config file serve writes for it.

`sagemaker.Session()` with no arguments names its default bucket `sagemaker-REGION-ACCOUNT`,
asking STS for ACCOUNT at an explicit `https://sts.REGION.amazonaws.com` (SDK v2 2.257,
sagemaker-core under v3), which outranks AWS_ENDPOINT_URL_STS: without a bucket from
elsewhere the SDK calls AWS. Its config file's
`SageMaker.PythonSDK.Modules.Session.DefaultS3Bucket` is such an elsewhere: with it the SDK
makes no STS call and only checks (or creates) that bucket in the user's S3. The file is
found through SAGEMAKER_USER_CONFIG_OVERRIDE, which serve prints with the endpoints.

The SDK's loader (sagemaker/config/config.py) reads two files, the admin's
(SAGEMAKER_ADMIN_CONFIG_OVERRIDE, default /etc/xdg/sagemaker/config.yaml on Linux) and then
the user's (SAGEMAKER_USER_CONFIG_OVERRIDE, default ~/.config/sagemaker/config.yaml), and
merges them key by key, the user's file winning: exporting the override replaces the user's
own file (MERGE_HINT says what to do then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import stat
import tempfile
from pathlib import Path

import yaml

from fleet.errors import InvalidInput

log = logging.getLogger(__name__)

FILE_NAME = "sagemaker-sdk-config.yaml"
# The SDK's own schema for a bucket name (sagemaker/config/config_schema.py, "s3Bucket").
_BUCKET = re.compile(r"[a-z0-9][.\-a-z0-9]{1,61}[a-z0-9]")
MERGE_HINT = ("the SDK reads the admin file (SAGEMAKER_ADMIN_CONFIG_OVERRIDE, default "
              "/etc/xdg/sagemaker/config.yaml) then the user file (SAGEMAKER_USER_CONFIG_OVERRIDE, "
              "default ~/.config/sagemaker/config.yaml), the user's keys winning; the export above "
              "replaces ~/.config/sagemaker/config.yaml: if you have one, add the DefaultS3Bucket "
              "and TelemetryOptOut keys to it instead of exporting SAGEMAKER_USER_CONFIG_OVERRIDE, "
              "or (without an admin file) export SAGEMAKER_ADMIN_CONFIG_OVERRIDE=~/.config/sagemaker/config.yaml "
              "so that it is read first and this one merged over it")


def default_bucket_name(region: str, account: str) -> str:
    """The bucket `sagemaker.Session()` would name itself: sagemaker-REGION-ACCOUNT."""
    return f"sagemaker-{region}-{account}"


def check_bucket(bucket: str, where: str) -> str:
    """`bucket` if the SDK's config schema accepts it, else InvalidInput naming `where`."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidInput(f"{where} {bucket!r}: an S3 bucket name is 3-63 characters of a-z, 0-9, '.' and '-', "
                           f"beginning and ending with a letter or digit")
    return bucket


def sdk_config(bucket: str) -> dict:
    """The SDK config: the default bucket, and telemetry off (the SDK would otherwise send each
    call's name to an amazonaws.com address: jobs served here never touch SageMaker)."""
    return {"SchemaVersion": "1.0",
            "SageMaker": {"PythonSDK": {"Modules": {"Session": {"DefaultS3Bucket": bucket},
                                                    "TelemetryOptOut": True}}}}


def write_sdk_config(directory: Path, bucket: str) -> Path:
    """Write the SDK config file into `directory` (FLEET_HOME), 0600, atomically (a new file
    renamed over the old: a reader sees the old file or the new, whole), and answer its path.

    An existing symlink at that path is refused (InvalidInput): the file is serve's own, and a
    link there points somewhere the user did not mean serve to write; the rename would replace
    the link itself, never follow it, so a link made after the check changes nothing either.
    """
    path = directory / FILE_NAME
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot write the SDK config file: {exc.strerror}") from exc
    if stat.S_ISLNK(mode):
        raise InvalidInput(f"{path} is a symbolic link; fleet serve writes its SDK config file there "
                           f"itself: remove the link")
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{path} is not a regular file; fleet serve writes its SDK config file there: "
                           f"remove it")
    text = "# written by fleet serve (SAGEMAKER_USER_CONFIG_OVERRIDE); rewritten at each start\n" + yaml.safe_dump(
        sdk_config(bucket), sort_keys=False)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # mkstemp: a new name (O_EXCL, so never an existing file or link), mode 0600
        descriptor, temporary = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=directory)
    except OSError as exc:
        raise InvalidInput(f"{directory}: cannot write the SDK config file: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InvalidInput(f"{path}: cannot write the SDK config file: {exc.strerror}") from exc
    return path


def exports(url: str, config_file: Path) -> list[str]:
    """The `export NAME=VALUE` lines (values shell-quoted) a user runs to reach serve at `url`."""
    variables = {"AWS_ENDPOINT_URL_SAGEMAKER": url, "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": url,
                 "AWS_ENDPOINT_URL_STS": url, "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config_file)}
    return [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
