"""fleet's changes to asyncssh (fleet.transport.asyncssh_patches) against the bed's real OpenSSH:
8 MiB sent to `cat` and read back through fleet's SSH transport, with a key exchange every MiB,
for each cipher fleet offers (AES-GCM is the one they change; the others cross the coalesced
writes, the packet log and the receive window all the same). A packet sealed with the wrong
key or IV, a write sent out of order around a key exchange, a window miscounted: sshd drops
the connection or the bytes come back different."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os

import asyncssh
import pytest

from fleet.inventory import SshHost, load_inventory
from fleet.transport import asyncssh_patches, ssh as ssh_transport
from fleet.transport.ssh import SSHTransport

SIZE = 8 << 20
REKEY_BYTES = 1 << 20


async def _through_cat(transport: SSHTransport, data: bytes) -> tuple[int, bytes]:
    """`cat` on the host, fed and read at once (it echoes as it reads: a window each way)."""
    process = await transport.start(["cat"])
    echoed = bytearray()

    async def send() -> None:
        for start in range(0, len(data), 1 << 20):
            await process.write(data[start:start + (1 << 20)])
        process.close_stdin()

    async def receive() -> None:
        while chunk := await process.read_stdout():
            echoed.extend(chunk)

    try:
        async with asyncio.timeout(120), asyncio.TaskGroup() as tasks:
            tasks.create_task(send())
            tasks.create_task(receive())
        return await process.wait(), bytes(echoed)
    finally:
        process.close()


@pytest.mark.parametrize("cipher", ssh_transport.PREFERRED_CIPHERS)
async def test_bytes_cross_key_exchanges_unchanged_both_ways(cluster, cipher, monkeypatch):
    host = load_inventory(cluster.inventory).hosts[0]
    assert isinstance(host, SshHost)
    monkeypatch.setattr(ssh_transport, "PREFERRED_CIPHERS", [cipher])
    monkeypatch.setattr(asyncssh, "connect", functools.partial(asyncssh.connect, rekey_bytes=REKEY_BYTES))
    data = os.urandom(SIZE)
    async with SSHTransport(host, "h1") as transport:
        assert asyncssh_patches.applied()
        conn = transport._conn
        assert conn is not None and conn.get_extra_info("send_cipher") == cipher
        exchanges = 0
        send_kexinit = conn._send_kexinit

        def counted() -> None:
            nonlocal exchanges
            exchanges += 1
            send_kexinit()

        conn._send_kexinit = counted  # type: ignore[method-assign]
        status, echoed = await _through_cat(transport, data)
        assert (status, len(echoed)) == (0, SIZE)
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()
        assert exchanges >= SIZE // REKEY_BYTES - 1  # the client's own, each after ~1 MiB it sent
        again = await transport.run(["echo", "after the key exchanges"])
        assert again.stdout == b"after the key exchanges\n"
