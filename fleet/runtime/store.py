"""FLEET_HOME/jobs/NAME/{describe.json, logs/algo-k.log}: the records of jobs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

from fleet.contract.describe import now
from fleet.contract.job import JOB_NAME_PATTERN
from fleet.errors import InvalidInput, ResourceInUse


class JobStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.jobs = home / "jobs"

    def job_dir(self, name: str) -> Path:
        return self.jobs / name

    def create(self, record: dict[str, Any]) -> "JobRecord":
        """Claim the name (atomically: mkdir) and write the first record.

        A name that already has a record is SageMaker's ResourceInUse; the old record stays.
        """
        name = record["ProcessingJobName"]
        try:
            self.jobs.mkdir(parents=True, exist_ok=True)
            self.job_dir(name).mkdir()
            (self.job_dir(name) / "logs").mkdir()
        except FileExistsError:
            raise ResourceInUse(
                f"a job named {name} already exists ({self.job_dir(name)}); "
                f"choose another name with --name") from None
        except OSError as exc:
            raise InvalidInput(f"cannot write job records in {self.jobs} (FLEET_HOME): {exc.strerror}") from None
        job = JobRecord(self.job_dir(name), record)
        job.save()
        return job

    def load(self, name: str) -> dict[str, Any]:
        if not re.fullmatch(JOB_NAME_PATTERN, name):
            raise InvalidInput(f"{name!r} is not a processing job name")
        path = self.job_dir(name) / "describe.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"no job named {name} in {self.jobs}") from None

    def log_path(self, name: str, algo: str) -> Path:
        return self.job_dir(name) / "logs" / f"{algo}.log"


class JobRecord:
    """One job's describe.json, rewritten atomically on every change."""

    def __init__(self, directory: Path, record: dict[str, Any]) -> None:
        self.directory = directory
        self.data = record

    @property
    def status(self) -> str:
        return self.data["ProcessingJobStatus"]

    def update(self, **fields: Any) -> None:
        self.data.update({k: v for k, v in fields.items()})
        self.data = {k: v for k, v in self.data.items() if v is not None}
        self.data["LastModifiedTime"] = now()
        self.save()

    def save(self) -> None:
        path = self.directory / "describe.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, path)

    def open_log(self, algo: str) -> BinaryIO:
        return open(self.directory / "logs" / f"{algo}.log", "ab", buffering=0)
