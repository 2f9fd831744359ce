"""fleet's command line: verbs → calls, and the one place mapping errors to exit codes.

Exit codes of `fleet run`: 0 Completed, 1 Failed, 2 invalid input or usage (nothing was
started), 124 MaxRuntimeExceeded, 130 Stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

from fleet.contract import configfiles
from fleet.contract.describe import new_record
from fleet.contract.job import ignored_fields, load_job
from fleet.errors import FleetError, InvalidInput
from fleet.inventory import fleet_home, load_inventory
from fleet.plan import ClusterPlan, algo_names, plan_cluster, select_hosts
from fleet.runtime.console import Console
from fleet.runtime.store import JobStore


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2, like invalid input
        self.print_usage(sys.stderr)
        raise InvalidInput(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet", description="Run SageMaker Processing jobs on your own hosts.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    run = verbs.add_parser("run", help="run a CreateProcessingJob request on the inventory's hosts")
    run.add_argument("job", type=Path, help="the request: JSON, or YAML when named .yaml/.yml")
    run.add_argument("--inventory", "-i", type=Path, help="hosts.yaml (default: this machine alone)")
    run.add_argument("--name", help="override ProcessingJobName")
    run.add_argument("--dry-run", action="store_true", help="print what would happen; touch nothing")
    run.add_argument("--keep", action="store_true", help="keep the job directories on the hosts")
    run.add_argument("--stop-grace", type=int, default=30, metavar="SECONDS",
                     help="time between SIGINT and SIGKILL when stopping (default 30)")
    run.add_argument("--docker-timeout", type=int, default=20, metavar="SECONDS",
                     help="how long docker may take to answer before a host counts as broken (default 20)")

    describe = verbs.add_parser("describe", help="the job's DescribeProcessingJob record")
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print the whole record as JSON")

    logs = verbs.add_parser("logs", help="the job's stored logs")
    logs.add_argument("name")
    logs.add_argument("--host", help="one host's log, raw (e.g. algo-2)")
    return parser


def _region_and_account() -> tuple[str, str]:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return region, os.environ.get("FLEET_ACCOUNT_ID", "000000000000")


def _dry_run_address(host) -> str:
    if host.ip:
        return host.ip
    if host.transport == "local":
        return "127.0.0.1"
    try:  # a local lookup only: the dry run touches no host
        return socket.getaddrinfo(host.address, None)[0][4][0]
    except OSError:
        return f"<address of {host.address}>"


def _print_plan(plan: ClusterPlan) -> None:
    print(f"job {plan.name} ({plan.arn}): {len(plan.hosts)} host(s); nothing is touched (--dry-run)")
    for hp in plan.hosts:
        host = hp.host
        where = "this machine" if host.transport == "local" else f"ssh {host.ssh_user}@{host.address}:{host.port}"
        print(f"\n{hp.algo}: {host.label} ({where}), reached by the other hosts at {hp.address}")
        print(f"  job directory: {hp.job_dir}")
        for directory in hp.dirs:
            print(f"  mkdir  {directory}/")
        for path, content in hp.files.items():
            print(f"  write  {path} ({len(content)} bytes)")
        print(f"  resourceconfig.json: {json.dumps(json.loads(hp.files['config/resourceconfig.json']))}")
        print(f"  docker: {shlex.join(hp.docker + hp.docker_create)}")
        print(f"  docker: {shlex.join(hp.docker + ['start', hp.container])}   (once every host is ready)")


async def _run(args: argparse.Namespace, console: Console) -> int:
    job = load_job(args.job, args.name)
    inventory = load_inventory(args.inventory)
    hosts = select_hosts(job, inventory)
    if args.stop_grace < 0 or args.docker_timeout < 1:
        raise InvalidInput("--stop-grace must be >= 0 and --docker-timeout >= 1")
    for notice in ignored_fields(job):
        console.notice(notice)
    region, account = _region_and_account()
    if args.dry_run:
        plan = plan_cluster(job, hosts, [_dry_run_address(h) for h in hosts],
                            stop_grace=args.stop_grace, region=region, account=account)
        _print_plan(plan)
        return 0

    from fleet.runtime.executor import JobExecution, RunOptions

    arn = configfiles.job_arn(job.ProcessingJobName, region, account)
    record = JobStore(fleet_home()).create(new_record(job, arn, {
        algo: {"Name": h.label, "Address": h.address} for algo, h in zip(algo_names(len(hosts)), hosts)}))
    execution = JobExecution(job, hosts, record, console, RunOptions(
        stop_grace=args.stop_grace, keep=args.keep, docker_timeout=args.docker_timeout,
        region=region, account=account))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, execution.request_stop)
    error = await execution.execute()
    status = record.status
    if error is None:
        console.notice(f"{job.ProcessingJobName}: {status}")
        return 0
    console.notice(f"{job.ProcessingJobName}: {status}: {error.failure_reason if status == 'Failed' else error.message}")
    return error.exit_code


def _describe(args: argparse.Namespace) -> int:
    record = JobStore(fleet_home()).load(args.name)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{record['ProcessingJobName']}: {record['ProcessingJobStatus']}")
    for key in ("FailureReason", "ExitMessage", "CreationTime", "ProcessingStartTime", "ProcessingEndTime"):
        if key in record:
            print(f"  {key}: {record[key]}")
    for algo, host in record.get("Hosts", {}).items():
        code = host.get("ExitCode")
        print(f"  {algo}: {host.get('Name')} ({host.get('Address')})"
              + (f" exit code {code}" if code is not None else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    store = JobStore(fleet_home())
    record = store.load(args.name)
    algos = list(record.get("Hosts", {}))
    if args.host:
        if args.host not in algos:
            raise InvalidInput(f"--host {args.host}: job {args.name} has hosts {', '.join(algos)}")
        path = store.log_path(args.name, args.host)
        sys.stdout.buffer.write(path.read_bytes() if path.exists() else b"")
        return 0
    for algo in algos:
        path = store.log_path(args.name, algo)
        if path.exists():
            for line in path.read_bytes().splitlines():
                sys.stdout.buffer.write(f"[{algo}] ".encode() + line + b"\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        args = _parser().parse_args(argv)
        if args.verb == "run":
            import uvloop
            return uvloop.run(_run(args, console))
        if args.verb == "describe":
            return _describe(args)
        return _logs(args)
    except FleetError as exc:
        console.notice(exc.message if isinstance(exc, InvalidInput) else exc.failure_reason)
        return exc.exit_code
    except KeyboardInterrupt:
        console.notice("interrupted")
        return 130
    except Exception as exc:  # a bug of fleet's: say so in one line, with a way to see more
        if os.environ.get("FLEET_DEBUG"):
            raise
        console.notice(f"internal error: {exc!r} (set FLEET_DEBUG=1 for a traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
