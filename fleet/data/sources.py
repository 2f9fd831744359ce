"""What each input holds and which host gets what: listing (S3Prefix, ManifestFile,
file://), the relative path of every object under LocalPath, and the sharding."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fleet.contract.job import ProcessingJob, S3InputSpec, S3OutputSpec
from fleet.data.locations import FileLocation, Location, parse_location, relative_to_prefix, safe_relative_path
from fleet.errors import ClientError, InvalidInput
from fleet.fanout import all_of

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class InputObject:
    """One object of an input: where it is read from, where it lands under LocalPath."""

    source: Location
    relative: str
    size: int

    @property
    def name(self) -> str:
        return str(self.source)


def shard(objects: list[InputObject], hosts: int) -> list[list[InputObject]]:
    """ShardedByS3Key: each object to exactly one host, in key order round-robin, so the
    hosts' counts differ by at most one and the same keys and N give the same split."""
    ordered = sorted(objects, key=lambda o: o.name)
    return [ordered[k::hosts] for k in range(hosts)]


def assignments(spec: S3InputSpec, objects: list[InputObject], hosts: int) -> list[list[InputObject]]:
    """What each host's LocalPath holds."""
    if spec.S3DataDistributionType == "ShardedByS3Key":
        return shard(objects, hosts)
    return [list(objects) for _ in range(hosts)]


# Values of the API that fleet does not support yet: (field, value) → why.
_UNSUPPORTED = {
    ("S3InputMode", "Pipe"): "is not supported by fleet yet; use File",
    ("S3CompressionType", "Gzip"): "(Pipe mode only) is not supported by fleet yet; use None",
}


def _unsupported(spec: S3InputSpec) -> tuple[str, str, str] | None:
    for (field, value), why in _UNSUPPORTED.items():
        if getattr(spec, field) == value:
            return field, value, why
    return None


def check_supported(spec: S3InputSpec, input_name: str) -> None:
    problem = _unsupported(spec)
    if problem:
        field, value, why = problem
        raise ClientError(f"input {input_name}: {field} {value} {why}")


def check_job_data(job: ProcessingJob, source: str) -> None:
    """What fleet cannot do with the job's data, found without any I/O: refused before
    anything is recorded or any host is touched (InvalidInput, exit 2, naming the file and the
    field). An unsupported mode, or an S3Uri (https) that names no S3 bucket fleet can read."""
    fields: list[tuple[str, S3InputSpec | S3OutputSpec]] = [
        (f"ProcessingInputs[{i}].S3Input", item.S3Input) for i, item in enumerate(job.inputs)]
    fields += [(f"ProcessingOutputConfig.Outputs[{i}].S3Output", item.S3Output)
               for i, item in enumerate(job.outputs)]
    for path, spec in fields:
        problem = _unsupported(spec) if isinstance(spec, S3InputSpec) else None
        if problem:
            field, value, why = problem
            raise InvalidInput(f"{source}: {path}.{field}: {value} {why}")
        try:
            parse_location(spec.S3Uri)
        except ClientError as exc:
            raise InvalidInput(f"{source}: {path}.S3Uri: {exc.message}") from exc


def _no_objects(uri: str) -> ClientError:
    return ClientError(f'No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure '
                       f"that the bucket exists, that objects exist under that S3 prefix, and that the "
                       f"controller's credentials may list it")


def _without_collisions(objects: list[InputObject]) -> list[InputObject]:
    """Each object at its own path: one listed twice (a manifest may repeat an entry) is placed
    once; two objects at one path, or one at a path another needs as a directory, are
    refused naming both (before any host is touched)."""
    placed: dict[str, InputObject] = {}
    for obj in objects:
        other = placed.setdefault(obj.relative, obj)
        if other.source != obj.source:
            raise ClientError(f"{other.name} and {obj.name} collide under LocalPath: both would land at "
                              f"{obj.relative!r}; refused")
    for relative, obj in placed.items():
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            parent = placed.get("/".join(parts[:depth]))
            if parent is not None:
                raise ClientError(f"{parent.name} and {obj.name} collide under LocalPath: {parent.relative!r} "
                                  f"would be both a file and a directory; refused")
    return list(placed.values())


