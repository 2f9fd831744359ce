"""fleet's command line: verbs → calls, and the one place mapping errors to exit codes.

Exit codes of `fleet run`, `fleet attach` and `fleet wait`: 0 Completed, 1 Failed (the
job's code, its request, or fleet), 2 invalid input or usage (nothing was started), 75 Failed
because of the machinery (a host, SSH, docker, a pull, a disk: worth retrying), 124
MaxRuntimeExceeded, 130 Stopped. `fleet stop`: 0 once the job no longer runs. `fleet check`:
0 when every host passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import posixpath
import shlex
import signal
import socket
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fleet.contract.configfiles import DEFAULT_ACCOUNT
from fleet.contract.describe import TERMINAL, JobDescription, new_record
from fleet.contract.job import ProcessingJob, ignored_fields, load_job
from fleet.data.plan import DataPlan, HostInput, HostUpload, InputPlan, OutputPlan, plan_data
from fleet.data.sources import InputObject, check_job_data
from fleet.errors import FleetError, InvalidInput, JobStopped
from fleet.home import fleet_home
from fleet.image.reference import parse_reference
from fleet.inventory import SshHost, load_inventory
from fleet.plan import CONTAINER_OWNED, PRIVATE_DIR, ClusterPlan, job_arn, plan_cluster, record_hosts, select_hosts
from fleet.runtime.console import Console
from fleet.runtime.store import JobStore, OwnerUnproven, RunOptions, RunRecord, controller_id

if TYPE_CHECKING:
    from fleet.runtime.executor import JobExecution

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2, like invalid input
        self.print_usage(sys.stderr)
        raise InvalidInput(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # An unknown verb's message lists the verbs `fleet --help` lists, not the internal ones.
        if isinstance(action, argparse._SubParsersAction) and value not in (action.choices or {}):
            listed = ", ".join(repr(choice.dest) for choice in action._choices_actions)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {listed})")
        super()._check_value(action, value)


EPILOG = """\
exit codes of `fleet run` (also with --detach), `fleet attach` and `fleet wait`:
  0    Completed: every container exited 0
  1    Failed, and running it again would fail again: a container exited non-zero
       (AlgorithmError), the job cannot run as asked (ClientError: the registry refuses the
       image: credentials, an unknown tag; an input matches nothing, docker refuses the
       container), or a bug of fleet's
  2    invalid input or usage: nothing was started, no record was written
  75   Failed because of the machinery (EX_TEMPFAIL: worth retrying, e.g. Slurm's
       RequeueExit=75): a host unreachable, lost or refusing SSH, its host key, docker
       down or hung, a registry out of reach, a disk full, a write on a host failed. Several hosts
       failing: 75 only if every one failed so. `fleet wait`: also when the job's fleet
       process is gone without ending it (fleet attach NAME)
  124  Failed with MaxRuntimeExceeded: StoppingCondition.MaxRuntimeInSeconds elapsed
  130  Stopped (Ctrl-C, SIGTERM, fleet stop)
`fleet logs -f`: 0 once the job ended and its logs are printed (75 if its fleet process is
gone). `fleet stop`: 0 once the job no longer runs. `fleet check`, `fleet gc`: 0 when every
host passed (was cleaned), else 1. A usage error, or `fleet` alone: 2.

