"""CreateProcessingJob request models, with the API's own field names and limits.

Parsed once at the edge (`load_job`); the rest of fleet takes these objects.
The limits are the ones botocore's SageMaker model states (../shared/reference/api-shapes.md).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.contract.environment import value_problem
from fleet.errors import InvalidInput

JOB_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
# The API's pattern, plus fleet's extension for data on the controller: file:///abs/path.
S3_URI_PATTERN = r"^((https|s3)://([^/]+)/?(.*)|file:///.*)$"
ENV_KEY_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KMS_PATTERN = r"^[a-zA-Z0-9:/_-]*$"
ROLE_ARN_PATTERN = r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$"
PROCESSING_ROOT = "/opt/ml/processing/"

# What a message says instead of the pattern: the forms fleet reads (fleet/data/locations.py).
S3_URI_FORMS = ("s3://bucket/prefix, https://bucket.s3.region.amazonaws.com/prefix, "
                "https://s3.region.amazonaws.com/bucket/prefix, or (fleet's extension) file:///absolute/path")


def _check_s3_uri(value: str) -> str:
    if not re.fullmatch(S3_URI_PATTERN, value):
        raise ValueError(f"must be {S3_URI_FORMS}; got {value!r}")
    return value


S3UriStr = Annotated[str, Field(max_length=1024), AfterValidator(_check_s3_uri)]
KmsKeyIdStr = Annotated[str, Field(max_length=2048, pattern=KMS_PATTERN)]
ContainerWord = Annotated[str, Field(max_length=256)]


class _Shape(BaseModel):
    """A structure of the API: unknown keys are errors, as the API's validation makes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_local_path(value: str) -> str:
    normalized = posixpath.normpath(value)
    if not value.startswith(PROCESSING_ROOT) or normalized + "/" == PROCESSING_ROOT:
        raise ValueError(f"must be a directory under {PROCESSING_ROOT}, got {value!r}")
    if normalized != value.rstrip("/") or "/../" in value + "/":
        raise ValueError(f"must be a normalized path (no '..', '.', or '//'), got {value!r}")
    if ":" in value or "," in value:
        raise ValueError(f"must not contain ':' or ',' (Docker volume syntax), got {value!r}")
    return value


LocalPathStr = Annotated[str, Field(max_length=256), AfterValidator(_check_local_path)]


class S3InputSpec(_Shape):
    S3Uri: S3UriStr
    LocalPath: LocalPathStr
    S3DataType: Literal["ManifestFile", "S3Prefix"]
    S3InputMode: Literal["Pipe", "File"] = "File"
    S3DataDistributionType: Literal["FullyReplicated", "ShardedByS3Key"] = "FullyReplicated"
    S3CompressionType: Literal["None", "Gzip"] = "None"


class ProcessingInput(_Shape):
    InputName: str
    AppManaged: bool | None = None
    if TYPE_CHECKING:
        S3Input: S3InputSpec  # optional in the API, but _one_source refuses a ProcessingInput without it
    else:
        S3Input: S3InputSpec | None = None
    DatasetDefinition: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ProcessingInput:
        if self.AppManaged:
            raise ValueError("AppManaged inputs are not supported by fleet")
        if self.DatasetDefinition is not None:
            raise ValueError(
                "DatasetDefinition (Athena/Redshift) is not supported by fleet; use S3Input")
        if self.S3Input is None:
            raise ValueError("S3Input is required")
        return self


class S3OutputSpec(_Shape):
    S3Uri: S3UriStr
    LocalPath: LocalPathStr
    S3UploadMode: Literal["Continuous", "EndOfJob"]


class ProcessingOutput(_Shape):
    OutputName: str
    if TYPE_CHECKING:
        S3Output: S3OutputSpec  # optional in the API, but _one_destination refuses an output without it
    else:
        S3Output: S3OutputSpec | None = None
    FeatureStoreOutput: dict[str, Any] | None = None
    AppManaged: bool | None = None

    @model_validator(mode="after")
    def _one_destination(self) -> ProcessingOutput:
        if self.AppManaged:
            raise ValueError("AppManaged outputs are not supported by fleet")
        if self.FeatureStoreOutput is not None:
            raise ValueError("FeatureStoreOutput is not supported by fleet; use S3Output")
        if self.S3Output is None:
            raise ValueError("S3Output is required")
        return self


