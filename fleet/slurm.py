"""What fleet reads of a Slurm allocation it runs in (the batch script, or salloc).

Slurm's grace after `scancel` or the time limit, KillWait (SIGTERM to every process of the
job, SIGKILL that many seconds later), bounds how long fleet's own stop may take there:
`stop_grace` fits the containers' grace inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 30.0  # seconds for scontrol to answer
# What fleet's stop needs beyond the containers' grace: `docker stop` reaching every host,
# the sessions' cleanup and the record (measured well under this on the test bed).
STOP_MARGIN = 10


def in_allocation() -> bool:
    """True inside a Slurm job (sbatch's script, salloc's shell, a step)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def config_value(text: str, key: str) -> str | None:
    """`KEY = VALUE` from `scontrol show config`'s output."""
    match = re.search(rf"(?m)^{re.escape(key)}\s*=\s*(.*?)\s*$", text)
    return match.group(1) if match else None


def seconds(value: str | None) -> int | None:
    """`30 sec` (Slurm's own spelling), or a plain number."""
    match = re.fullmatch(r"(\d+)(?:\s*sec)?", value or "")
    return int(match.group(1)) if match else None


async def scontrol(*args: str) -> str | None:
    """scontrol's output, or None when it is missing, fails or does not answer in time."""
    if shutil.which("scontrol") is None:
        return None
    with contextlib.suppress(OSError):
        process = await asyncio.create_subprocess_exec(
            "scontrol", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT):
                out, _ = await process.communicate()
        except TimeoutError:
            return None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return out.decode(errors="replace") if process.returncode == 0 else None
    return None


async def kill_wait() -> int | None:
    """KillWait, in seconds, when fleet runs inside a Slurm job; else None."""
    if not in_allocation():
        return None
    text = await scontrol("show", "config")
    value = seconds(config_value(text, "KillWait")) if text else None
    log.debug("Slurm's KillWait: %s", value)
    return value


def stop_grace(asked: int, kill_wait_s: int | None) -> int:
    """The containers' grace (SIGINT → SIGKILL) that lets fleet's whole stop end within
    Slurm's KillWait: at most KillWait - STOP_MARGIN (and never below 1 s, or 0 if asked)."""
    if kill_wait_s is None:
        return asked
    return min(asked, max(min(asked, 1), kill_wait_s - STOP_MARGIN))