environment:
  FLEET_HOME   where the records and logs are kept: $FLEET_HOME/jobs/NAME/ (default ~/.fleet)
  FLEET_DEBUG  1: as --debug
  AWS_REGION or AWS_DEFAULT_REGION, FLEET_ACCOUNT_ID (12 digits, default 000000000000): the
               job's ARN (and fleet serve's STS account); S3 is reached through the standard
               AWS chain (AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws)
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fleet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet", description="Run SageMaker Processing jobs on your own hosts.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fleet {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="debug logs on stderr, and the traceback of an unexpected error "
                             "(also FLEET_DEBUG=1)")
    # Not required: `fleet` alone prints the whole help (main), not a one-line usage error.
    verbs = parser.add_subparsers(dest="verb", parser_class=_Parser)

    run = verbs.add_parser("run", help="run a CreateProcessingJob request on the inventory's hosts",
                           description="Run a CreateProcessingJob request on the inventory's hosts: "
                                       "the first InstanceCount hosts become algo-1..algo-N.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("job", type=Path, help="the request: JSON, or YAML when named .yaml/.yml")
    run.add_argument("--inventory", "-i", type=Path, help="hosts.yaml (default: this machine alone)")
    run.add_argument("--name", help="override ProcessingJobName")
    run.add_argument("--dry-run", action="store_true", help="print what would happen; touch nothing")
    run.add_argument("--list-inputs", action="store_true",
                     help="with --dry-run: list the inputs (read-only: S3 ListObjectsV2, a manifest read) to show "
                          "each host's objects; without it the dry run needs no network and shows the rules")
    run.add_argument("--detach", action="store_true",
                     help="return once every container has started (exit 0; or fail as run would, with its "
                          "exit code), the job owned by a fleet process in the background: fleet logs -f NAME, "
                          "fleet wait NAME, fleet stop NAME; fleet attach NAME if that process dies")
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # --detach's child: see runtime/detach.py
    run.add_argument("--keep", action="store_true", help="keep the job directories on the hosts")
    run.add_argument("--push-image", action="store_true",
                     help="every host that lacks the image gets it from the controller's Docker over SSH "
                          "(what it lacks only), whatever the inventory's image_source")
    run.add_argument("--image-archive", type=Path, metavar="FILE",
                     help="the image as a `docker save` (or OCI) archive, pushed to the hosts that lack it "
                          "(for a controller without Docker)")
    run.add_argument("--stop-grace", type=int, default=30, metavar="SECONDS",
                     help="time between SIGINT and SIGKILL when stopping (default 30)")
    run.add_argument("--docker-timeout", type=int, default=20, metavar="SECONDS",
                     help="how long docker may take to answer before a host counts as broken (default 20)")
    run.add_argument("--host-timeout", type=float, default=120, metavar="SECONDS",
                     help="how long a host may stay out of reach while its container runs before "
                          "the job fails (default 120)")

    attach = verbs.add_parser("attach", help="take over a job whose `fleet run` is gone (killed, rebooted)")
    attach.add_argument("name")

    stop = verbs.add_parser("stop", help="stop a running job (SIGINT, SIGKILL after the grace)")
    stop.add_argument("name")

    listing = verbs.add_parser("list", help="the jobs in FLEET_HOME, newest first")
    listing.add_argument("--status", choices=["InProgress", "Stopping", "Completed", "Failed", "Stopped"])
    listing.add_argument("--json", action="store_true", help="print DescribeProcessingJob records as JSON")

    gc = verbs.add_parser("gc", help="remove containers and job directories of jobs that no longer run")
    gc.add_argument("--inventory", "-i", type=Path, required=True, help="hosts.yaml")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--docker-timeout", type=int, default=20, metavar="SECONDS")

    check = verbs.add_parser("check", help="preflight every host of the inventory (one row per host)")
    check.add_argument("job", type=Path, nargs="?", help="a request: check its image and VolumeSizeInGB too")
    check.add_argument("--inventory", "-i", type=Path, required=True, help="hosts.yaml")
    check.add_argument("--docker-timeout", type=int, default=20, metavar="SECONDS")

    describe = verbs.add_parser("describe", help="the job's DescribeProcessingJob record")
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print the whole record as JSON")

    serve = verbs.add_parser(
        "serve", help="serve the SageMaker API (Create/Describe/List/StopProcessingJob, and the CloudWatch "
                      "Logs calls of the SDK) for the inventory's hosts",
        description="Point boto3, the AWS CLI or the SageMaker Python SDK at it with the `export` lines it "
                    "prints on standard output when it listens (AWS_ENDPOINT_URL_SAGEMAKER, "
                    "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS, AWS_ENDPOINT_URL_STS, and "
                    "SAGEMAKER_USER_CONFIG_OVERRIDE: an SDK config file with the default bucket, in FLEET_HOME). "
                    "Requests are SigV4-verified against the key of your AWS credential chain (and --credentials). "
                    "Jobs wait for free hosts, first come first served; each runs in a fleet process of its own "
                    "that outlives the server (SIGTERM stops serving, never the jobs).")
    serve.add_argument("--inventory", "-i", type=Path, required=True, help="hosts.yaml")
    serve.add_argument("--listen", default="127.0.0.1:8180", metavar="HOST:PORT")
    serve.add_argument("--credentials", type=Path, metavar="FILE",
                       help="more accepted keys: an AWS shared-credentials file (every profile)")
    serve.add_argument("--default-bucket", metavar="BUCKET",
                       help="the SDK's default bucket (in your S3), written to the SDK config file serve prints "
                            "(default: sagemaker-REGION-ACCOUNT, as sagemaker.Session() names it)")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE")
    serve.add_argument("--tls-key", type=Path, metavar="FILE")
    serve.add_argument("--stop-grace", type=int, default=30, metavar="SECONDS")
    serve.add_argument("--docker-timeout", type=int, default=20, metavar="SECONDS")
    serve.add_argument("--host-timeout", type=float, default=120, metavar="SECONDS")
    serve.add_argument("--max-connections", type=int, metavar="N",
                       help="open connections served at once; more are answered 503 ServiceUnavailable "
                            "(default: half the open-files limit, at most 1024)")
    serve.add_argument("--max-connections-per-client", type=int, metavar="N",
                       help="open connections of one client address (IPv6: one /64) at once; more are answered "
                            "503 ServiceUnavailable (default: a quarter of --max-connections)")
    serve.add_argument("--max-queued", type=int, default=500, metavar="N",
                       help="jobs waiting for hosts at most; CreateProcessingJob beyond is refused with "
                            "ResourceLimitExceeded (default: 500)")
    serve.add_argument("--metrics-token-file", type=Path, metavar="FILE",
                       help="GET /metrics (Prometheus) then needs `Authorization: Bearer TOKEN`, TOKEN the "
                            "file's line (0600). Without it /metrics is open on a loopback --listen, off otherwise")
    serve.add_argument("--page-profile", action="append", metavar="NAME",
                       help="print a login URL of the jobs page (at /) acting for this profile of --credentials "
                            "(repeatable; default: fleet-controller, the operator, who sees every job)")
    # Internal: the fleet process of one served job (serve/scheduler.py starts it). No help=, so argparse
    # lists it nowhere (help= adds the row, even SUPPRESS, which it printed as "==SUPPRESS=="); the usage's
    # {verb,...} is set below from the listed verbs only.
    worker = verbs.add_parser("serve-worker")
    worker.add_argument("name")
    logs = verbs.add_parser("logs", help="the job's stored logs")
    logs.add_argument("name")
    logs.add_argument("--host", help="one host's log, without the [algo-k] prefix (e.g. algo-2)")
    logs.add_argument("--raw", action="store_true",
                      help="with --host: its stored bytes unchanged (controls and long lines included), "
                           "for a pipe or a file; refused on a terminal")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="print the logs as they grow until the job ends (every line once), from any terminal")
    wait = verbs.add_parser("wait", help="wait until the job ends; exit with the code its `fleet run` had",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    wait.add_argument("name")
    verbs.metavar = "{" + ",".join(action.dest for action in verbs._choices_actions) + "}"
    return parser


def _region_and_account() -> tuple[str, str]:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    account = os.environ.get("FLEET_ACCOUNT_ID") or DEFAULT_ACCOUNT
    if not (len(account) == 12 and account.isascii() and account.isdigit()):
        raise InvalidInput(f"FLEET_ACCOUNT_ID {account!r}: an AWS account id is 12 digits")
    return region, account


def _dry_run_address(host) -> str:
    if host.ip:
        return host.ip
    if host.transport == "local":
        return "127.0.0.1"
    try:  # a local lookup only: the dry run touches no host
        return str(socket.getaddrinfo(host.address, None)[0][4][0])
    except OSError:
        return f"<address of {host.address}>"


def _print_plan(plan: ClusterPlan, data: DataPlan) -> None:
    print(f"job {plan.name} ({plan.arn}): {len(plan.hosts)} host(s); nothing is touched (--dry-run)")
    for hp in plan.hosts:
        host = hp.host
        where = (f"ssh {host.ssh_user}@{host.address}:{host.port}" if isinstance(host, SshHost)
                 else "this machine" if host.transport == "local" else f"srun --nodelist={host.address}")
        print(f"\n{hp.algo}: {host.label} ({where}), reached by the other hosts at {hp.address}")
        print(f"  job directory: {hp.job_dir} (0711; its {PRIVATE_DIR}/ 0700: the SSH user's alone)")
        for directory, mode in hp.tree:
            shown = "0755, the image's user's" if mode == CONTAINER_OWNED else mode
            print(f"  mkdir  {PRIVATE_DIR}/{directory}/ ({shown})")
        for path, content in hp.files.items():
            print(f"  write  {PRIVATE_DIR}/{path} ({len(content)} bytes)")
        # Values are often secrets: a terminal line (and a scrollback, a CI log) never shows them.
        in_file = {key: value for key, value in (plan.job.Environment or {}).items() if key not in hp.inherited}
        if in_file:
            print(f"  write  {posixpath.relpath(hp.env_file, hp.job_dir)} (0600, removed once the container "
                  f"is created): {_masked(in_file)}")
        for index, key in enumerate(hp.inherited, start=1):
            print(f"  write  {posixpath.relpath(hp.env_value_file(index), hp.job_dir)} (0600, removed once the "
                  f"container is created): {key}=***, set in the environment of docker create alone")
        print(f"  resourceconfig.json: {json.dumps(json.loads(hp.files['config/resourceconfig.json']))}")
        print(f"  docker: {shlex.join(hp.docker + hp.docker_create)}")
        print(f"  docker: {shlex.join(hp.docker + ['start', hp.container])}   (once every host is ready)")
        _print_data(*data.for_host(hp.algo))


SHOWN_OBJECTS = 10  # a host's objects listed by name in a dry run; the rest counted


def _print_data(inputs: list[tuple[InputPlan, HostInput]], outputs: list[tuple[OutputPlan, HostUpload]]) -> None:
    """One host's inputs (objects, path, why) and uploads, from the DataPlan."""
    for item, mine in inputs:
        where = posixpath.join(PRIVATE_DIR, "inputs", str(item.index))
        head = (f"  input  {item.name} ({item.distribution} of {item.uri}) → {where}/ by the {mine.path} path "
                f"({mine.why})")
        if not item.listed:
            print(f"{head}: not listed (--list-inputs lists them, read-only)")
            continue
        print(f"{head}: {len(mine.objects)} of {item.objects} object(s), {mine.bytes} of {item.bytes} bytes")
        for obj in mine.objects[:SHOWN_OBJECTS]:
            print(f"           {obj.name} ({obj.size} bytes) → {obj.relative}")
        if len(mine.objects) > SHOWN_OBJECTS:
            print(f"           ... and {len(mine.objects) - SHOWN_OBJECTS} more")
    for output, upload in outputs:
        when = "while the container runs, and a last time" if output.continuous else "when the job Completed"
        where = posixpath.join(PRIVATE_DIR, "outputs", str(output.index))
        print(f"  output {output.name} ({output.mode}): {where}/ → {output.destination} {when}, by the {upload.path} "
              f"path ({upload.why})")


async def _dry_run_listing(job: ProcessingJob, console: Console) -> list[list[InputObject]]:
    """Every input's objects, as the run lists them (read-only: no host is touched)."""
    from fleet.runtime.transfers import JobData

    data = JobData(job, console)
    try:
        await data.open()
        await data.list_inputs()
    finally:
        await data.close()
    return data.inputs or []


async def _stop_grace(asked: int, console: Console) -> int:
    """--stop-grace, made to fit in Slurm's KillWait when fleet runs inside a Slurm job:
    scancel and the time limit give fleet's whole stop that long before SIGKILL."""
    from fleet import slurm
    kill_wait = await slurm.kill_wait()
    grace = slurm.stop_grace(asked, kill_wait)
    if grace != asked:
        console.notice(f"stop grace {grace} s, not {asked} s: Slurm's KillWait is {kill_wait} s "
                       f"(scancel and the time limit give fleet's whole stop that long)")
    return grace


def _masked(environment: dict[str, str]) -> str:
    """The Environment for a terminal: its keys, each value `***` (`describe --json` has them)."""
    return " ".join(f"{key}=***" for key in environment)


async def _run(args: argparse.Namespace, console: Console) -> int:
    # Everything that can be refused without touching a host is refused here, before the
    # record exists, in both modes (exit 2).
    job = load_job(args.job, args.name)
    check_job_data(job, str(args.job))
    inventory = load_inventory(args.inventory)
    hosts = select_hosts(job, inventory,
                         str(args.inventory) if args.inventory else "this machine alone (no --inventory)")
    if args.stop_grace < 0 or args.docker_timeout < 1 or args.host_timeout <= 0:
        raise InvalidInput("--stop-grace must be >= 0, --docker-timeout >= 1 and --host-timeout > 0")
    parse_reference(job.AppSpecification.ImageUri)
    archive = None
    if args.image_archive is not None:
        from fleet.image.archive import open_archive
        archive = str(args.image_archive.resolve())
        image = (await asyncio.to_thread(open_archive, Path(archive))).image
        console.notice(f"--image-archive {args.image_archive}: image {image.id} "
                       f"({image.size / 1e6:.1f} MB, {len(image.layers)} layers)")
    for notice in ignored_fields(job):
        console.notice(notice)
    region, account = _region_and_account()
    stop_grace = await _stop_grace(args.stop_grace, console)
    if args.dry_run:
        plan = plan_cluster(job, hosts, [_dry_run_address(h) for h in hosts],
                            stop_grace=stop_grace, region=region, account=account)
        listing = await _dry_run_listing(job, console) if args.list_inputs else None
        _print_plan(plan, plan_data(plan, listing))
        return 0

    from fleet.runtime.executor import JobExecution

    store = JobStore(fleet_home())
    record = store.create(new_record(job, job_arn(job, region, account), record_hosts(hosts)))
    ownership = store.claim(job.ProcessingJobName)
    try:
        options = RunOptions(stop_grace=stop_grace, keep=args.keep, docker_timeout=args.docker_timeout,
                             host_timeout=args.host_timeout, region=region, account=account,
                             push_image=args.push_image, image_archive=archive,
                             insecure_registries=tuple(inventory.insecure_registries))
        # What another fleet process needs to take the job over if this one dies.
        run = RunRecord.new(job, hosts, options, run_id=uuid.uuid4().hex[:16],
                            controller=controller_id(store.home))
        record.save_run(run)
        execution = JobExecution(run, record, console)
        _on_signals(execution.request_stop)
        error = await _execute(execution, store, args.ready_fd)
    finally:
        ownership.release()
    return _ended(console, record, error)


async def _execute(execution: JobExecution, store: JobStore, ready_fd: int | None) -> FleetError | None:
    """Run the job; with `ready_fd` (the child of `fleet run --detach`), tell the parent once
    every container has started."""
    if ready_fd is None:
        return await execution.execute()
    from fleet.runtime.detach import announce_started
    name = execution.record.description.ProcessingJobName
    async with asyncio.TaskGroup() as tasks:
        announcer = tasks.create_task(announce_started(execution, store, name, ready_fd), name="detach")
        try:
            return await execution.execute()
        finally:
            announcer.cancel()


def _on_signals(handler) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handler)


