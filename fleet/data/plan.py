"""ClusterPlan + the inputs' listing → DataPlan: which objects each host gets, by which path,
and what each output uploads, decided before a byte moves.

Pure code: no network, no files. The run carries a DataPlan out (fleet.runtime.transfers);
`fleet run --dry-run` prints one. The rules it applies:

- **Which objects**: FullyReplicated, every object to every host; ShardedByS3Key, each
  object to one host, in key order round-robin (fleet.data.sources.shard): a host may get
  none (fewer objects than hosts), its LocalPath is then an empty directory.
- **Which path, per host and input**: `direct` (the host fetches its objects itself with
  presigned URLs, fleet.data.direct) when the inventory says `data_path: direct`, the job
  uses S3, and every object of the input is in S3; else `controller` (the controller
  streams them, fleet.data.staging): file:// objects are the controller's own files.
- **Which path, per host and output**: `direct` (the host PUTs its files) for an EndOfJob
  output to S3 from a `data_path: direct` host; else `controller`. A Continuous output is
  read while the container runs (it may swap a path for a symlink meanwhile): always the
  controller's. EndOfJob uploads once, when the job Completed; Continuous every few seconds
  while the containers run and a last time whatever the end.

Without a listing (a dry run not asked to list) the objects are unknown: the path is then
decided from the input's URI, which says where its objects are, but for a file:// manifest,
whose prefix may name S3.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.contract.job import ProcessingJob
from fleet.data.locations import FileLocation, Location, S3Location, parse_location
from fleet.data.sources import InputObject, assignments
from fleet.plan import ClusterPlan, HostPlan

DIRECT = "direct"
CONTROLLER = "controller"


@dataclass(frozen=True)
class HostInput:
    """One host's part of one input: its objects, where they land, the path they take."""

    algo: str
    directory: str  # the host's inputs/N.partial (moved into place on `go`)
    objects: tuple[InputObject, ...]
    path: str  # direct | controller
    why: str

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def direct(self) -> bool:
        return self.path == DIRECT


@dataclass(frozen=True)
class InputPlan:
    index: int  # ProcessingInputs[index - 1]
    name: str
    uri: str
    distribution: str  # FullyReplicated | ShardedByS3Key
    listed: bool  # False: the objects are not known (a dry run without --list-inputs)
    hosts: tuple[HostInput, ...]

    @property
    def replicated(self) -> bool:
        return self.distribution == "FullyReplicated"

    @property
    def objects(self) -> int:
        """How many distinct objects the input has (each read once from its source)."""
        return len({o.name for h in self.hosts for o in h.objects})

    @property
    def bytes(self) -> int:
        return sum(o.size for o in {o.name: o for h in self.hosts for o in h.objects}.values())


@dataclass(frozen=True)
class HostUpload:
    """One host's part of one output: its directory to the output's S3Uri, by a path."""

    algo: str
    directory: str  # the host's outputs/N
    path: str  # direct | controller
    why: str

    @property
    def direct(self) -> bool:
        return self.path == DIRECT


@dataclass(frozen=True)
class OutputPlan:
    index: int  # ProcessingOutputConfig.Outputs[index - 1]
    name: str
    destination: Location
    mode: str  # EndOfJob | Continuous
    hosts: tuple[HostUpload, ...]

    @property
    def continuous(self) -> bool:
        return self.mode == "Continuous"

    def host(self, algo: str) -> HostUpload:
        return next(h for h in self.hosts if h.algo == algo)


@dataclass(frozen=True)
class DataPlan:
    inputs: tuple[InputPlan, ...]
    outputs: tuple[OutputPlan, ...]

    def for_host(self, algo: str) -> tuple[list[tuple[InputPlan, HostInput]], list[tuple[OutputPlan, HostUpload]]]:
        """What `algo` gets and uploads: "what happens to algo-2's data" in one place."""
        return ([(i, h) for i in self.inputs for h in i.hosts if h.algo == algo],
                [(o, o.host(algo)) for o in self.outputs])


def plan_data(plan: ClusterPlan, listing: list[list[InputObject]] | None) -> DataPlan:
    """Decide every host's objects and paths. `listing[i]`: the objects of
    ProcessingInputs[i] (fleet.data.sources.list_input), or None when not listed."""
    return plan_hosts_data(plan.job, plan.hosts, listing)


def plan_hosts_data(job: ProcessingJob, hosts: list[HostPlan], listing: list[list[InputObject]] | None) -> DataPlan:
    """plan_data for these hosts of the job (a part of them: those whose outputs are read)."""
    uris = [i.S3Input.S3Uri for i in job.inputs] + [o.S3Output.S3Uri for o in job.outputs]
    uses_s3 = any(not isinstance(parse_location(u), FileLocation) for u in uris)
    inputs = []
    for index, item in enumerate(job.inputs, start=1):
        spec = item.S3Input
        objects = listing[index - 1] if listing is not None else None
        per_host = assignments(spec, objects, len(hosts)) if objects is not None else [[] for _ in hosts]
        where = _objects_where(spec.S3Uri, spec.S3DataType, objects)
        inputs.append(InputPlan(
            index=index, name=item.InputName, uri=spec.S3Uri, distribution=spec.S3DataDistributionType,
            listed=objects is not None,
            hosts=tuple(HostInput(h.algo, h.partial_input_dir(index), tuple(mine),
                                  *_input_path(h.host.data_path, uses_s3, where))
                        for h, mine in zip(hosts, per_host))))
    outputs = []
    for index, output in enumerate(job.outputs, start=1):
        mode = output.S3Output.S3UploadMode
        destination = parse_location(output.S3Output.S3Uri)
        outputs.append(OutputPlan(
            index=index, name=output.OutputName, destination=destination, mode=mode,
            hosts=tuple(HostUpload(h.algo, h.output_dir(index), *_output_path(h.host.data_path, mode, destination))
                        for h in hosts)))
    return DataPlan(tuple(inputs), tuple(outputs))


def _objects_where(uri: str, data_type: str, objects: list[InputObject] | None) -> str:
    """Where an input's objects are: `s3`, `file` (some on the controller), or `unknown`."""
    if objects is not None:
        return "s3" if all(isinstance(o.source, S3Location) for o in objects) else "file"
    if isinstance(parse_location(uri), S3Location):
        return "s3"  # an S3 manifest's prefix is in S3 too (list_input refuses a file:// one)
    return "file" if data_type == "S3Prefix" else "unknown"


def _input_path(data_path: str, uses_s3: bool, where: str) -> tuple[str, str]:
    if data_path != DIRECT:
        return CONTROLLER, "data_path controller: the controller streams them"
    if not uses_s3 or where == "file":
        return CONTROLLER, "data_path direct, but file:// objects are the controller's: it streams them"
    if where == "unknown":
        return DIRECT, "data_path direct: the host fetches them with presigned URLs if the manifest's prefix is in S3"
    return DIRECT, "data_path direct: the host fetches them with presigned URLs"


def _output_path(data_path: str, mode: str, destination: Location) -> tuple[str, str]:
    if mode == "Continuous":
        return CONTROLLER, "Continuous: read by the controller while the container runs"
    if data_path != DIRECT:
        return CONTROLLER, "data_path controller: the controller reads and uploads them"
    if not isinstance(destination, S3Location):
        return CONTROLLER, "data_path direct, but a file:// output is the controller's: it reads them"
    return DIRECT, "data_path direct: the host PUTs its files with presigned URLs"
