"""Looking after the hosts between jobs: `fleet check` (preflight alone, a row per host) and
`fleet gc` (containers and job directories of jobs that no longer run).

Both reach every host of the inventory in parallel; what to do is decided by pure
functions (`check_row`, `leftovers_to_remove`) from what the hosts reported.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from dataclasses import dataclass, field

from fleet.contract.container import CONTROLLER_LABEL, JOB_LABEL, RUN_LABEL
from fleet.contract.describe import TERMINAL
from fleet.contract.job import JOB_NAME_PATTERN, ProcessingJob
from fleet.errors import FleetError, InvalidInput
from fleet.inventory import Host, Inventory
from fleet.runtime import hostcommands
from fleet.runtime.console import Console
from fleet.runtime.store import JobStore, controller_id
from fleet.transport import Transport, transport_for

_CHECK = """
image=$1 need_kb=$2 gpus=$3 root=$4
out=$(d_bounded version --format '{{.Server.Version}}' 2>&1)
rc=$?
if [ $rc -eq 124 ]; then echo "docker=did not answer"; exit 0; fi
if [ $rc -ne 0 ]; then printf 'docker=%s\\n' "$(printf '%s' "$out" | tail -n 1)"; exit 0; fi
printf 'docker=ok %s\\n' "$out"
if [ -n "$image" ]; then
  if d_bounded image inspect "$image" >/dev/null 2>&1; then echo "image=present"
  elif err=$(d pull --quiet "$image" 2>&1 >/dev/null); then echo "image=pulled"
  else printf 'image=%s\\n' "$(printf '%s' "$err" | tail -n 1)"; fi
fi
if mkdir -p -- "$root" 2>/dev/null && probe=$(mktemp -p "$root" .fleet-check.XXXXXX 2>/dev/null); then
  rm -f -- "$probe"; echo "writable=yes"
else
  echo "writable=no"
fi
printf 'free_kb=%s\\n' "$(free_kb "$root")"
if [ "$gpus" = 1 ]; then
  if gpu_runtime; then echo "gpus=ok"; else echo "gpus=missing"; fi
fi
"""

_LIST = f"""
root=$1
d_bounded ps -a --filter label={JOB_LABEL} --format \
  'container\\t{{{{.ID}}}}\\t{{{{.Names}}}}\\t{{{{.Label "{JOB_LABEL}"}}}}\\t{{{{.Label "{RUN_LABEL}"}}}}\\t{{{{.Label "{CONTROLLER_LABEL}"}}}}' \
  || exit 3