def _ended(console: Console, record, error: FleetError | None) -> int:
    """Say how the job ended; its exit code."""
    name, status = record.description.ProcessingJobName, record.status
    if error is None:
        console.notice(f"{name}: {status}")
        return 0
    console.notice(f"{name}: {status}: {error.failure_reason if status == 'Failed' else error.message}")
    return error.exit_code


async def _take_over(name: str, console: Console, *, stop: bool) -> int:
    """Run a job on from where its `fleet run` left it: the same end, the same exit code."""
    from fleet.runtime.executor import JobExecution

    store = JobStore(fleet_home())
    record = store.record(name)
    if record.status in TERMINAL:
        raise InvalidInput(f"job {name} is {record.status}: it no longer runs")
    ownership = store.claim(name)
    try:
        execution = JobExecution(store.read_run(name), record, console)
        _on_signals(execution.request_stop)
        if stop or record.status == "Stopping":
            execution.request_stop()
        console.notice(f"taking over {name} ({len(execution.instances)} host(s))")
        error = await execution.execute(take_over=True, started=record.description.ProcessingStartTime)
        return _ended(console, record, error)
    finally:
        ownership.release()


STOP_POLL = 0.05  # seconds between looks at the record while the owner stops the job
UNPROVEN_WAIT = 2.0  # seconds a held owner lock may name no provable process (a new owner
# writes its pid right after locking) before `fleet stop` refuses to signal anyone