class OutputConfigSpec(_Shape):
    Outputs: Annotated[list[ProcessingOutput], Field(max_length=10)]
    KmsKeyId: KmsKeyIdStr | None = None

    @field_validator("Outputs")
    @classmethod
    def _unique_names(cls, outputs: list[ProcessingOutput]) -> list[ProcessingOutput]:
        names = [o.OutputName for o in outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"OutputName must be unique; repeated: {', '.join(dup)}")
        return outputs


InstanceCountInt = Annotated[int, Field(ge=1, le=100, strict=True)]
InstanceTypeStr = Annotated[str, Field(pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9-]+$")]


class InstancePreference(_Shape):
    InstanceType: InstanceTypeStr
    InstanceCount: InstanceCountInt | None = None


class ClusterConfigSpec(_Shape):
    """The newest API (botocore's service model, newer than api-shapes.md): InstanceType and
    InstanceCount are optional, InstancePreferences (1..5 candidate types, in priority order)
    is the alternative to InstanceType. The count rules are the API's own."""

    InstanceCount: InstanceCountInt | None = None
    InstanceType: InstanceTypeStr | None = None
    VolumeSizeInGB: Annotated[int, Field(ge=1, le=16384, strict=True)]
    VolumeKmsKeyId: KmsKeyIdStr | None = None
    InstancePreferences: Annotated[list[InstancePreference], Field(min_length=1, max_length=5)] | None = None
    # In the request's shape too, but read-only: DescribeProcessingJob returns them and
    # CreateProcessingJob refuses them (the model's documentation says so); refused below.
    SelectedInstanceType: Any = None
    SelectedInstanceCount: Any = None

    @model_validator(mode="before")
    @classmethod
    def _default_count(cls, data: Any) -> Any:
        # "The default value is 1" (the model's InstanceCount), unless the preferences carry the count.
        if isinstance(data, dict) and data.get("InstanceCount") is None and not data.get("InstancePreferences"):
            return {**data, "InstanceCount": 1}
        return data

    @field_validator("SelectedInstanceType", "SelectedInstanceCount")
    @classmethod
    def _read_only(cls, value: Any) -> Any:
        if value is None:
            return value
        raise ValueError("read-only (DescribeProcessingJob returns it once SageMaker picked from "
                         "InstancePreferences); CreateProcessingJob does not accept it")

    @model_validator(mode="after")
    def _instance_rules(self) -> ClusterConfigSpec:
        preferences = self.InstancePreferences or []
        if not preferences:
            if self.InstanceType is None:
                raise ValueError("one of InstanceType or InstancePreferences is required")
            return self
        if self.InstanceType is not None:
            raise ValueError("InstancePreferences is mutually exclusive with InstanceType; give one of them")
        types = [p.InstanceType for p in preferences]
        twice = sorted({t for t in types if types.count(t) > 1})
        if twice:
            raise ValueError(f"InstancePreferences: {twice[0]} appears twice; each instance type at most once")
        counted = [p.InstanceCount is not None for p in preferences]
        if any(counted) and not all(counted):
            raise ValueError("InstancePreferences: set InstanceCount on every preference or on none")
        if all(counted) and self.InstanceCount is not None:
            raise ValueError("InstanceCount is set both in ClusterConfig and in InstancePreferences; "
                             "give it in one place")
        if not any(counted) and self.InstanceCount is None:
            raise ValueError("InstanceCount is required: in ClusterConfig (for every preference) "
                             "or on each of InstancePreferences")
        return self

    @property
    def count(self) -> int:
        """The hosts fleet runs on: InstanceCount, or the first preference's (on-prem, the
        first choice always has the capacity)."""
        if self.InstanceCount is not None:
            return self.InstanceCount
        first = (self.InstancePreferences or [])[0].InstanceCount
        assert first is not None  # _instance_rules
        return first

    @property
    def instance_type(self) -> str:
        """InstanceType, or the first of InstancePreferences."""
        return self.InstanceType or (self.InstancePreferences or [])[0].InstanceType


class ResourcesSpec(_Shape):
    ClusterConfig: ClusterConfigSpec


class StoppingSpec(_Shape):
    MaxRuntimeInSeconds: Annotated[int, Field(ge=1, le=777600, strict=True)]


class AppSpec(_Shape):
    # Docker would read a leading '-' as an option, and an image name holds no whitespace.
    ImageUri: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^-\s][^\s]*$")]
    ContainerEntrypoint: Annotated[list[ContainerWord], Field(min_length=1, max_length=100)] | None = None
    ContainerArguments: Annotated[list[ContainerWord], Field(min_length=1, max_length=100)] | None = None


