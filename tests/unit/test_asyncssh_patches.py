"""fleet's changes to asyncssh (fleet.transport.asyncssh_patches): for the audited asyncssh only,
applied by the SSH transport's first connection, never by an import.

The last two tests run an SSH transport in a process of its own (the changes are process-wide)
against an asyncssh server on loopback: 8 MiB through one channel, as the patched asyncssh and as
an asyncssh of another version that runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncssh

from fleet.transport.asyncssh_patches import AUDITED_VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_asyncssh_is_the_audited_one():
    assert asyncssh.__version__ == AUDITED_VERSION, (
        f"asyncssh {asyncssh.__version__} is installed, fleet's changes to it were audited on {AUDITED_VERSION}: "
        f"install with `pip install -c constraints.txt`, or audit the new version (docs/asyncssh-upstream.md) "
        f"and move AUDITED_VERSION and constraints.txt together")


def test_the_constraints_file_pins_the_audited_version():
    pins = re.findall(r"(?m)^asyncssh==(\S+)", (ROOT / "constraints.txt").read_text())
    assert pins == [AUDITED_VERSION]


def test_scripts_setup_installs_with_the_constraints_file():
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r"pip install .*-c constraints\.txt", setup)


CHECK = r"""
import sys
import asyncssh
if sys.argv[1]:
    asyncssh.__version__ = sys.argv[1]  # an asyncssh of another version
import asyncssh.channel, asyncssh.crypto, asyncssh.encryption, asyncssh.packet
ORIGINAL = (asyncssh.encryption.GCMCipher, asyncssh.packet.SSHPacketLogger.log_sent_packet,
            asyncssh.channel.SSHChannel._accept_data, asyncssh.channel.SSHChannel._deliver_data)

def unchanged():
    return ORIGINAL == (asyncssh.encryption.GCMCipher, asyncssh.packet.SSHPacketLogger.log_sent_packet,
                        asyncssh.channel.SSHChannel._accept_data, asyncssh.channel.SSHChannel._deliver_data)
"""

IMPORT_ONLY = CHECK + r"""
import fleet.cli, fleet.transport.ssh
from fleet.inventory import SshHost
from fleet.transport import transport_for
transport_for(SshHost(address="h1"), "algo-1")
print(unchanged())
"""

CONNECT = CHECK + r"""
import asyncio, getpass, hashlib, json, logging, os
from pathlib import Path
from fleet.inventory import SshHost
from fleet.transport import asyncssh_patches
from fleet.transport.ssh import SSHTransport

warnings = []
class Kept(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())
logging.getLogger("fleet").addHandler(Kept())

async def main():
    tmp = Path(os.environ["TMP_DIR"])
    host_key, client_key = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    client_key.write_private_key(str(tmp / "id"))
    async def handle(process):
        data = await process.stdin.read()
        process.stdout.write(f"{process.command} {len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        process.exit(0)
    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None, process_factory=handle,
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()))
    port = server.sockets[0].getsockname()[1]
    (tmp / "known_hosts").write_bytes(b"[127.0.0.1]:%d " % port + host_key.export_public_key())
    host = SshHost(address="127.0.0.1", port=port, user=getpass.getuser(), identity_file=str(tmp / "id"),
                   known_hosts=str(tmp / "known_hosts"), host_key_checking="strict")
    before = unchanged()
    results = []
    for _ in range(2):  # two connections: the warning is said once
        async with SSHTransport(host, "algo-1") as transport:
            result = await transport.run(["sum", "it"], stdin=bytes(range(256)) * (8 << 12))
            conn = transport._conn
            results.append({"status": result.exit_status, "stdout": result.stdout.decode(),
                            "cipher": conn.get_extra_info("send_cipher"),
                            "cipher_class": type(conn._send_encryption._cipher).__module__,
                            "coalesced": type(conn._transport).__name__ == "_CoalescedWrites"})
    server.close()
    print(json.dumps({"before": before, "after": unchanged(), "applied": asyncssh_patches.applied(),
                      "results": results, "warnings": warnings}))

asyncio.run(main())
"""


def _python(code: str, fake_version: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code, fake_version], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
                                         "TMP_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_fleet_changes_nothing_in_asyncssh(tmp_path: Path):
    """The changes were made on import, process-wide: any program importing fleet's SSH
    transport got a changed asyncssh, connections it made itself included."""
    assert _python(IMPORT_ONLY, "", tmp_path).strip() == "True"


SENT = bytes(range(256)) * (8 << 12)
EXPECTED = f"sum it {len(SENT)} {hashlib.sha256(SENT).hexdigest()}"


def test_the_first_connection_applies_them_to_the_audited_asyncssh(tmp_path: Path):
    report = json.loads(_python(CONNECT, "", tmp_path))
    assert (report["before"], report["after"], report["applied"], report["warnings"]) == (True, False, True, [])
    for result in report["results"]:
        assert result == {"status": 0, "stdout": EXPECTED, "cipher": "aes128-gcm@openssh.com",
                          "cipher_class": "fleet.transport.asyncssh_patches", "coalesced": True}


def test_another_asyncssh_runs_unchanged_saying_so_once(tmp_path: Path):
    report = json.loads(_python(CONNECT, "2.99.0", tmp_path))
    assert (report["before"], report["after"], report["applied"]) == (True, True, False)
    for result in report["results"]:
        assert result == {"status": 0, "stdout": EXPECTED, "cipher": "aes128-gcm@openssh.com",
                          "cipher_class": "asyncssh.crypto.cipher", "coalesced": False}
    assert len(report["warnings"]) == 1
    assert f"asyncssh 2.99.0 is not the version fleet's changes to it were audited on ({AUDITED_VERSION})" in \
        report["warnings"][0]