async def _stop(name: str, console: Console) -> int:
    """Stop a job: through the fleet process running it, or, when there is none, at the
    hosts directly. 0 once the job no longer runs."""
    store = JobStore(fleet_home())
    record = store.load(name)
    if record.ended:
        console.notice(f"{name}: already {record.ProcessingJobStatus}; nothing to stop")
        return 0
    pid = await _signal_owner(store, name)
    if pid is not None:
        console.notice(f"stopping {name} (through its fleet process, pid {pid})")
        while True:
            await asyncio.sleep(STOP_POLL)
            status = store.load(name).ProcessingJobStatus
            if status in TERMINAL:
                console.notice(f"{name}: {status}")
                return 0
            if store.owner(name) is None:  # it ended, or died meanwhile: go on without it
                break
        status = store.load(name).ProcessingJobStatus
        if status in TERMINAL:
            console.notice(f"{name}: {status}")
            return 0
    console.notice(f"stopping {name} at its hosts (no fleet process runs it)")
    code = await _take_over(name, console, stop=True)
    return 0 if code in (0, JobStopped.exit_code) or store.load(name).ended else code


async def _signal_owner(store: JobStore, name: str) -> int | None:
    """SIGTERM (a graceful stop, as Ctrl-C) to the job's fleet process, once proven to be it;
    its pid, or None when none runs the job. OwnerUnproven after UNPROVEN_WAIT."""
    deadline = asyncio.get_running_loop().time() + UNPROVEN_WAIT
    while True:
        try:
            return store.signal_owner(name, signal.SIGTERM)
        except OwnerUnproven:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(STOP_POLL)


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(record: JobDescription) -> str:
    start = record.ProcessingStartTime or record.CreationTime
    if not start:
        return "-"
    end = record.ProcessingEndTime
    stop = datetime.fromisoformat(end) if end else datetime.now(UTC)
    seconds = int((stop - datetime.fromisoformat(start)).total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _list(args: argparse.Namespace) -> int:
    store = JobStore(fleet_home())
    records = [r for r in store.records() if not args.status or r.ProcessingJobStatus == args.status]
    if args.json:
        print(json.dumps([r.stored() for r in records], indent=2))
        return 0
    rows = [("NAME", "STATUS", "HOSTS", "START", "DURATION")]
    for r in records:
        status = r.ProcessingJobStatus or "?"
        if status not in TERMINAL and r.SecondaryStatus == "Starting":
            status += " (waiting for hosts: fleet serve)"
        elif status not in TERMINAL and store.owner(r.ProcessingJobName) is None:
            status += " (no fleet process: fleet attach)"
        hosts = ",".join(h.Name or algo for algo, h in r.Hosts.items())
        rows.append((r.ProcessingJobName, status, hosts, _when(r.ProcessingStartTime or r.CreationTime),
                     _duration(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0


def _describe(args: argparse.Namespace) -> int:
    store = JobStore(fleet_home())
    record = store.load(args.name)
    if args.json:
        print(json.dumps(store.stored(args.name), indent=2))  # as stored, its fields in their order
        return 0
    print(f"{record.ProcessingJobName}: {record.ProcessingJobStatus}")
    for key in ("FailureReason", "ExitMessage", "CreationTime", "ProcessingStartTime", "ProcessingEndTime"):
        if getattr(record, key) is not None:
            print(f"  {key}: {getattr(record, key)}")
    if record.Environment:
        print(f"  Environment: {_masked(record.Environment)}")
    for algo, host in record.Hosts.items():
        print(f"  {algo}: {host.Name} ({host.Address})"
              + (f" exit code {host.ExitCode}" if host.ExitCode is not None else ""))
    return 0


def _logs(args: argparse.Namespace, console: Console) -> int:
    from fleet.runtime.follow import follow_logs, print_logs
    if args.raw and sys.stdout.isatty():
        raise InvalidInput("--raw writes the stored bytes unchanged, escape sequences included (screen clears, "
                           "clipboard writes): only to a pipe or a file, never to a terminal; without --raw "
                           "they are shown as \\xNN")
    store = JobStore(fleet_home())
    if args.follow:
        return follow_logs(store, args.name, sys.stdout.buffer, console, host=args.host, raw=args.raw)
    print_logs(store, args.name, sys.stdout.buffer, host=args.host, raw=args.raw)
    return 0


async def _serve(args: argparse.Namespace, console: Console) -> int:
    from fleet.serve.auth import CONTROLLER, KeyRing, is_loopback
    from fleet.serve.metrics import read_token
    from fleet.serve.page import Page, PageAccess
    from fleet.serve.scheduler import Scheduler
    from fleet.serve.sdkconfig import MERGE_HINT, check_bucket, default_bucket_name, exports, write_sdk_config
    from fleet.serve.server import listen_address, serve
    from fleet.serve.services import Services

    inventory = load_inventory(args.inventory)
    host, _ = listen_address(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidInput("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        import ssl
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {exc}") from exc
    elif not is_loopback(host):
        console.notice(f"warning: --listen {args.listen} is not loopback and there is no --tls-cert/--tls-key: "
                       f"requests (signed, not encrypted: job requests hold Environment values) cross the "
                       f"network in the clear")
    keys = KeyRing.from_chain()
    if args.credentials:
        keys = keys | KeyRing.from_file(args.credentials)
    if not keys:
        raise InvalidInput("fleet serve accepts no key: the AWS credential chain gives none "
                           "(AWS_ACCESS_KEY_ID, ~/.aws/credentials, ...) and no --credentials FILE was given")
    region, account = _region_and_account()
    options = RunOptions(stop_grace=args.stop_grace, docker_timeout=args.docker_timeout,
                         host_timeout=args.host_timeout, region=region, account=account,
                         insecure_registries=tuple(inventory.insecure_registries))
    store = JobStore(fleet_home())
    if args.max_queued < 1:
        raise InvalidInput("--max-queued must be >= 1")
    api = Services(store, Scheduler(store, inventory, options, args.max_queued), region, account)
    if args.max_connections is not None and args.max_connections < 1:
        raise InvalidInput("--max-connections must be >= 1")
    if args.max_connections_per_client is not None and args.max_connections_per_client < 1:
        raise InvalidInput("--max-connections-per-client must be >= 1")
    metrics_token = read_token(args.metrics_token_file) if args.metrics_token_file else None
    if metrics_token is None and not is_loopback(host):
        console.notice(f"GET /metrics is off: --listen {args.listen} is not loopback and there is no "
                       f"--metrics-token-file")
    if args.default_bucket is not None:
        bucket = check_bucket(args.default_bucket, "--default-bucket")
    else:
        bucket = check_bucket(default_bucket_name(region, account), "the default bucket (AWS_REGION, FLEET_ACCOUNT_ID)")
    config_file = write_sdk_config(fleet_home().absolute(), bucket)

    def listening(url: str) -> None:
        """The exports on standard output (`fleet serve ... >serve.env` keeps them to source),
        what they do on standard error."""
        console.out.write("".join(f"{line}\n" for line in exports(url, config_file)).encode())
        console.out.flush()
        console.notice(f"the export lines above point the SageMaker SDK, boto3 and the AWS CLI here (give them your "
                       f"S3's endpoint and key as for fleet run)\n"
                       f"{config_file}: the SDK's default bucket {bucket} (so Session() asks STS nothing), "
                       f"telemetry off\n"
                       f"if you have an SDK config file already: {MERGE_HINT}")

    access = PageAccess(secure=tls is not None)
    for profile in args.page_profile or [CONTROLLER.name]:
        principal = CONTROLLER if profile == CONTROLLER.name else \
            next((c.principal for c in keys if c.principal.name == profile), None)
        if principal is None:
            raise InvalidInput(f"--page-profile {profile}: no profile of that name in --credentials "
                               f"{args.credentials or '(none given)'}")
        access.mint(principal)
    await serve(api, keys, args.listen, tls, console.notice, args.max_connections, args.max_connections_per_client,
                metrics_token, on_listening=listening, page=Page(api, access))
    return 0


async def _serve_worker(name: str, console: Console) -> int:
    """The fleet process of one job `fleet serve` placed: its run.json has the hosts."""
    from fleet.runtime.executor import JobExecution

    store = JobStore(fleet_home())
    ownership = store.claim(name)
    try:
        record = store.record(name)
        if record.status != "InProgress":
            raise InvalidInput(f"job {name} is {record.status}: not started")
        execution = JobExecution(store.read_run(name), record, console)
        _on_signals(execution.request_stop)
        error = await execution.execute()
    finally:
        ownership.release()
    return _ended(console, record, error)


async def _asynchronous(args: argparse.Namespace, console: Console) -> int:
    if args.verb == "run":
        return await _run(args, console)
    if args.verb == "serve":
        return await _serve(args, console)
    if args.verb == "serve-worker":
        return await _serve_worker(args.name, console)
    if args.verb == "attach":
        return await _take_over(args.name, console, stop=False)
    if args.verb == "stop":
        return await _stop(args.name, console)
    from fleet.runtime import leftovers, preflight
    inventory = load_inventory(args.inventory)
    if args.verb == "gc":
        return await leftovers.collect_garbage(inventory, JobStore(fleet_home()), console,
                                              dry_run=args.dry_run, docker_timeout=args.docker_timeout)
    job = load_job(args.job) if args.job else None
    if job is not None:
        check_job_data(job, str(args.job))  # what `fleet run` would refuse, refused here too
    return await preflight.check(inventory, job, console, docker_timeout=args.docker_timeout)


def _debugging(args: argparse.Namespace | None) -> bool:
    return bool((args is not None and args.debug) or os.environ.get("FLEET_DEBUG"))


def _log_debug() -> None:
    """fleet's debug logs on stderr (other libraries: warnings only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("fleet").setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    console = Console()
    args = None
    try:
        parser = _parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version: printed; exit 0
            return exc.code if isinstance(exc.code, int) else 0
        if args.verb is None:  # `fleet` alone: the whole help, as a usage error
            parser.print_help(sys.stderr)
            return InvalidInput.exit_code
        if _debugging(args):
            _log_debug()
        if args.verb == "run" and args.list_inputs and not args.dry_run:
            raise InvalidInput("--list-inputs goes with --dry-run: a run lists its inputs itself")
        if args.verb == "run" and args.detach:
            if args.dry_run:
                raise InvalidInput("--detach and --dry-run: a dry run starts nothing to detach from")
            from fleet.runtime.detach import detach
            return detach(sys.argv[1:] if argv is None else argv, console)
        if args.verb in ("run", "attach", "stop", "gc", "check", "serve", "serve-worker"):
            import uvloop
            return uvloop.run(_asynchronous(args, console))
        if args.verb == "describe":
            return _describe(args)
        if args.verb == "list":
            return _list(args)
        if args.verb == "wait":
            from fleet.runtime.follow import wait
            return wait(JobStore(fleet_home()), args.name, console)
        return _logs(args, console)
    except FleetError as exc:
        console.notice(exc.message if isinstance(exc, InvalidInput) else exc.failure_reason)
        return exc.exit_code
    except KeyboardInterrupt:
        console.notice("interrupted")
        return 130
    except Exception as exc:  # a bug of fleet's: say so in one line, with a way to see more
        if _debugging(args):
            log.exception("internal error")
        console.notice(f"internal error: {exc!r} (fleet --debug shows the traceback)")
        return 1


def entry() -> None:
    """The `fleet` command: main(), then out at once. Everything was written and closed
    already; the interpreter's teardown of asyncssh, aiohttp and botocore modules would add
    ~0.15 s to every run."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
