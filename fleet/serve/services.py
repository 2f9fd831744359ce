"""The AWS services one `fleet serve` answers, laid out as moto lays them out, a folder
each (responses: the operations; shapes: the request models; exceptions: one class per
AWS error code): SageMaker (sagemaker/), CloudWatch Logs (logs/), STS (sts/). Here they are
put together over one job store and scheduler, and named as requests name them: the AWS
JSON protocol's `X-Amz-Target: Prefix.Operation` (`operations`), the Query protocol's
Action (`queries`). server.py routes every request through one pipeline to them."""

from __future__ import annotations

import asyncio
import logging

from fleet.contract.describe import JobSummary
from fleet.runtime.store import JobStore, RecordCache
from fleet.serve.logs.responses import Logs
from fleet.serve.protocols import Operation
from fleet.serve.sagemaker.responses import SageMaker
from fleet.serve.scheduler import Scheduler
from fleet.serve.sts.responses import Sts

log = logging.getLogger(__name__)

class Services:
    def __init__(self, store: JobStore, scheduler: Scheduler, region: str, account: str) -> None:
        self.store = store
        self.scheduler = scheduler
        self.region = region
        self.account = account
        self.summaries = RecordCache(store, JobSummary)  # for List: read again only when changed
        self.sagemaker = SageMaker(store, scheduler, self.summaries, region, account)
        self.logs = Logs(store, self.summaries, region, account)
        self.sts = Sts(account)
        self.operations: dict[str, Operation] = {
            **{f"SageMaker.{name}": handler for name, handler in self.sagemaker.operations().items()},
            **{f"Logs_20140328.{name}": handler for name, handler in self.logs.operations().items()},
        }
        self.queries: dict[str, Operation] = {
            f"STS.{name}": handler for name, handler in self.sts.operations().items()}

    async def warm(self) -> None:
        """Read every job's summary into the List cache, 64 records (~1.5 ms) at a time between
        other work: serve runs this right after it listens, so that the first ListProcessingJobs
        (and the page's first list) costs a stat per record, not a read and a parse (the page's
        first list of 10,000 jobs as a warm one, 68-127 ms on a busy 2-core machine, was 235-246
        cold against a 300 ms target: scripts/bench-page), while a Describe that comes meanwhile
        waits for one batch at most, and serve's start not at all."""
        try:
            for _ in self.summaries.warm():
                await asyncio.sleep(0)
        except OSError as exc:  # an unreadable jobs directory: List says so when asked; serve goes on
            log.warning("could not read the job records ahead of the first list: %s", exc)
