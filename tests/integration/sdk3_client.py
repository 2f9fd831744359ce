"""A SageMaker SDK v3 user's program (sagemaker-core 2.x: sagemaker.core.processing,
sagemaker.core.resources), run by tests/integration/test_serve_sdk3.py in .venv-sdk3's
Python (v3 cannot share a virtualenv with v2). Its environment is the user's shell: serve's
export lines and the test S3; nothing in the code names an endpoint, a session or a bucket.

    python sdk3_client.py SCENARIO IMAGE ROLE NAME

Prints what the user sees (the SDK's log lines), then one line `RESULT {json}`: the scenario's
findings and every API call made (service, operation, endpoint). Every socket this process
opens must go to loopback: anything else is refused and listed in the result.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path

REFUSED: list[str] = []
CALLS: list[list[str]] = []


def _guard() -> None:
    original = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            REFUSED.append(str(address))
            raise OSError(f"test guard: connection to {address} refused (loopback only)")
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]

    from botocore.client import BaseClient
    make_api_call = BaseClient._make_api_call

    def record(client, operation_name, api_params):
        CALLS.append([client.meta.service_model.service_name, operation_name, client.meta.endpoint_url])
        return make_api_call(client, operation_name, api_params)

    BaseClient._make_api_call = record  # type: ignore[method-assign]


def script_processor(image: str, role: str, name: str) -> dict:
    from sagemaker.core.processing import ScriptProcessor

    code = Path.cwd() / "script.py"  # the test's tmp_path
    code.write_text("import json\n"
                    "host = json.load(open('/opt/ml/config/resourceconfig.json'))['current_host']\n"
                    f"print('zq-v3-{name}', host, flush=True)\n")
    processor = ScriptProcessor(role=role, image_uri=image, command=["python3"], instance_count=3,
                                instance_type="ml.m5.xlarge", base_job_name=name)
    processor.run(code=str(code), wait=True, logs=True)
    job = processor.latest_job
    job.refresh()
    return {"name": job.processing_job_name, "status": job.processing_job_status,
            "bucket": processor.sagemaker_session.default_bucket(),
            "code": [i.s3_input.s3_uri for i in job.processing_inputs if i.input_name == "code"]}


def resources(image: str, role: str, name: str) -> dict:
    from sagemaker.core.resources import ProcessingJob
    from sagemaker.core.shapes import AppSpecification, ProcessingClusterConfig, ProcessingResources

    def create(job_name: str, script: str) -> ProcessingJob:
        return ProcessingJob.create(
            processing_job_name=job_name, role_arn=role,
            processing_resources=ProcessingResources(cluster_config=ProcessingClusterConfig(
                instance_count=3, instance_type="ml.m5.xlarge", volume_size_in_gb=1)),
            app_specification=AppSpecification(image_uri=image, container_entrypoint=["python3", "-c", script]))

    found: dict = {}
    done = create(f"{name}-done", "import json; print('zq-v3-res', json.load("
                                  "open('/opt/ml/config/resourceconfig.json'))['current_host'], flush=True)")
    done.wait(logs=True, poll=2)
    found["done"] = done.processing_job_status
    running = create(f"{name}-stop", "import time\nwhile True: time.sleep(1)")
    for _ in range(600):
        running.refresh()
        if running.processing_job_status == "InProgress" and running.processing_start_time:
            break
        time.sleep(0.2)
    running.stop()
    running.refresh()
    found["right_after_stop"] = running.processing_job_status
    running.wait(poll=2)
    found["stopped"] = running.processing_job_status
    found["all"] = sorted(job.processing_job_name for job in ProcessingJob.get_all(name_contains=name))
    return found


def main() -> None:
    scenario, image, role, name = sys.argv[1:5]
    # v3 logs through `logging` and leaves its configuration to the program (its wait(logs=True)
    # lines are INFO records): a user's program that wants them says so, as this one does.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    _guard()
    found = {"script-processor": script_processor, "resources": resources}[scenario](image, role, name)
    print("RESULT " + json.dumps({**found, "calls": CALLS, "refused": REFUSED}, default=str), flush=True)


if __name__ == "__main__":
    main()
