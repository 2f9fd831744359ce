"""fleet's changes to asyncssh, for the one asyncssh version they were read and tested on.

Four of asyncssh's behaviours cost fleet more than they should when it moves bulk data (the
job's inputs, staged through the controller) or reads slowly (a large upload): each is
worked around here, and each workaround names what it works around in asyncssh's code.
docs/asyncssh-upstream.md writes them up as a change to propose to asyncssh, with the
measurement: 4.84 CPU-s per GiB sent before, ~3.5 after (OpenSSH's clients: 3.6-3.9 with
their default cipher), 384 MiB to each of 3 test hosts with asyncssh alone.

They reach into asyncssh's internals (its cipher class, its packet logger, its channel's
window and receive buffer, its connection's socket), which any release may change: they are
applied only to AUDITED_VERSION, the version constraints.txt pins (scripts/setup and CI
install with it; tests/unit/test_asyncssh_patches.py fails on another). Any other asyncssh
runs as it is, unpatched, and the first SSH connection says so once (a warning): fleet works,
with more CPU per byte sent and without the bound on what a slow reader's channel holds.

Nothing happens on import: `apply()` installs them, process-wide and once, when the SSH
transport makes its first connection (fleet.transport.ssh), so a program that imports fleet
without connecting anywhere gets asyncssh untouched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh
import asyncssh.channel
import asyncssh.encryption
import asyncssh.logging
import asyncssh.packet
from asyncssh.crypto import GCMCipher
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

# The asyncssh these were read against (its source) and tested on (tests/unit/test_ssh_bulk.py,
# tests/integration/test_ssh_rekeys.py against OpenSSH): keep in step with constraints.txt.
AUDITED_VERSION = "2.24.1"

_applied: bool | None = None  # None: not decided yet; then whether the patches are on


def applied() -> bool:
    """Whether the patches are on (False before apply(), and for another asyncssh)."""
    return bool(_applied)


def apply() -> bool:
    """Install the patches if asyncssh is AUDITED_VERSION, once per process (later calls only
    answer); else leave asyncssh as it is and log a warning, once. True: they are on."""
    global _applied
    if _applied is not None:
        return _applied
    if asyncssh.__version__ != AUDITED_VERSION:
        _applied = False
        # WARNING: printed without --debug (Python's last-resort handler, on stderr)
        log.warning("fleet: warning: asyncssh %s is not the version fleet's changes to it were audited on (%s): "
                    "running it unchanged (more controller CPU per GiB sent over SSH, and a slow reader's "
                    "channel is not bounded); install fleet with `pip install -c constraints.txt`",
                    asyncssh.__version__, AUDITED_VERSION)
        return False
    asyncssh.encryption.GCMCipher = _GCMCipher  # type: ignore[misc]  # what GCMEncryption makes
    asyncssh.packet.SSHPacketLogger.log_sent_packet = _log_sent_packet_when_asked  # type: ignore[method-assign]
    asyncssh.channel.SSHChannel._accept_data = _accept_data_counted  # type: ignore[method-assign]
    asyncssh.channel.SSHChannel._deliver_data = _deliver_data_once_read  # type: ignore[method-assign]
    _applied = True
    log.debug("asyncssh %s: fleet's changes applied (AES-GCM, packet log, receive window, coalesced writes)",
              asyncssh.__version__)
    return True


class _GCMCipher(GCMCipher):
    """asyncssh's AES-GCM with one AESGCM object per key.

    Works around: asyncssh.crypto.cipher.GCMCipher.encrypt_and_sign and verify_and_decrypt
    build `AESGCM(self._key)` for every packet (an OpenSSL context and its key schedule each
    time), and encrypt_and_sign returns `header + data[:-16], data[-16:]`, which
    SSHConnection.send_packet joins again (`packet + mac`): two copies of every packet.
    Here the AESGCM object is made once per key (4.84 -> 4.05 CPU-s/GiB alone), and an SSH
    packet's tag stays on its ciphertext with an empty MAC (bytes + b"" is no copy; ~0.3
    CPU-s/GiB). The bytes on the wire are asyncssh's own (tests/unit/test_ssh_bulk.py)."""

    _GCM_TAG = 16

    def __init__(self, cipher_name: str, key: bytes, iv: bytes) -> None:
        super().__init__(cipher_name, key, iv)
        self._aead = AESGCM(key)

    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = self._aead.encrypt(self._iv, data, header)
        self._update_iv()
        if header:
            # An SSH packet, which asyncssh sends as `packet + mac`. Without a header (a
            # private key's export) the two are used apart.
            return header + sealed, b""
        return sealed[:-self._GCM_TAG], sealed[-self._GCM_TAG:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            opened: bytes | None = self._aead.decrypt(self._iv, data + mac, header)
        except InvalidTag:
            opened = None
        self._update_iv()
        return opened


class _CoalescedWrites:
    """The connection's socket, with the writes of one turn of the event loop sent as one.

    Works around: asyncssh.connection.SSHConnection._send writes every packet to the socket
    as send_packet makes it, and send_packet puts an empty SSH_MSG_IGNORE before every
    packet once encrypting (a countermeasure for CBC that AES-GCM and ChaCha20 do not
    need): 64 writes, a system call each, for 1 MiB of channel data. The controller's system
    time for 3 x 384 MiB: 1.48 -> 0.62 s. Everything but write, close and abort is the
    socket's; close sends what is pending first, abort drops it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(conn: asyncssh.SSHClientConnection) -> None:
    """From the end of the handshake on (the connection is made), see _CoalescedWrites; only
    while the patches are on."""
    if not _applied:
        return
    transport = getattr(conn, "_transport", None)  # asyncssh's own: checked, not assumed
    # uvloop's transports are not asyncio.Transport subclasses: what is used is checked
    if all(callable(getattr(transport, name, None)) for name in ("write", "close", "abort", "is_closing")):
        conn._transport = _CoalescedWrites(transport)  # type: ignore[assignment]


_log_sent_packet = asyncssh.packet.SSHPacketLogger.log_sent_packet


def _log_sent_packet_when_asked(self: Any, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
    """asyncssh's, only when its packet log is on.

    Works around: asyncssh.packet.SSHPacketLogger.log_sent_packet (through _log_packet)
    formats a line for every packet it sends (its name, its size in words, the payload
    joined) before SSHLogger.packet drops it below debug level 3: ~0.3 CPU-s per GiB sent."""
    if asyncssh.logging.SSHLogger._debug_level >= 3:
        _log_sent_packet(self, pkttype, pktid, packet, note)


_deliver_data = asyncssh.channel.SSHChannel._deliver_data
_accept_data = asyncssh.channel.SSHChannel._accept_data


def _accept_data_counted(self: Any, data: bytes, datatype: Any = None) -> None:
    """asyncssh's, counting the bytes it leaves waiting in the channel (`_recv_buf`, while
    the reader's buffer is full) in `_fleet_waiting`: _deliver_data_once_read reads a count,
    never sums the list (20,000 small packets waiting: 5.9 s of the event loop per drain)."""
    before = len(self._recv_buf)
    self._fleet_direct = True
    try:
        _accept_data(self, data, datatype)
    finally:
        self._fleet_direct = False
    if len(self._recv_buf) > before:
        self._fleet_waiting = getattr(self, "_fleet_waiting", 0) + len(self._recv_buf[-1][0])


def _deliver_data_once_read(self: Any, data: bytes, datatype: Any) -> None:
    """asyncssh's, giving the receive window back only while less than half a window waits.

    Works around: asyncssh.channel.SSHChannel._deliver_data sends a window adjust (back up to
    the whole window, 2 MiB) whenever it hands a packet on, also a packet that waited in
    `_recv_buf` while the reader's buffer was full (_flush_recv_buf): a reader slower than
    the host then holds whatever the host sends, 2 MiB more per read (a 450 MB tar stream of
    300,000 small files, uploaded at ~1 MB/s: 580 MB of RSS, issue 19). The bug
    apache/mina-sshd#292 fixed in its own window logic. Here the window opens only while
    less than half a window waits in the channel: a channel holds at most 1.5 windows there
    plus the reader's buffer (2 MiB), ~5 MiB; a fast reader, whose packets never wait, is
    not slowed. A packet handed on from the wait (not straight from _accept_data) leaves the
    count."""
    waiting = getattr(self, "_fleet_waiting", 0)
    if not self._recv_buf:  # nothing waits (and the last packet of a drain always adjusts)
        waiting = self._fleet_waiting = 0
    elif not getattr(self, "_fleet_direct", False):
        waiting = self._fleet_waiting = max(0, waiting - len(data))
    if waiting < self._init_recv_window // 2:
        _deliver_data(self, data, datatype)
        return
    window = self._recv_window
    self._recv_window = self._init_recv_window  # not below half: asyncssh sends no window adjust
    try:
        _deliver_data(self, data, datatype)
    finally:
        self._recv_window = window
