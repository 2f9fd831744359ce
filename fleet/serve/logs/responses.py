"""CloudWatch Logs' reads of the log group /aws/sagemaker/ProcessingJobs: DescribeLogStreams,
GetLogEvents and FilterLogEvents. One stream per host, `JOBNAME/algo-k-EPOCH` (EPOCH: the
job's creation, in seconds), each line an event timed by its arrival on the controller
(events.py). A stream is as visible as its job (jobs.py): another principal's is answered as
one that does not exist."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fleet.contract.describe import JobSummary
from fleet.errors import FleetError
from fleet.runtime.store import JobStore, RecordCache
from fleet.serve.auth import Principal
from fleet.serve.jobs import epoch, sees
from fleet.serve.logs import events
from fleet.serve.logs.exceptions import ResourceNotFoundException
from fleet.serve.logs.shapes import LOG_GROUP, DescribeLogStreams, FilterLogEvents, GetLogEvents
from fleet.serve.paginator import paginate

_NO_STREAM = "The specified log stream does not exist."


class Logs:
    """The log streams of the jobs of `store`; `summaries` the records' cache List keeps."""

    def __init__(self, store: JobStore, summaries: RecordCache, region: str, account: str) -> None:
        self.store = store
        self.summaries = summaries
        self.region = region
        self.account = account

    def operations(self) -> dict[str, Any]:
        """Operation name: handler."""
        return {"DescribeLogStreams": self.describe_log_streams, "GetLogEvents": self.get_log_events,
                "FilterLogEvents": self.filter_log_events}

    def _streams(self, prefix: str, caller: Principal) -> list[tuple[str, str, str, JobSummary]]:
        """(stream name, job name, algo, record) of every job `caller` sees whose stream names
        start with `prefix` (every stream `caller` sees for "")."""
        job_name = prefix.split("/", 1)[0]
        if not job_name and prefix:
            return []
        if "/" in prefix:
            try:
                records = [self.store.load(job_name)]
            except FleetError:
                records = []
        else:  # many jobs, maybe every one: their summaries (a stat each), which keep what a stream needs
            records = [r for r in self.summaries.records() if r.ProcessingJobName.startswith(prefix)]
        streams: list[tuple[str, str, str, JobSummary]] = []
        for record in records:
            name = record.ProcessingJobName
            if not sees(caller, record):
                continue
            created = int(epoch(record.CreationTime))
            for algo in record.Hosts:
                stream = f"{name}/{algo}-{created}"
                if stream.startswith(prefix):
                    streams.append((stream, name, algo, record))
        return streams

    async def describe_log_streams(self, request: dict, caller: Principal) -> dict:
        asked = DescribeLogStreams.parse(request)
        prefix = asked.logStreamNamePrefix
        if not isinstance(prefix, str) or not prefix:
            return {"logStreams": []}
        found = []
        for stream, name, algo, record in self._streams(prefix, caller):
            first, last, size = events.stream_times(self._source(stream, name, algo, record))
            if not size:
                continue  # no event yet: CloudWatch shows a stream once it has one
            created = int(epoch(record.CreationTime) * 1000)
            found.append({"logStreamName": stream, "creationTime": created, "firstEventTimestamp": first,
                          "lastEventTimestamp": last, "lastIngestionTime": last,
                          "uploadSequenceToken": "0", "storedBytes": size,
                          "arn": f"arn:aws:logs:{self.region}:{self.account}:log-group:{LOG_GROUP}:"
                                 f"log-stream:{stream}"})
        found.sort(key=lambda s: str(s["logStreamName"]), reverse=bool(asked.descending))
        page = paginate(found, asked.nextToken, asked.limit)
        answer: dict[str, Any] = {"logStreams": page.items}
        if page.next_token is not None:
            answer["nextToken"] = page.next_token
        return answer

    def _stream(self, stream: str | None, caller: Principal) -> events.Source:
        """The stream `stream` names, if `caller` may read it; else ResourceNotFoundException,
        the same answer as for a stream that does not exist."""
        match = re.fullmatch(r"([^/]+)/(algo-\d+)-(\d+)", stream or "")
        if not match:
            raise ResourceNotFoundException(_NO_STREAM)
        name, algo = match[1], match[2]
        try:
            record = self.store.load(name)
        except FleetError:
            raise ResourceNotFoundException(_NO_STREAM) from None
        if algo not in record.Hosts or not sees(caller, record):
            raise ResourceNotFoundException(_NO_STREAM)
        return self._source(match[0], name, algo, record)

    def _source(self, stream: str, name: str, algo: str, record: JobSummary) -> events.Source:
        return events.Source(stream, self.store.log_path(name, algo), _stamp(record), record.ended)

    async def get_log_events(self, request: dict, caller: Principal) -> dict:
        """A host's log as events, a line each, timed by their arrival on the controller
        (events.py): `f/OFFSET` and `b/OFFSET` tokens; without one, the first page
        (`startFromHead`) or the last (the default, as CloudWatch's)."""
        asked = GetLogEvents.parse(request)
        source = self._stream(asked.logStreamName, caller)
        return await asyncio.to_thread(
            events.get_events, source, start_time=asked.startTime, end_time=asked.endTime,
            token=asked.nextToken, from_head=asked.startFromHead, limit=asked.limit)

    async def filter_log_events(self, request: dict, caller: Principal) -> dict:
        """FilterLogEvents on the streams named (logStreamNames) or starting with
        logStreamNamePrefix (every stream the caller sees without either), interleaved by time
        (events.filter_events). Streams the caller may not see are left out, as unknown ones."""
        asked = FilterLogEvents.parse(request)
        if asked.logStreamNames is not None:
            sources = []
            for name in dict.fromkeys(asked.logStreamNames):
                try:
                    sources.append(self._stream(name, caller))
                except ResourceNotFoundException:
                    continue
        else:
            sources = [self._source(*found) for found in self._streams(asked.logStreamNamePrefix or "", caller)]
        return await asyncio.to_thread(
            events.filter_events, sources, start_time=asked.startTime, end_time=asked.endTime,
            pattern=asked.pattern(), token=asked.after(), limit=asked.limit)


def _stamp(record: JobSummary) -> int:
    """The time (ms) of the lines of a stream that no index times (an older fleet's run):
    when the job started (else was created)."""
    return int(epoch(record.ProcessingStartTime or record.CreationTime) * 1000)