for dir in "$root"/*/algo-*; do
  [ -d "$dir" ] || continue
  {{ head -n 2 -- "$dir/.fleet-run" 2>/dev/null; echo; echo; }} | {{
    IFS= read -r run; IFS= read -r owner
    printf 'dir\\t%s\\t%s\\t%s\\n' "$dir" "$run" "$owner"
  }}
done
"""

_REMOVE = """
for item; do
  case $item in
    container:*) d_bounded rm --force "${item#container:}" >/dev/null || echo "failed $item" ;;
    dir:*) dir=${item#dir:}; rm -rf -- "$dir" || echo "failed $item"; rmdir -- "${dir%/*}" 2>/dev/null ;;
  esac
done
exit 0
"""


def _on_host(host: Host, body: str, args: list[str], docker_timeout: int) -> list[str]:
    return hostcommands.script(host.docker_command, body, args, docker_timeout=docker_timeout)


# -- fleet check ------------------------------------------------------------------------------

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
        label = f"{host.label} ({host.address})" if host.label != host.address else host.label
        transport = transport_for(host, label)
        try:
            await transport.connect()
            result = await asyncio.wait_for(transport.run(_on_host(
                host, _CHECK, [image or "", str(need_kb), "1" if host.gpus else "0", host.job_root],
                docker_timeout)), docker_timeout * 3 + (600 if image else 0))
        except FleetError as exc:
            return CheckRow(label, ssh="FAIL", problems=[exc.message])
        except asyncio.TimeoutError:
            return CheckRow(label, ssh="ok", problems=["the check did not finish"])
        finally:
            await transport.close()
        return check_row(label, _parse_report(result.stdout.decode(errors="replace")),
                         need_kb=need_kb, image=image, gpus=bool(host.gpus))

    rows = await asyncio.gather(*(one(h) for h in inventory.hosts))
    table = [("HOST", "SSH", "DOCKER", "IMAGE", "DISK", "GPUS", "RESULT")]
    table += [(r.host, r.ssh, r.docker, r.image, r.disk, r.gpus, "ok" if r.ok else "FAIL: " + "; ".join(r.problems))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[6])
    return 0 if all(r.ok for r in rows) else 1


# -- fleet gc ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leftover:
    kind: str  # "container" | "dir"
    ref: str  # container id, or the job directory's path
    job: str
    run: str  # the run id it carries ("" when it carries none)
    controller: str  # the controller label it carries ("" when none)
    name: str = ""  # the container's name

    def describe(self) -> str:
        return f"container {self.name}" if self.kind == "container" else f"directory {self.ref}"


def parse_leftovers(text: str, root: str) -> list[Leftover]:
    """The list script's lines → Leftovers; a directory must be ROOT/JOB/algo-K."""
    found = []
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == "container" and len(parts) == 6:
            _, ref, name, job, run, controller = parts
            found.append(Leftover("container", ref, job, run, controller, name))
        elif parts[0] == "dir" and len(parts) == 4:
            _, path, run, controller = parts
            job = posixpath.basename(posixpath.dirname(path))
            if posixpath.dirname(posixpath.dirname(path)) != root.rstrip("/") or \
                    not re.fullmatch(r"algo-[0-9]+", posixpath.basename(path)):
                continue
            found.append(Leftover("dir", path, job, run, controller))
    return found


def leftovers_to_remove(leftovers: list[Leftover], running: dict[str, str], controller: str
                        ) -> tuple[list[Leftover], list[tuple[Leftover, str]]]:
    """Which leftovers go: those of this controller's jobs that do not run (not in the
    store, or ended). `running` maps the store's running jobs to their run ids.

    Returns (to remove, [(left alone, why)])."""
    remove, kept = [], []
    for item in leftovers:
        if not re.fullmatch(JOB_NAME_PATTERN, item.job):
            kept.append((item, "not a fleet job name"))
        elif item.controller and item.controller != controller:
            kept.append((item, f"belongs to another fleet ({item.controller})"))
        elif item.job in running and (not item.run or not running[item.job] or item.run == running[item.job]):
            kept.append((item, "its job is running"))
        else:
            remove.append(item)
    return remove, kept


def _running_jobs(store: JobStore) -> dict[str, str]:
    running = {}
    for record in store.records():
        if record.get("ProcessingJobStatus") not in TERMINAL:
            name = record["ProcessingJobName"]
            try:
                running[name] = store.read_run(name).get("RunId", "")
            except InvalidInput:
                running[name] = ""
    return running


async def collect_garbage(inventory: Inventory, store: JobStore, console: Console, *,
                          dry_run: bool, docker_timeout: int) -> int:
    """`fleet gc`: on every host, remove what jobs that no longer run left; 0 when all went."""
    running = _running_jobs(store)
    controller = controller_id(store.home)
    failures = 0

    async def one(host: Host) -> int:
        label = f"{host.label} ({host.address})" if host.label != host.address else host.label
        transport: Transport = transport_for(host, label)
        try:
            await transport.connect()
            listed = await asyncio.wait_for(transport.run(_on_host(host, _LIST, [host.job_root], docker_timeout)),
                                            docker_timeout + 10)
            if listed.exit_status != 0:
                console.notice(f"{label}: cannot list containers: "
                               f"{listed.stderr.decode(errors='replace').strip() or 'docker did not answer'}")
                return 1
            remove, kept = leftovers_to_remove(
                parse_leftovers(listed.stdout.decode(errors="replace"), host.job_root), running, controller)
            for item, why in kept:
                if why != "its job is running":
                    console.notice(f"{label}: left alone: {item.describe()} ({why})")
            for item in remove:
                print(f"{label}: {'would remove' if dry_run else 'removing'} {item.describe()} (job {item.job})")
            if dry_run or not remove:
                return 0
            result = await asyncio.wait_for(transport.run(_on_host(
                host, _REMOVE, [f"{item.kind}:{item.ref}" for item in remove], docker_timeout)),
                docker_timeout * (len(remove) + 1))
            failed = [line for line in result.stdout.decode(errors="replace").splitlines() if line.startswith("failed")]
            for line in failed:
                console.notice(f"{label}: could not remove {line.removeprefix('failed ')}")
            return 1 if failed else 0
        except FleetError as exc:
            console.notice(exc.message)
            return 1
        except asyncio.TimeoutError:
            console.notice(f"{label}: docker did not answer within the time allowed")
            return 1
        finally:
            await transport.close()

    failures = sum(await asyncio.gather(*(one(h) for h in inventory.hosts)))
    return 0 if failures == 0 else 1
