"""The local transport: commands run on this machine as subprocesses, no SSH."""

from __future__ import annotations

import asyncio
from typing import Sequence

from fleet.errors import HostError
from fleet.transport.base import CommandResult, OnBytes, Transport, pump


class LocalTransport(Transport):
    async def connect(self) -> None:
        return None

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        on_stdout: OnBytes | None = None,
        on_stderr: OnBytes | None = None,
    ) -> CommandResult:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C at the terminal reaches fleet, not its commands
            )
        except OSError as exc:
            raise HostError(self.label, f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            if stdin is not None:
                assert process.stdin is not None
                process.stdin.write(stdin)
                await process.stdin.drain()
                process.stdin.close()
            out, err = await asyncio.gather(pump(process.stdout, on_stdout), pump(process.stderr, on_stderr))
            status = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return CommandResult(status if status >= 0 else -1, out, err)

    async def close(self) -> None:
        return None

    @property
    def peer_address(self) -> str:
        return self.host.ip or "127.0.0.1"
