"""`fleet check`: the preflight alone, on every host of the inventory in parallel, a row
per host. The host runs fleet/host/check.sh: the very checks (fleet/host/checks.sh) each
host's session runs before any container starts, each reported as a KEY=VALUE line
(docker, image, writable, free_kb, gpus). What each host reported becomes a row in
`check_row`, pure."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fleet.contract.job import ProcessingJob
from fleet.errors import FleetError
from fleet.fanout import all_of
from fleet.host import on_host
from fleet.inventory import Host, Inventory
from fleet.runtime.console import Console
from fleet.transport import transport_for

log = logging.getLogger(__name__)


@dataclass
class CheckRow:
    host: str
    ssh: str = "-"
    docker: str = "-"
    image: str = "-"
    disk: str = "-"
    gpus: str = "-"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_row(host: str, report: dict[str, str], *, need_kb: int, image: str | None, gpus: bool) -> CheckRow:
    """What one host's check script said → a row, with every problem named."""
    row = CheckRow(host, ssh="ok")
    docker = report.get("docker", "no answer")
    row.docker = docker.removeprefix("ok ") if docker.startswith("ok") else "FAIL"
    if not docker.startswith("ok"):
        row.problems.append(f"docker: {docker}")
        return row
    if image:
        row.image = report.get("image", "?")
        if row.image not in ("present", "pulled"):
            row.problems.append(f"image {image}: {row.image}")
            row.image = "FAIL"
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


def _parse_report(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def check(inventory: Inventory, job: ProcessingJob | None, console: Console, *,
                docker_timeout: int) -> int:
    """`fleet check`: preflight every host in parallel; a table; 0 when every host passed."""
    image = job.AppSpecification.ImageUri if job else None
    need_kb = job.ProcessingResources.ClusterConfig.VolumeSizeInGB * 1024 * 1024 if job else 0
    if job is not None and job.instance_count > len(inventory.hosts):
        console.notice(f"the job asks for {job.instance_count} hosts; the inventory has {len(inventory.hosts)}")

    async def one(host: Host) -> CheckRow:
        label = host.title
        try:
            async with transport_for(host, label) as transport:
                argv = on_host(host, "check", [image or "", host.job_root, str(need_kb), "1" if host.gpus else "0"],
                               docker_timeout)
                log.debug("%s: running the checks", label)
                async with asyncio.timeout(docker_timeout * 3 + (600 if image else 0)):
                    result = await transport.run(argv)
        except FleetError as exc:
            return CheckRow(label, ssh="FAIL", problems=[exc.message])
        except TimeoutError:
            return CheckRow(label, ssh="ok", problems=["the check did not finish"])
        return check_row(label, _parse_report(result.stdout.decode(errors="replace")),
                         need_kb=need_kb, image=image, gpus=bool(host.gpus))

    rows = await all_of(*(one(h) for h in inventory.hosts))
    table = [("HOST", "SSH", "DOCKER", "IMAGE", "DISK", "GPUS", "RESULT")]
    table += [(r.host, r.ssh, r.docker, r.image, r.disk, r.gpus, "ok" if r.ok else "FAIL: " + "; ".join(r.problems))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[6])
    return 0 if all(r.ok for r in rows) else 1
