"""`fleet check`: the preflight alone, on every host of the inventory in parallel, a row
per host. The host runs fleet/host/check.sh: the very checks (fleet/host/checks.sh) each
host's session runs before any container starts, each reported as a KEY=VALUE line
(docker, image, writable, free_kb, gpus). What each host reported becomes a row in
`check_row`, pure. The image is never pulled here: the IMAGE column says `present (ID)`,
`will be pulled (auth: ECR | docker config | none, the digest)` or `will be pushed (bytes)`.
A host of `data_path: direct` also runs fleet/host/reach.sh: it needs curl or GNU wget, and to
reach the S3 endpoint its presigned URLs will point to (a problem of its row otherwise).
The ENGINE-API column says how fleet reaches each host's engine API (fleet.engine.connect:
`socket PATH`, `dial-stdio (WHY)`, or `scripts (WHY)`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from fleet.contract.job import ProcessingJob
from fleet.data.direct import reach_row
from fleet.data.locations import S3Location, parse_location
from fleet.engine.connect import cli_engine_said, engine_for, engine_path
from fleet.errors import FleetError
from fleet.fanout import all_of
from fleet.host import command, on_host
from fleet.image import registry
from fleet.image.credentials import credentials_for
from fleet.image.local import LocalImage, inspect_local
from fleet.image.push import host_has
from fleet.image.reference import parse_reference
from fleet.inventory import Host, Inventory
from fleet.runtime.console import Console
from fleet.transport import transport_for

log = logging.getLogger(__name__)


@dataclass
class CheckRow:
    host: str
    ssh: str = "-"
    docker: str = "-"
    api: str = "-"  # how fleet reaches the engine's API (fleet.engine.connect)
    image: str = "-"
    disk: str = "-"
    gpus: str = "-"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class ImageView:
    """What the controller knows of the job's image, for the IMAGE column: the host gets it
    pushed (the controller has it: `local_size` bytes, `local_layers` layers), or pulled
    (with `auth`; `digest`: the registry's, when resolved)."""

    local_id: str | None = None
    local_size: int = 0
    local_layers: int = 0
    auth: str = "none"
    digest: str | None = None
    problem: str | None = None  # what the controller could not learn (credentials refused, ...)


def image_cell(report: str, source: str, view: ImageView, have: int | None = None) -> tuple[str, str | None]:
    """(the IMAGE cell, a problem or None) for a host that reported `image=present ID` /
    `image=missing`, its image_source, and (pushes) the layers it already has."""
    if report.startswith("present "):
        return f"present ({report.removeprefix('present ')[:19]})", None
    if report != "missing":
        return "FAIL", report
    if source != "pull" and view.local_id is not None:
        if have:
            return f"will be pushed ({view.local_layers - have} of {view.local_layers} layers, " \
                   f"at most {view.local_size / 1e6:.1f} MB)", None
        return f"will be pushed ({view.local_size / 1e6:.1f} MB)", None
    if source == "push":
        return "FAIL", "image_source is push, but the controller's Docker has no such image"
    if view.problem:
        return "FAIL", view.problem
    pinned = f", {view.digest[:19]}" if view.digest else ""
    return f"will be pulled (auth: {view.auth}{pinned})", None


def check_row(host: str, report: dict[str, str], *, need_kb: int, image: str | None, gpus: bool,
              source: str = "pull", view: ImageView | None = None, have: int | None = None) -> CheckRow:
    """What one host's check script said → a row, with every problem named."""
    row = CheckRow(host, ssh="ok")
    docker = report.get("docker", "no answer")
    row.docker = docker.removeprefix("ok ") if docker.startswith("ok") else "FAIL"
    if not docker.startswith("ok"):
        row.problems.append(f"docker: {docker}")
        return row
    if image:
        row.image, problem = image_cell(report.get("image", "?"), source, view or ImageView(), have)
        if problem:
            row.problems.append(f"image {image}: {problem}")
    free = report.get("free_kb", "")
    if report.get("writable") != "yes":
        row.problems.append("workdir not writable")
    if free.isdigit():
        row.disk = f"{int(free) / 1024 / 1024:.1f} GiB free"
        if int(free) < need_kb:
            row.problems.append(f"{int(free) / 1024 / 1024:.1f} GiB free, VolumeSizeInGB needs "
                                f"{need_kb / 1024 / 1024:.0f} GiB")
    else:
        row.problems.append("free space unknown")
    if gpus:
        row.gpus = report.get("gpus", "?")
        if row.gpus != "ok":
            row.problems.append("GPUs: no NVIDIA runtime or CDI devices")
    return row


async def _image_view(image: str, inventory: Inventory, docker_timeout: int) -> tuple[ImageView, LocalImage | None]:
    """What the controller has for the image (pushed) and how hosts would pull it."""
    try:
        reference = parse_reference(image)
    except FleetError as exc:
        return ImageView(problem=exc.message), None
    local = None
    if any(host.image_source != "pull" for host in inventory.hosts):
        local = await inspect_local(image, timeout=float(docker_timeout))
    auth, digest, problem = "none", None, None
    if any(host.image_source == "pull" for host in inventory.hosts) or local is None:
        try:
            credentials = await credentials_for(reference)
            auth = credentials.source
            try:
                digest = (await registry.resolve(reference, credentials,
                                                 frozenset(inventory.insecure_registries))).digest
            except registry.Unreachable as exc:
                log.debug("cannot resolve %s: %s", image, exc)
        except FleetError as exc:
            problem = exc.message
    view = ImageView(local.id if local else None, local.size if local else 0, len(local.layers) if local else 0,
                     auth, digest, problem)
    return view, local


async def _s3_endpoints(job: ProcessingJob | None) -> list[str] | str:
    """Where the hosts of `data_path: direct` send their requests (the job's buckets' endpoint,
    else the S3 client's); a str: why the controller cannot tell."""
    from fleet.data.direct import endpoints
    from fleet.data.s3 import S3  # aiobotocore loads slowly: only when a host is direct

    uris = [i.S3Input.S3Uri for i in job.inputs] + [o.S3Output.S3Uri for o in job.outputs] if job else []
    buckets = []
    for uri in uris:
        with contextlib.suppress(FleetError):
            location = parse_location(uri)
            if isinstance(location, S3Location):
                buckets.append(location.bucket)
    try:
        async with S3() as s3:
            return await endpoints(s3, list(dict.fromkeys(buckets)))
    except FleetError as exc:
        return exc.message
    except Exception as exc:  # botocore: no region, no credentials to presign with
        log.debug("cannot tell the S3 endpoint", exc_info=exc)
        return f"cannot tell the S3 endpoint: {type(exc).__name__}"


async def _direct_problems(host: Host, endpoints: list[str] | str) -> list[str]:
    """What keeps `host` from moving its own data: no curl or GNU wget, an endpoint out of
    reach (reach.sh, run on the host)."""
    if isinstance(endpoints, str):
        return [f"data_path direct: {endpoints}"]
    try:
        async with transport_for(host, host.title) as transport, asyncio.timeout(60):
            result = await transport.run(command("reach", endpoints))
    except (FleetError, TimeoutError) as exc:
        return [f"data_path direct: the check did not finish ({getattr(exc, 'message', 'timed out')})"]
    lines = result.stdout.decode(errors="replace").splitlines()
    report = _parse_report("\n".join(lines))
    reached = [line.removeprefix("endpoint=") for line in lines if line.startswith("endpoint=")]
    return reach_row(report, reached)


def _parse_report(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def check(inventory: Inventory, job: ProcessingJob | None, console: Console, *,
                docker_timeout: int) -> int:
    """`fleet check`: preflight every host in parallel; a table; 0 when every host passed."""
    image = job.AppSpecification.ImageUri if job else None
    need_kb = job.ProcessingResources.ClusterConfig.VolumeSizeInGB * 1024 * 1024 if job else 0
    if job is not None and job.instance_count > len(inventory.hosts):
        console.notice(f"the job asks for {job.instance_count} hosts; the inventory has {len(inventory.hosts)}")

    view, local = await _image_view(image, inventory, docker_timeout) if image else (ImageView(), None)
    endpoints: list[str] | str = []
    if any(host.data_path == "direct" for host in inventory.hosts):
        endpoints = await _s3_endpoints(job)

    async def one(host: Host) -> CheckRow:
        row = await checked(host)
        if host.data_path == "direct" and row.ssh == "ok":
            row.problems += await _direct_problems(host, endpoints)
        return row

    async def checked(host: Host) -> CheckRow:
        label = host.title
        have = None
        try:
            async with transport_for(host, label) as transport:
                argv = on_host(host, "check", [image or "", host.job_root, str(need_kb), "1" if host.gpus else "0"],
                               docker_timeout)
                log.debug("%s: running the checks", label)
                async with asyncio.timeout(docker_timeout * 3):
                    result = await transport.run(argv)
                    report = _parse_report(result.stdout.decode(errors="replace"))
                    if "engine" in report:  # the docker command's engine: engine_for compares it
                        cli_engine_said(transport, report["engine"])
                    if local is not None and report.get("image") == "missing" and host.image_source != "pull":
                        have = await host_has(transport, host.docker_command, local, docker_timeout)
                    api = "-"
                    if report.get("docker", "").startswith("ok"):
                        engine = await engine_for(transport, host, docker_timeout)
                        if engine is not None:
                            engine.close()
                        api = engine_path(transport) or "-"
        except FleetError as exc:
            return CheckRow(label, ssh="FAIL", problems=[exc.message])
        except TimeoutError:
            return CheckRow(label, ssh="ok", problems=["the check did not finish"])
        row = check_row(label, report, need_kb=need_kb, image=image, gpus=bool(host.gpus),
                        source=host.image_source, view=view, have=have)
        row.api = api
        return row

    rows = await all_of(*(one(h) for h in inventory.hosts))
    table = [("HOST", "SSH", "DOCKER", "ENGINE-API", "IMAGE", "DISK", "GPUS", "RESULT")]
    table += [(r.host, r.ssh, r.docker, r.api, r.image, r.disk, r.gpus,
               "ok" if r.ok else "FAIL: " + "; ".join(r.problems)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(7)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[7])
    return 0 if all(r.ok for r in rows) else 1
