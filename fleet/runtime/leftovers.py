"""`fleet gc`: containers and job directories that jobs which no longer run left on the
hosts. Every host is listed in parallel; what goes is decided by `leftovers_to_remove`, pure:
only this controller's, only of jobs that are not running."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
from dataclasses import dataclass

from fleet.contract.job import JOB_NAME_PATTERN
from fleet.errors import FleetError, InvalidInput
from fleet.fanout import all_of
from fleet.host import on_host
from fleet.inventory import Host, Inventory
from fleet.plan import CONTROLLER_LABEL, JOB_LABEL, RUN_FILE, RUN_LABEL
from fleet.runtime.console import Console
from fleet.runtime.store import JobStore, controller_id
from fleet.transport import Transport, transport_for

log = logging.getLogger(__name__)


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


def _removals(remove: list[Leftover]) -> list[str]:
    """gc-remove.sh's arguments: (kind, ref) pairs; a job directory's parent (WORKDIR/NAME)
    follows it, removed there once empty."""
    args = []
    for item in remove:
        args += [item.kind, item.ref]
        if item.kind == "dir":
            args += ["parent", posixpath.dirname(item.ref)]
    return args


def _running_jobs(store: JobStore) -> dict[str, str]:
    running = {}
    for record in store.records():
        if not record.ended:
            name = record.ProcessingJobName
            try:
                running[name] = store.read_run(name).RunId
            except InvalidInput:
                running[name] = ""
    return running


async def collect_garbage(inventory: Inventory, store: JobStore, console: Console, *,
                          dry_run: bool, docker_timeout: int) -> int:
    """`fleet gc`: on every host, remove what jobs that no longer run left; 0 when all went."""
    running = _running_jobs(store)
    controller = controller_id(store.home)

    async def sweep(host: Host, label: str, transport: Transport) -> int:
        log.debug("%s: listing leftovers", label)
        async with asyncio.timeout(docker_timeout + 10):
            listed = await transport.run(on_host(
                host, "gc-list", [host.job_root, RUN_FILE, JOB_LABEL, RUN_LABEL, CONTROLLER_LABEL], docker_timeout))
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
        log.debug("%s: removing %d leftover(s)", label, len(remove))
        argv = on_host(host, "gc-remove", _removals(remove), docker_timeout)
        async with asyncio.timeout(docker_timeout * (len(remove) + 1)):
            result = await transport.run(argv)
        failed = [line for line in result.stdout.decode(errors="replace").splitlines() if line.startswith("failed")]
        for line in failed:
            console.notice(f"{label}: could not remove {line.removeprefix('failed ')}")
        return 1 if failed else 0

    async def one(host: Host) -> int:
        label = host.title
        try:
            async with transport_for(host, label) as transport:
                return await sweep(host, label, transport)
        except FleetError as exc:
            console.notice(exc.message)
            return 1
        except TimeoutError:
            console.notice(f"{label}: docker did not answer within the time allowed")
            return 1

    failures = sum(await all_of(*(one(h) for h in inventory.hosts)))
    return 0 if failures == 0 else 1
