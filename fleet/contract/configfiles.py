"""/opt/ml/config/resourceconfig.json and processingjobconfig.json, as SageMaker writes them."""

from __future__ import annotations

import json
from typing import Any

from fleet.contract.job import ProcessingJob

# The account of every ARN fleet makes (jobs, log groups) and of STS GetCallerIdentity in
# `fleet serve`, unless FLEET_ACCOUNT_ID says another: no AWS account has it.
DEFAULT_ACCOUNT = "000000000000"


def job_arn(name: str, region: str, account: str) -> str:
    # SageMaker lower-cases the job name in its ARNs.
    return f"arn:aws:sagemaker:{region}:{account}:processing-job/{name.lower()}"


def resource_config(current_host: str, hosts: list[str]) -> dict[str, Any]:
    return {"current_host": current_host, "hosts": list(hosts)}


def processing_job_config(job: ProcessingJob, arn: str) -> dict[str, Any]:
    """The request with SageMaker's defaults filled in, shaped like AWS's example file."""
    app = job.AppSpecification
    cluster = job.ProcessingResources.ClusterConfig
    config: dict[str, Any] = {
        "ProcessingJobArn": arn,
        "ProcessingJobName": job.ProcessingJobName,
        "AppSpecification": {
            "ImageUri": app.ImageUri,
            "ContainerEntrypoint": app.ContainerEntrypoint,
            "ContainerArguments": app.ContainerArguments,
        },
        "Environment": dict(job.Environment or {}),
        "ProcessingInputs": [
            {
                "InputName": i.InputName,
                "S3Input": {
                    "LocalPath": i.S3Input.LocalPath,
                    "S3Uri": i.S3Input.S3Uri,
                    "S3DataDistributionType": i.S3Input.S3DataDistributionType,
                    "S3DataType": i.S3Input.S3DataType,
                    "S3InputMode": i.S3Input.S3InputMode,
                    "S3CompressionType": i.S3Input.S3CompressionType,
                    "S3DownloadMode": "StartOfJob",
                },
            }
            for i in job.inputs
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": o.OutputName,
                    "S3Output": {
                        "LocalPath": o.S3Output.LocalPath,
                        "S3Uri": o.S3Output.S3Uri,
                        "S3UploadMode": o.S3Output.S3UploadMode,
                    },
                }
                for o in job.outputs
            ],
            "KmsKeyId": job.ProcessingOutputConfig.KmsKeyId if job.ProcessingOutputConfig else None,
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": job.instance_count,  # the count and type the job runs with
                "InstanceType": job.instance_type,  # (InstancePreferences: the first)
                "VolumeSizeInGB": cluster.VolumeSizeInGB,
                "VolumeKmsKeyId": cluster.VolumeKmsKeyId,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": job.max_runtime},
    }
    if job.RoleArn is not None:
        config["RoleArn"] = job.RoleArn
    if job.NetworkConfig is not None:
        config["NetworkConfig"] = job.NetworkConfig.model_dump(exclude_none=True)
    return config


def encode(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()
