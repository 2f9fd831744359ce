"""`fleet run --detach`: the job owned by a `fleet run` in the background.

The command the user typed starts the same `fleet run` (its arguments without --detach,
with --ready-fd N) in a session of its own, so that a signal to the terminal or its closing
does not reach it, relays its stdout and stderr as they come, and waits. The child writes
one line to the pipe N once every container has started, having first sent its own stdout
and stderr to FLEET_HOME/jobs/NAME/run.log. Then:
- a line: the job runs on, owned by the child exactly as by a foreground `fleet run` (the
  owner lock: `fleet stop` stops it, `fleet attach` takes it over if it dies); exit 0;
- the pipe's end without a line: the child ended first (bad input, a host failed, even a job
  that completed at once); its exit code, its messages having been relayed already, so
  `--detach` fails as `run` does, with the same words and the same code.
A Ctrl-C (SIGTERM, SIGHUP) before that is passed on to the child as SIGTERM (a graceful
stop; a second one kills) and its end is waited for: nothing keeps running in the background
that the user did not see start.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, BinaryIO

from fleet.home import fleet_home
from fleet.runtime.console import Console
from fleet.runtime.store import JobStore

if TYPE_CHECKING:  # the parent never runs a job: it does not load the executor
    from fleet.runtime.executor import JobExecution

READY_FD = "--ready-fd"  # the child's hidden option: the pipe to write the line to
LOG_VERB = "run"  # the child's output goes to FLEET_HOME/jobs/NAME/run.log once detached
POLL = 0.1  # seconds between looks at the child while nothing comes


def child_argv(argv: list[str]) -> list[str]:
    """`argv` (a `fleet ... run ...` command line, without the program) without --detach
    (or an abbreviation argparse took for it) after the verb; options after `--` are the
    job's file names, not options."""
    verb = argv.index("run")  # the top-level options take no values: the first `run` is the verb
    kept = argv[:verb + 1]
    rest = iter(argv[verb + 1:])
    for token in rest:
        if token == "--":
            kept += [token, *rest]
            break
        if not (len(token) >= 4 and "--detach".startswith(token)):
            kept.append(token)
    return kept


def detach(argv: list[str], console: Console) -> int:
    """Run `fleet` with `argv` (minus --detach) in the background until every container has
    started; 0 then, else the child's exit code."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-m", "fleet", *child_argv(argv), READY_FD, str(ready_w)],
                                 stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, pass_fds=(ready_w,),
                                 start_new_session=True)
    except BaseException:
        for fd in (ready_r, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (ready_w, out_w, err_w):
            os.close(fd)

    def pass_on(signum: int, frame: object) -> None:  # no printing here: the child says it
        if child.poll() is None:
            os.kill(child.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        line = _relay(child, ready_r, {out_r: sys.stdout.buffer, err_r: sys.stderr.buffer})
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in (ready_r, out_r, err_r):
            os.close(fd)
    if line is None:
        code = child.wait()
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell says it
    name = line.decode(errors="replace").split()[-1]
    print(name, flush=True)
    log = JobStore(fleet_home()).job_dir(name) / f"{LOG_VERB}.log"
    console.notice(f"{name}: every container started; it runs on in the background (its fleet process: pid "
                   f"{child.pid}, saying what it does in {log}). "
                   f"Follow it: fleet logs -f {name}; its end and exit code: fleet wait {name}; "
                   f"stop it: fleet stop {name}")
    return 0


def _relay(child: subprocess.Popen, ready: int, outputs: dict[int, BinaryIO]) -> bytes | None:
    """Copy the child's output until it writes a line to `ready` (the line), or ends (None)."""
    line = b""
    with selectors.DefaultSelector() as selector:
        for fd in (ready, *outputs):
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        ready_open = True
        while True:
            for key, _ in selector.select(timeout=POLL):
                data = _read(key.fd)
                if data is None:
                    continue
                if not data:
                    selector.unregister(key.fd)
                    ready_open = ready_open and key.fd != ready
                elif key.fd == ready:
                    line += data
                else:
                    _write(outputs[key.fd], data)
            if line.endswith(b"\n"):
                _drain(outputs)  # what the child said before it wrote the line is all there
                return line
            if not ready_open and child.poll() is not None:
                _drain(outputs)
                return None


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def _write(out: BinaryIO, data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except OSError:  # our own terminal is gone: the child's work goes on regardless
        pass


def _drain(outputs: dict[int, BinaryIO]) -> None:
    """What the pipes hold now (a grandchild holding one open does not keep us waiting)."""
    for fd, out in outputs.items():
        while data := _read(fd):
            _write(out, data)


async def announce_started(execution: JobExecution, store: JobStore, name: str, ready: int) -> None:
    """The child's side: once every container has started, send this process's stdout and
    stderr to the job's run.log, then write the line (the parent exits at once). Never
    raises: whatever happens to the parent, the job runs on."""
    os.set_inheritable(ready, False)  # no process this one starts holds the parent waiting
    await execution.containers_started.wait()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        log = store.open_process_log(name, LOG_VERB)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
    finally:
        os.close(log)
    with contextlib.suppress(OSError):  # the parent is gone already
        os.write(ready, f"started {name}\n".encode())
    os.close(ready)
