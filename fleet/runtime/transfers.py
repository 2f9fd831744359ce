"""The job's data: inputs listed before any host is touched, staged onto the hosts before any
container starts, outputs uploaded when the containers have exited (Continuous ones also
while they run). The executor calls these at those points; what goes where, by which path,
is the DataPlan's (fleet.data.plan), decided once the inputs are listed; fleet/data does
the moving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, TYPE_CHECKING

from fleet.contract.job import ProcessingJob
from fleet.data.direct import (
    endpoints,
    reach_row,
    signer,
    stage_input_direct,
    upload_host_direct,
)
from fleet.data.locations import FileLocation, S3Location, parse_location
from fleet.data.outputs import EXCLUSIONS_CHUNK, ChangedFiles, OutputCount, Uploader, output_location
from fleet.data.plan import DataPlan, plan_data, plan_hosts_data
from fleet.data.sources import InputObject, check_supported, list_input
from fleet.data.staging import Destination, Sources, TransferCount, stage_input
from fleet.errors import ClientError, FleetError, HostError
from fleet.fanout import all_of

if TYPE_CHECKING:
    from fleet.data.s3 import S3
from fleet.host import command as host_command
from fleet.plan import ClusterPlan, HostPlan
from fleet.runtime.console import Console, Progress
from fleet.transport import Transport

log = logging.getLogger(__name__)

UNWANTED_IN_MEMORY = 256 * 1024  # bytes of a pass's unwanted names kept in memory; more go to a temporary file
CONTINUOUS_INTERVAL = 2.0  # seconds between looks at a Continuous output; a file unchanged
                           # for one interval is uploaded


class JobData:
    """The job's data steps, each at its point of the lifecycle (fleet.runtime.executor):
    S3 opened and the inputs listed while the hosts are reached (`start`, `ready`), the
    DataPlan decided with the ClusterPlan (`planned`), the inputs staged while the hosts
    prepare (`stage_when_written`), Continuous outputs while the containers run, the final
    upload. What moves where is the DataPlan's (fleet.data.plan); this carries it out."""

    def __init__(self, job: ProcessingJob, console: Console) -> None:
        self.job = job
        self.console = console
        self.progress = Progress(console)
        self.inputs: list[list[InputObject]] | None = None  # every input's objects, once listed
        self.plan: DataPlan | None = None
        self.input_counts = {i.InputName: TransferCount() for i in job.inputs}
        self.output_counts = {o.OutputName: OutputCount() for o in job.outputs}
        self._stack = contextlib.AsyncExitStack()
        self.s3: S3 | None = None
        self._changes: dict[tuple[str, str], ChangedFiles] = {}  # (output, algo) → its Continuous passes' memory
        self._ready: asyncio.Task[FleetError | None] | None = None
        self._hosts: tuple[list[HostPlan], list[Transport]] = ([], [])  # every host's plan and transport

    @property
    def needed(self) -> bool:
        return bool(self.job.inputs or self.job.outputs)

    async def open(self) -> None:
        """Check what fleet supports and connect to S3 (only when an S3 URI is used)."""
        for item in self.job.inputs:
            check_supported(item.S3Input, item.InputName)
        uris = [i.S3Input.S3Uri for i in self.job.inputs] + [o.S3Output.S3Uri for o in self.job.outputs]
        if any(not isinstance(parse_location(u), FileLocation) for u in uris):
            from fleet.data.s3 import S3  # aiobotocore loads slowly: only for jobs that use S3
            self.s3 = await self._stack.enter_async_context(S3())

    async def close(self) -> None:
        self.stop_opening()
        await self._stack.aclose()

    def stop_opening(self) -> None:
        """Cancel the connecting and listing (`start`) if it still runs."""
        if self._ready is not None:
            self._ready.cancel()

    async def list_inputs(self) -> None:
        """Every input's objects; ClientError when one matches nothing (before any host is touched)."""
        self.inputs = await all_of(*(list_input(i.S3Input, self.s3) for i in self.job.inputs))

    def start(self, tasks: asyncio.TaskGroup, list_inputs: bool) -> None:
        """Connect to S3 and list the inputs, in a task of `tasks` (while the hosts are
        reached); its error is raised where the lifecycle waits for it (`ready`), not in the
        middle of the task group."""
        self._ready = tasks.create_task(self._open(list_inputs), name="S3")

    async def _open(self, list_inputs: bool) -> FleetError | None:
        if not self.needed:
            return None
        try:
            await self.open()
            if list_inputs:
                await self.list_inputs()
        except FleetError as exc:
            return exc
        return None

    async def ready(self) -> None:
        """Wait until S3 is open and the inputs listed; their error, raised."""
        assert self._ready is not None
        await asyncio.wait([self._ready])  # a waiter cancelled (a stop) leaves S3 be
        error = self._ready.result()
        if error is not None:
            raise error

    def planned(self, plan: ClusterPlan, transports: list[Transport]) -> None:
        """Decide the DataPlan, once the inputs are listed (or never will be: a taken-over
        job); `transports[i]` reaches plan.hosts[i]."""
        self.plan = plan_data(plan, self.inputs)
        self._hosts = (plan.hosts, transports)

    def _plan_for(self, plans: list[HostPlan]) -> DataPlan:
        return self.plan if self.plan is not None else plan_hosts_data(self.job, plans, self.inputs)

    async def stage_when_written(self, written: list[Callable[[], Awaitable[bool]]]) -> None:
        """The inputs stream into each host's inputs/N.partial (nothing reads them before
        `go`) while docker is checked, the image pulled and the container created: once S3
        is ready, the direct hosts reach it and every host's job directory is `written`."""
        await self.ready()
        await self.check_direct(*self._hosts)  # data_path: direct hosts reach S3
        if not self.job.inputs:
            return
        if all([await done() for done in written]):  # else a host failed: its preparation error ends the job
            await self.stage(*self._hosts)

    async def stage(self, plans: list[HostPlan], transports: list[Transport]) -> None:
        """Each input onto its hosts, one input after the other, by the DataPlan's paths:
        through the controller, or fetched by the hosts themselves."""
        sources = Sources(self.s3)
        by_algo = dict(zip((p.algo for p in plans), transports))
        for item in self._plan_for(plans).inputs:
            count = self.input_counts[item.name]
            destinations = [Destination(by_algo[h.algo].label, by_algo[h.algo], h.directory) for h in item.hosts]
            per_host = [list(h.objects) for h in item.hosts]
            async with self.progress.track(f"input {item.name}", count, f"to {len(item.hosts)} host(s)"):
                if not any(h.direct for h in item.hosts):
                    await stage_input(per_host, destinations, sources, count, replicated=item.replicated)
                    continue
                await self._stage_split(per_host, destinations, [h.direct for h in item.hosts], sources, count,
                                        item.replicated)

    async def _stage_split(self, per_host: list[list[InputObject]], destinations: list[Destination],
                           direct: list[bool], sources: Sources, count: TransferCount, replicated: bool) -> None:
        """Direct hosts fetch their objects; the others are sent theirs by the controller."""
        count.total_objects = len({o.name for objs in per_host for o in objs})
        count.total_bytes = sum(o.size for o in {o.name: o for objs in per_host for o in objs}.values())
        pick = [i for i, d in enumerate(direct) if d]
        rest = [i for i, d in enumerate(direct) if not d]
        sign = signer(self.s3)
        works = [stage_input_direct([per_host[i] for i in pick], [destinations[i] for i in pick], sign, count)]
        through = TransferCount()  # the controller path's own count: merged below
        if rest:
            works.append(stage_input([per_host[i] for i in rest], [destinations[i] for i in rest], sources, through,
                                     replicated=replicated))
        await all_of(*works)
        if rest:  # every object reached every host it was for: counted once each
            count.objects, count.bytes = count.total_objects, count.total_bytes
            count.host_bytes += through.host_bytes

    async def check_direct(self, plans: list[HostPlan], transports: list[Transport]) -> None:
        """The hosts of `data_path: direct` have an HTTP client and reach S3 where the job's
        URLs will point; HostError naming the first that does not (before any container starts)."""
        hosts = [(p, t) for p, t in zip(plans, transports) if p.host.data_path == "direct"]
        if not hosts or self.s3 is None:
            return
        uris = [i.S3Input.S3Uri for i in self.job.inputs] + [o.S3Output.S3Uri for o in self.job.outputs]
        buckets = [loc.bucket for loc in map(parse_location, uris) if isinstance(loc, S3Location)]
        origins = await endpoints(self.s3, list(dict.fromkeys(buckets)))

        async def one(transport: Transport) -> None:
            result = await transport.run(host_command("reach", origins))
            lines = result.stdout.decode(errors="replace").splitlines()
            client = next((line.removeprefix("http_client=") for line in lines if line.startswith("http_client=")),
                          "none")
            problems = reach_row({"http_client": client},
                                 [line.removeprefix("endpoint=") for line in lines if line.startswith("endpoint=")])
            if problems:
                raise HostError(transport.label, "; ".join(problems))
            log.debug("%s: %s reaches %s", transport.label, client, ", ".join(origins))
        await all_of(*(one(t) for _, t in hosts))

    async def upload(self, hosts: list[tuple[HostPlan, Transport]], completed: bool) -> None:
        """The final upload: EndOfJob outputs when the job Completed; Continuous outputs
        always (what changed since their last pass)."""
        uploader = Uploader(self.s3, self.console.notice)
        for output in self._plan_for([p for p, _ in hosts]).outputs:
            if not (completed or output.continuous):
                continue
            count = self.output_counts[output.name]
            destination = output_location(self.job.outputs[output.index - 1].S3Output.S3Uri)  # file://: made
            async with self.progress.track(f"output {output.name}", count, "from the hosts"):
                await all_of(*(
                    self._upload_one(uploader, p, t, output.index, output.name, destination, count,
                                     output.continuous, final=True, direct=output.host(p.algo).direct)
                    for p, t in hosts))

    async def _upload_one(self, uploader: Uploader, plan: HostPlan, transport: Transport, index: int,
                          name: str, destination, count: OutputCount, continuous: bool, final: bool,
                          direct: bool = False) -> None:
        directory = plan.output_dir(index)
        if direct:  # the DataPlan's: an EndOfJob output to S3 from a direct host, whose container exited
            await upload_host_direct(transport, plan.algo, directory, destination, name, count,
                                     signer(self.s3), self.console.notice)
            return
        if not continuous:
            await uploader.upload_host(transport, plan.algo, directory, destination, name, count)
            return
        changes = self._changes.setdefault((name, plan.algo), ChangedFiles())
        # The names of the files listed but not wanted go to the host's tar (fewer bytes) from
        # a file: 300,000 names are 60 MB, on disk rather than in memory.
        with tempfile.SpooledTemporaryFile(max_size=UNWANTED_IN_MEMORY) as unwanted:
            await self._changed_files(transport, directory, name, changes, unwanted, stable_only=not final)
            if changes.wanted:
                # The host's tar walks the whole tree, leaving out the unwanted files; the
                # uploader takes only the wanted ones from its stream: a path listed a moment
                # ago may lead through a symlink now (the container runs), and is never opened.
                unwanted.seek(0)
                await uploader.upload_host(transport, plan.algo, directory, destination, name, count,
                                           only=changes, leave_out=_names(unwanted), uploaded=changes.uploaded)

    async def _changed_files(self, transport: Transport, directory: str, name: str, changes: ChangedFiles,
                             unwanted: IO[bytes], stable_only: bool) -> None:
        """A look at the host's output: `changes` learns the regular files whose size or mtime
        differ from their last upload (with `stable_only`, only those unchanged since the
        previous look: a file being written waits for the next pass); the others' names go to
        `unwanted`, NUL-terminated."""
        changes.begin()
        # Record by record: neither the listing nor its names are ever held whole.
        async with transport.records(host_command("changed-files", [directory]), separator=b"\0") as listing:
            async for record in listing:
                if record:
                    fields = record.split(b" ", 2)
                    if len(fields) != 3 or not fields[2]:
                        raise ClientError(f"listing output {name} on {transport.label}: an unreadable line "
                                          f"{record[:80]!r}")
                    path = fields[2].decode("utf-8", "surrogateescape")
                    if not changes.listed(path, (fields[0] + b" " + fields[1]).decode("ascii", "replace"),
                                          stable_only):
                        unwanted.write(fields[2] + b"\0")
            await listing.end()

    async def continuous(self) -> None:
        """While the containers run: Continuous outputs, every CONTINUOUS_INTERVAL; a failure
        is told, not fatal (the final pass tries again)."""
        try:
            await self._continuous_passes(*self._hosts)
        except FleetError as exc:
            self.console.notice(f"continuous upload: {exc.message}")

    async def _continuous_passes(self, plans: list[HostPlan], transports: list[Transport]) -> None:
        outputs = [(o, output_location(self.job.outputs[o.index - 1].S3Output.S3Uri))
                   for o in self._plan_for(plans).outputs if o.continuous]
        if not outputs:
            return
        uploader = Uploader(self.s3, self.console.notice)
        while True:
            await asyncio.sleep(CONTINUOUS_INTERVAL)
            for output, destination in outputs:
                async def one(plan: HostPlan, transport: Transport, output=output, destination=destination) -> None:
                    # A pass that fails is told; the next pass (or the final one) tries again.
                    try:
                        await self._upload_one(uploader, plan, transport, output.index, output.name, destination,
                                               self.output_counts[output.name], True, final=False)
                    except Exception as exc:
                        log.debug("continuous upload of %s from %s", output.name, plan.algo, exc_info=exc)
                        self.console.notice(f"output {output.name}: continuous upload: {exc}")
                await all_of(*(one(p, t) for p, t in zip(plans, transports)))

    def record(self) -> dict | None:
        if not self.needed:
            return None
        return {"Inputs": {name: c.record() for name, c in self.input_counts.items()},
                "Outputs": {name: c.record() for name, c in self.output_counts.items()}}


def _names(file: IO[bytes]) -> Iterator[str]:
    """The NUL-terminated names of `file`, from where it stands, a buffer at a time."""
    rest = b""
    while chunk := file.read(EXCLUSIONS_CHUNK):
        *names, rest = (rest + chunk).split(b"\0")
        for raw in names:
            yield raw.decode("utf-8", "surrogateescape")