class VpcSpec(_Shape):
    SecurityGroupIds: Annotated[list[Annotated[str, Field(max_length=32, pattern=r"^[-0-9a-zA-Z]+$")]],
                                Field(min_length=1, max_length=5)]
    Subnets: Annotated[list[Annotated[str, Field(max_length=32, pattern=r"^[-0-9a-zA-Z]+$")]],
                       Field(min_length=1, max_length=16)]


class NetworkSpec(_Shape):
    EnableInterContainerTrafficEncryption: bool | None = None
    EnableNetworkIsolation: bool | None = None
    VpcConfig: VpcSpec | None = None


class Tag(_Shape):
    Key: Annotated[str, Field(min_length=1, max_length=128)]
    Value: Annotated[str, Field(max_length=256)]


_ExperimentName = Annotated[str, Field(min_length=1, max_length=120,
                                       pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,119}$")]


class ExperimentSpec(_Shape):
    ExperimentName: _ExperimentName | None = None
    TrialName: _ExperimentName | None = None
    TrialComponentDisplayName: _ExperimentName | None = None
    RunName: _ExperimentName | None = None


class ProcessingJob(_Shape):
    """The CreateProcessingJob request, as `aws sagemaker create-processing-job` takes it."""

    ProcessingJobName: Annotated[str, Field(min_length=1, max_length=63, pattern=JOB_NAME_PATTERN)]
    ProcessingResources: ResourcesSpec
    AppSpecification: AppSpec
    ProcessingInputs: Annotated[list[ProcessingInput], Field(max_length=10)] | None = None
    ProcessingOutputConfig: OutputConfigSpec | None = None
    StoppingCondition: StoppingSpec | None = None
    Environment: dict[str, str] | None = None
    NetworkConfig: NetworkSpec | None = None
    RoleArn: Annotated[str, Field(min_length=20, max_length=2048, pattern=ROLE_ARN_PATTERN)] | None = None
    Tags: Annotated[list[Tag], Field(max_length=50)] | None = None
    ExperimentConfig: ExperimentSpec | None = None

    @field_validator("Environment")
    @classmethod
    def _environment(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        if env is None:
            return env
        if len(env) > 100:
            raise ValueError(f"at most 100 entries, got {len(env)}")
        for key, value in env.items():
            if len(key) > 256 or not ENV_KEY_PATTERN.fullmatch(key):
                raise ValueError(f"key {key!r} must match [a-zA-Z_][a-zA-Z0-9_]* (at most 256)")
            if len(value) > 256:
                raise ValueError(f"value of {key} is {len(value)} characters; at most 256")
            problem = value_problem(key, value)
            if problem:
                raise ValueError(f"the value of {key} {problem}")
        return env

    @field_validator("ProcessingInputs")
    @classmethod
    def _unique_input_names(cls, inputs: list[ProcessingInput] | None) -> list[ProcessingInput] | None:
        names = [i.InputName for i in inputs or []]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"InputName must be unique; repeated: {', '.join(dup)}")
        return inputs

    @model_validator(mode="after")
    def _distinct_local_paths(self) -> ProcessingJob:
        paths = [p.rstrip("/") for p in
                 [i.S3Input.LocalPath for i in self.inputs] + [o.S3Output.LocalPath for o in self.outputs]]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"two inputs or outputs share the LocalPath {dup[0]}")
        return self

    # Views the rest of fleet uses; the model keeps the API's own shape.
    @property
    def inputs(self) -> list[ProcessingInput]:
        return list(self.ProcessingInputs or [])

    @property
    def outputs(self) -> list[ProcessingOutput]:
        return list(self.ProcessingOutputConfig.Outputs) if self.ProcessingOutputConfig else []

    @property
    def instance_count(self) -> int:
        return self.ProcessingResources.ClusterConfig.count

    @property
    def instance_type(self) -> str:
        return self.ProcessingResources.ClusterConfig.instance_type

    @property
    def max_runtime(self) -> int:
        return self.StoppingCondition.MaxRuntimeInSeconds if self.StoppingCondition else DEFAULT_MAX_RUNTIME

    @property
    def network_isolation(self) -> bool:
        return bool(self.NetworkConfig and self.NetworkConfig.EnableNetworkIsolation)


