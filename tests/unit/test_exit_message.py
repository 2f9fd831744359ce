"""ExitMessage: each container's /opt/ml/output/message, concatenated, then cut to 1 KB.

Contract: "If multiple containers exit with an ExitMessage, the content of the ExitMessage
from each processing container is concatenated, then truncated to 1 KB." and "If the data
in this file isn't UTF-8 encoded, the job fails and returns a ClientError."
"""

from __future__ import annotations

import pytest

from fleet.contract.message import exit_message
from fleet.errors import ClientError

KB = 1024


def test_messages_are_concatenated_in_host_order():
    assert exit_message([("algo-1", b"first;"), ("algo-2", b"second;"), ("algo-3", b"third")]) == \
        "first;second;third"


def test_one_host_message_is_the_exit_message():
    assert exit_message([("algo-1", "done: 3 files\nok ✓".encode())]) == "done: 3 files\nok ✓"


def test_host_without_a_message_adds_nothing_to_the_others():
    assert exit_message([("algo-1", b""), ("algo-2", b"only me")]) == "only me"


def test_no_host_present_gives_no_exit_message():
    assert exit_message([]) is None


def test_hosts_that_wrote_no_message_give_no_exit_message():
    # The executor passes only the hosts whose container wrote the file.
    assert exit_message([]) is None


def test_an_empty_message_file_gives_an_empty_exit_message():
    assert exit_message([("algo-1", b""), ("algo-2", b"")]) == ""


def test_concatenation_is_cut_to_1024_bytes():
    message = exit_message([("algo-1", b"a" * 1000), ("algo-2", b"b" * 1000)])
    assert message == "a" * 1000 + "b" * 24
    assert len(message.encode()) == KB


def test_one_long_message_is_cut_to_1024_bytes():
    assert exit_message([("algo-1", b"x" * 5000)]) == "x" * KB


def test_cut_falls_on_a_character_boundary_within_one_host():
    # "€" is 3 bytes: 1023 + 3 straddles the 1024-byte cut, so the whole character goes.
    message = exit_message([("algo-1", ("a" * 1023 + "€").encode())])
    assert message == "a" * 1023


def test_cut_falls_on_a_character_boundary_across_hosts():
    # 1001 bytes, then two-byte "é"s: the 12th "é" straddles byte 1024.
    message = exit_message([("algo-1", b"a" * 1001), ("algo-2", ("é" * 20).encode())])
    assert message == "a" * 1001 + "é" * 11
    assert len(message.encode()) <= KB


@pytest.mark.parametrize("prefix", [1020, 1021, 1022, 1023])
def test_four_byte_character_straddling_the_cut_is_dropped_whole(prefix):
    message = exit_message([("algo-1", ("a" * prefix + "🙂" + "tail").encode())])
    expected = "a" * prefix + ("🙂" if prefix + 4 <= KB else "")
    assert message == expected


def test_file_already_cut_to_1024_bytes_by_the_host_is_accepted():
    # The host sends only the first 1 KB, which may end inside a character.
    data = ("a" * 1022 + "€").encode()[:KB]
    assert exit_message([("algo-1", data)]) == "a" * 1022


def test_message_that_is_not_utf8_is_a_client_error_naming_the_host():
    with pytest.raises(ClientError) as caught:
        exit_message([("algo-1", b"fine"), ("algo-2", b"caf\xe9 latin-1"), ("algo-3", b"fine too")])
    assert "algo-2" in caught.value.message
    assert "algo-1" not in caught.value.message and "algo-3" not in caught.value.message
    assert caught.value.failure_reason.startswith("ClientError: ")


@pytest.mark.parametrize("data", [
    b"\xff",
    b"ok\xff",
    b"\x80continuation first",
    b"ab\xe2\x28\xa1",          # a bad continuation byte
    b"x" * 1020 + b"\xff\xff",  # invalid bytes right before the cut
    b"\xed\xa0\x80 surrogate",  # an encoded surrogate is not UTF-8
])
def test_invalid_utf8_anywhere_in_the_first_kb_is_a_client_error(data):
    with pytest.raises(ClientError, match="algo-1"):
        exit_message([("algo-1", data)])


def test_short_message_ending_in_a_partial_character_is_a_client_error():
    with pytest.raises(ClientError, match="algo-1"):
        exit_message([("algo-1", b"ok \xe2\x82")])


def test_invalid_utf8_after_the_first_kb_is_not_looked_at():
    assert exit_message([("algo-1", b"a" * KB + b"\xff\xff")]) == "a" * KB
