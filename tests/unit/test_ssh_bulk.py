"""fleet's cuts to asyncssh's bulk-data costs (fleet.transport.asyncssh_patches) keep its wire unchanged."""

import asyncio
import os

from asyncssh.crypto import GCMCipher

from fleet.transport import asyncssh_patches
from fleet.transport.asyncssh_patches import _CoalescedWrites, _GCMCipher


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


class _Waiting(list):
    """A channel's _recv_buf that refuses to be walked: the window patch counts, never sums."""

    def __iter__(self):
        raise AssertionError("the waiting packets were walked")


def _channel(window: int):
    import asyncssh.channel

    assert asyncssh_patches.apply()  # as the SSH transport's first connection does
    assert asyncssh.channel.SSHChannel._deliver_data is asyncssh_patches._deliver_data_once_read  # the patch is on
    channel = object.__new__(asyncssh.channel.SSHChannel)
    delivered: list[bytes] = []
    adjusts: list[int] = []
    channel._recv_buf = _Waiting()
    channel._init_recv_window = channel._recv_window = window
    channel._recv_paused = True
    channel._send_state = "open"
    channel._recv_state = "open"
    channel._encoding = None
    channel._session = type("Session", (), {"data_received": lambda self, data, datatype: delivered.append(data),
                                            "eof_received": lambda self: None})()
    channel._logger = type("Logger", (), {"debug2": lambda self, *args: None})()
    channel.send_packet = lambda pkttype, *args: adjusts.append(int.from_bytes(args[0], "big"))
    return channel, delivered, adjusts


def test_a_slow_readers_waiting_packets_keep_the_window_shut_and_drain_without_being_walked():
    """20,000 small packets wait while the reader's buffer is full: none of them reopens the
    window (the host stays at most a window ahead), the drain hands them on in order without
    summing the list each time (it was 5.9 s of the event loop), and the window reopens once
    less than half a window waits (review of issue 19, point 12)."""
    window = 2 << 20
    channel, delivered, adjusts = _channel(window)
    packets = [i.to_bytes(4, "big") * 25 for i in range(20_000)]  # 100 bytes each: 2,000,000 in all
    for packet in packets:
        channel._accept_data(packet)
    assert adjusts == [] and len(channel._recv_buf) == 20_000
    channel._recv_paused = False
    channel._flush_recv_buf()
    assert delivered == packets
    assert len(adjusts) == 1 and channel._recv_window == window  # reopened once, whole
    assert channel._fleet_waiting == 0