# SageMaker's default when StoppingCondition is absent: one day.
DEFAULT_MAX_RUNTIME = 86400


def ignored_fields(job: ProcessingJob) -> list[str]:
    """Fields accepted for compatibility that mean nothing on-prem: one notice line each."""
    notices = []
    if job.RoleArn is not None:
        notices.append("RoleArn: ignored (fleet uses the controller's own AWS credentials)")
    if job.Tags:
        notices.append("Tags: ignored (no SageMaker resource to tag)")
    if job.ExperimentConfig is not None:
        notices.append("ExperimentConfig: ignored (no SageMaker Experiments on-prem)")
    if job.NetworkConfig and job.NetworkConfig.VpcConfig is not None:
        notices.append("NetworkConfig.VpcConfig: ignored (containers use the hosts' own network)")
    if job.NetworkConfig and job.NetworkConfig.EnableInterContainerTrafficEncryption:
        notices.append("NetworkConfig.EnableInterContainerTrafficEncryption: ignored "
                       "(traffic between hosts is not encrypted by fleet)")
    if job.ProcessingOutputConfig and job.ProcessingOutputConfig.KmsKeyId:
        notices.append("ProcessingOutputConfig.KmsKeyId: ignored (no KMS on-prem)")
    cluster = job.ProcessingResources.ClusterConfig
    if cluster.VolumeKmsKeyId:
        notices.append("ProcessingResources.ClusterConfig.VolumeKmsKeyId: ignored (no KMS on-prem)")
    if cluster.InstancePreferences:
        types = ", ".join(p.InstanceType for p in cluster.InstancePreferences)
        notices.append(f"ProcessingResources.ClusterConfig.InstancePreferences: ignored ({types}; the "
                       f"inventory's first {cluster.count} host(s) run the job)")
    else:
        notices.append(f"ProcessingResources.ClusterConfig.InstanceType: ignored "
                       f"({cluster.InstanceType}; the inventory's hosts run the job)")
    return notices


def describe_validation_error(source: str, error: ValidationError,
                              relocate: Callable[[tuple], tuple] | None = None) -> str:
    """One line per problem, each naming the file and the field path (`relocate` maps a
    path of the validated document to where the user wrote the value); the same line once."""
    lines: list[str] = []
    for problem in error.errors():
        path = ""
        for part in relocate(tuple(problem["loc"])) if relocate else problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        line = f"{source}: {path or '(top level)'}: {message}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def read_document(path: Path, what: str, *, yaml_only: bool = False) -> Any:
    """Read a JSON file, or YAML when the name ends in .yaml or .yml (or `yaml_only`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: no such {what} file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read {what}: {exc}") from exc
    try:
        if yaml_only or path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: malformed YAML: {exc}") from exc


def parse_job(document: Any, source: str, name: str | None = None) -> ProcessingJob:
    """Validate a request document; `name` (from --name) overrides ProcessingJobName."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{source}: must hold one CreateProcessingJob request (an object)")
    if name is not None:
        document = {**document, "ProcessingJobName": name}
    try:
        return ProcessingJob.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(source, exc)) from exc


def load_job(path: Path, name: str | None = None) -> ProcessingJob:
    return parse_job(read_document(path, "job"), str(path), name)
