"""The SSH transport's cuts to asyncssh's bulk-data costs keep its wire unchanged."""

import asyncio
import os

from asyncssh.crypto import GCMCipher

from fleet.transport.ssh import _CoalescedWrites, _GCMCipher


def test_the_gcm_cipher_seals_and_opens_as_asyncssh_does():
    key, iv = os.urandom(16), os.urandom(12)
    ours, theirs = _GCMCipher("aes128-gcm", key, iv), GCMCipher("aes128-gcm", key, iv)
    reader = GCMCipher("aes128-gcm", key, iv)
    for size in (0, 16, 32768):  # packet after packet: the same IV sequence
        header, data = os.urandom(4), os.urandom(size)
        body, mac = ours.encrypt_and_sign(header, data)
        assert body + mac == b"".join(theirs.encrypt_and_sign(header, data))  # what goes on the wire
        sealed = body[len(header):]
        assert reader.verify_and_decrypt(header, sealed[:-16], sealed[-16:]) == data
    # asyncssh's private-key export (no header) uses the two apart
    assert _GCMCipher("aes128-gcm", key, iv).encrypt_and_sign(b"", b"key") == \
        GCMCipher("aes128-gcm", key, iv).encrypt_and_sign(b"", b"key")
    opener = _GCMCipher("aes128-gcm", key, iv)
    body, mac = GCMCipher("aes128-gcm", key, iv).encrypt_and_sign(b"head", b"data")
    assert opener.verify_and_decrypt(b"head", body[4:], bytes(16)) is None  # a wrong tag
    opener = _GCMCipher("aes128-gcm", key, iv)
    assert opener.verify_and_decrypt(b"head", body[4:], mac) == b"data"


class FakeSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"socket's {name}"


async def test_writes_of_one_turn_of_the_loop_go_out_as_one_in_order():
    sock = FakeSocket()
    coalesced = _CoalescedWrites(sock)
    for packet in (b"a", b"bc", b"d"):
        coalesced.write(packet)
    assert sock.writes == []
    await asyncio.sleep(0)
    coalesced.write(b"e")
    await asyncio.sleep(0)
    assert sock.writes == [b"abcd", b"e"]
    assert coalesced.get_extra_info("peername") == "socket's peername"


async def test_close_sends_what_is_pending_and_abort_drops_it():
    sock = FakeSocket()
    coalesced = _CoalescedWrites(sock)
    coalesced.write(b"disconnect")
    coalesced.close()
    assert (sock.writes, sock.closed) == ([b"disconnect"], True)
    sock = FakeSocket()
    coalesced = _CoalescedWrites(sock)
    coalesced.write(b"lost")
    coalesced.abort()
    await asyncio.sleep(0)
    assert (sock.writes, sock.aborted) == ([], True)
