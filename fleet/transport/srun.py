"""The srun transport: inside a Slurm allocation, each command is a job step on its node.

`srun --overlap --nodes=1 --ntasks=1 --nodelist=NODE ARGV` pipes stdin, stdout and stderr
and returns the remote exit status, so a step is used exactly as an SSH channel is: no SSH
keys between nodes (many clusters hand out none), and pam_slurm_adopt is never in the way.

What differs from SSH:
- A step's environment is an allowlist (`--export`), never the controller's whole
  environment: S3 credentials and the like never reach a node.
- There is no connection to lose and reconnect: a step that dies takes its command with it
  (srun SIGKILLs the remote task when it is itself terminated), while the container, which
  dockerd runs, lives on, as after a lost SSH connection. The session knows it runs as a
  step (`FLEET_STEP=1` in its environment; step_end in supervise.sh): on SIGTERM, which
  Slurm sends every step when the job is cancelled or reaches its time limit, it stops the
  container, sends what the container said meanwhile (srun still relays it: on the bed,
  after a scancel, a step's SIGTERM trap ran to its end and was relayed in 4 runs of 4,
  srun's own SIGKILL of its step notwithstanding), removes it and the job directory: a job
  whose allocation ends is never left running on a node.
- Once the allocation ends, no step can start: whatever the controller still had to do on
  the nodes fails at once (`srun: error: ...`). srun failing (no step, Slurm's config or
  slurmctld out of reach) is a HostError naming the node and srun's words, as an SSH
  connection that fails: never a status of the command's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
from collections.abc import Sequence

from fleet.errors import HostError
from fleet.slurm import in_allocation, scontrol
from fleet.transport.base import RemoteProcess, command_name
from fleet.transport.local import LocalTransport, _LocalProcess

log = logging.getLogger(__name__)

# What a step's environment holds of the controller's (plus Slurm's own SLURM_*): enough for
# the host scripts (PATH, locale), nothing secret. A node's own settings (DOCKER_HOST, say)
# come from the node: Slurm's TaskProlog, or docker's defaults there.
EXPORTED = ("PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "FLEET_STEP")
SRUN_ERROR = re.compile(rb"(?m)^srun: (?:error|fatal): (.*)$")
# srun's report of the task's own end: not srun failing (the status says what happened).
TASK_ENDED = re.compile(rb"^\S+: tasks? [\d,\-]+: (?:Exited with exit code \d+|Killed|Terminated)")


def srun_argv(node: str, argv: Sequence[str]) -> list[str]:
    """The srun command line that runs argv as one task on `node` (quoted by nobody: srun
    execs the words as given)."""
    return ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--quiet",
            "--unbuffered", "--chdir=/", "--mpi=none", f"--export={','.join(EXPORTED)}",
            f"--job-name=fleet:{command_name(argv)}", "--", *argv]


def node_address(text: str) -> str | None:
    """NodeAddr from `scontrol show node -o NODE`'s one line."""
    match = re.search(r"(?:^|\s)NodeAddr=(\S+)", text)
    return match.group(1) if match else None


class _StepProcess(_LocalProcess):
    """srun, locally: its stdio is the remote command's."""

    def __init__(self, process: asyncio.subprocess.Process, label: str, name: str) -> None:
        super().__init__(process, label, name)
        self._srun_said = b""  # srun's own errors (its step could not start, or died)
        self._task_ended = False  # srun told the task's end: its status is the command's

    async def read_stderr(self) -> bytes:
        chunk = await super().read_stderr()
        if b"srun: error:" in chunk or b"srun: fatal:" in chunk:
            for said in SRUN_ERROR.findall(chunk):
                if TASK_ENDED.match(said):
                    self._task_ended = True
                else:
                    self._srun_said = (self._srun_said + b"; " + said if self._srun_said else said)[-1024:]
        return chunk

    async def wait(self) -> int:
        """The command's status; HostError naming the node and srun's words when srun itself
        failed (no step: Slurm's config or slurmctld out of reach, the job ending; or the
        step lost): its status says nothing of the command, as a lost SSH connection's."""
        status = await super().wait()
        if self._srun_said and status != 0 and not self._task_ended:
            said = self._srun_said.decode(errors="replace")
            log.debug("%s: step %s: srun: %s", self._label, self._name, said)
            raise HostError(self._label, f"srun could not run {self._name} there: {said}")
        return status

    def close(self) -> None:
        if self._process.returncode is None:
            # srun's own way to end a step: SIGTERM makes it kill the remote task.
            log.debug("%s: step %s (srun pid %d) terminated", self._label, self._name, self._process.pid)
            self._process.terminate()


class SrunTransport(LocalTransport):
    """One node of the current Slurm allocation (the inventory's address is the node name)."""

    def __init__(self, host, label: str) -> None:
        super().__init__(host, label)
        self._address: str | None = host.ip

    async def connect(self) -> None:
        if not in_allocation():
            raise HostError(self.label, "transport srun needs a Slurm allocation (SLURM_JOB_ID is not set): "
                                        "run fleet inside sbatch or salloc")
        if shutil.which("srun") is None:
            raise HostError(self.label, "transport srun: srun is not on PATH")
        if self._address is None:
            self._address = await self._resolve()

    async def _resolve(self) -> str:
        """The node's address, as Slurm knows it (NodeAddr), else as this machine resolves it."""
        node = self.host.address
        address = node_address(await scontrol("show", "node", "-o", node) or "")
        if address and address != "(null)":
            node = address
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(node, None, family=socket.AF_INET)
        except OSError as exc:
            raise HostError(self.label, f"cannot resolve the node's address {node!r}: {exc}") from exc
        return str(infos[0][4][0])

    async def start(self, argv: Sequence[str]) -> RemoteProcess:
        process = await self._spawn(srun_argv(self.host.address, argv), env={**os.environ, "FLEET_STEP": "1"})
        name = command_name(argv)
        log.debug("%s: step %s started (srun pid %d)", self.label, name, process.pid)
        return _StepProcess(process, self.label, name)

    @property
    def peer_address(self) -> str:
        return self._address or self.host.address