async def list_input(spec: S3InputSpec, s3) -> list[InputObject]:
    """Every object of one input, each with its safe relative path; ClientError when
    nothing matches or an object would land outside LocalPath."""
    location = parse_location(spec.S3Uri)
    if spec.S3DataType == "ManifestFile":
        objects = await _from_manifest(location, s3)
    elif isinstance(location, FileLocation):
        objects = _from_directory(location)
    else:
        # An empty key ending in "/" is a console "folder": it holds no file (SageMaker skips it).
        objects = [InputObject(o.location, safe_relative_path(relative_to_prefix(o.location.key, location.key),
                                                              f"S3 key {o.location}"), o.size)
                   for o in await s3.list(location) if not (o.location.key.endswith("/") and o.size == 0)]
    if not objects:
        raise _no_objects(spec.S3Uri)
    unique = _without_collisions(objects)
    log.debug("input %s (%s): %d objects, %d bytes%s", location, spec.S3DataType, len(unique),
              sum(o.size for o in unique),
              f" ({len(objects) - len(unique)} duplicate paths dropped)" if len(unique) < len(objects) else "")
    return unique


def _from_directory(location: FileLocation) -> list[InputObject]:
    """file:///path: a file, or every regular file below a directory (symlinks skipped)."""
    root = Path(location.path)
    if root.is_file() and not root.is_symlink():
        return [InputObject(location, root.name, root.stat().st_size)]
    if not root.is_dir():
        return []
    objects = []
    for directory, _dirs, files in os.walk(root):  # os.walk does not follow symlinked dirs
        for name in sorted(files):
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                relative = path.relative_to(root).as_posix()
                objects.append(InputObject(FileLocation(str(path)), relative, path.stat().st_size))
    return objects


async def _from_manifest(location: Location, s3) -> list[InputObject]:
    """A JSON array: first {"prefix": "s3://..."}, then keys relative to that prefix."""
    if isinstance(location, FileLocation):
        try:
            raw = Path(location.path).read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the manifest {location}: {exc.strerror}") from exc
    else:
        raw = await s3.read_all(location)
    try:
        manifest = json.loads(raw)
        prefix_uri = manifest[0]["prefix"]
        entries = manifest[1:]
        if not isinstance(prefix_uri, str) or not all(isinstance(e, str) for e in entries):
            raise ValueError
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ClientError(f"the manifest {location} is not a JSON array of "
                          f'[{{"prefix": "s3://..."}}, "relative key", ...]') from exc
    try:
        prefix = parse_location(prefix_uri)
    except ClientError as exc:
        raise ClientError(f"the manifest {location} has a bad prefix: {exc.message}") from exc
    checked = [safe_relative_path(e, f"manifest entry {e!r} of {location}") for e in entries]
    log.debug("manifest %s: prefix %s, %d entries", location, prefix, len(checked))
    if isinstance(prefix, FileLocation) and not isinstance(location, FileLocation):
        # Whoever can write to S3 must not make the controller send its own files to the hosts.
        raise ClientError(f"the manifest {location} is in S3 but its prefix {prefix_uri} is on the controller; "
                          f"refused (a file:// prefix needs a file:// manifest)")
    if isinstance(prefix, FileLocation):
        objects = []
        for relative in checked:
            path = Path(prefix.path, relative)
            if not path.is_file() or path.is_symlink():
                raise ClientError(f"manifest entry {relative!r} of {location}: {path} is not a file")
            objects.append(InputObject(FileLocation(str(path)), relative, path.stat().st_size))
        return objects
    limit = asyncio.Semaphore(32)

    async def head(relative: str) -> InputObject:
        async with limit:
            obj = await s3.head(prefix.child(relative))
        return InputObject(obj.location, relative, obj.size)

    return await all_of(*(head(r) for r in checked))
