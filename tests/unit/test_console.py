"""fleet/runtime/console.py: what a container's output and fleet's notices look like on the
terminal, whatever the container prints: lines prefixed with their host, a line without end
printed cut at 64 KiB (memory and time per chunk bounded), control characters shown, never
acted on."""

from __future__ import annotations

import asyncio
import io

import pytest

from fleet.runtime.console import CUT_MARK, LINE_LIMIT, Console, HostLines, host_ranges

KIB64 = 64 * 1024


def host(limit: int = LINE_LIMIT) -> tuple[HostLines, io.BytesIO]:
    out = io.BytesIO()
    return HostLines(out, b"[algo-1] ", limit=limit), out


def printed(*chunks: bytes, flush: bool = False) -> bytes:
    lines, out = host()
    for chunk in chunks:
        lines.feed(chunk)
    if flush:
        lines.flush()
    return out.getvalue()


# -- lines ------------------------------------------------------------------------------------

def test_each_line_is_printed_with_its_host_prefix_once_it_ends():
    lines, out = host()
    lines.feed(b"one\ntw")
    assert out.getvalue() == b"[algo-1] one\n"
    lines.feed(b"o\nthree\n")
    assert out.getvalue() == b"[algo-1] one\n[algo-1] two\n[algo-1] three\n"


def test_an_unfinished_last_line_is_printed_when_the_stream_ends():
    assert printed(b"a\nlast words", flush=True) == b"[algo-1] a\n[algo-1] last words\n"
    assert printed(b"a\n", flush=True) == b"[algo-1] a\n"


def test_empty_lines_are_printed():
    assert printed(b"\n\nx\n") == b"[algo-1] \n[algo-1] \n[algo-1] x\n"


def test_a_character_split_across_chunks_is_printed_whole():
    euro = "€".encode()
    assert printed(b"price " + euro[:1], euro[1:] + b" 5\n") == "[algo-1] price € 5\n".encode()


def test_a_line_of_exactly_64_kib_is_printed_whole():
    assert printed(b"x" * KIB64 + b"\n") == b"[algo-1] " + b"x" * KIB64 + b"\n"
    assert printed(b"x" * (KIB64 - 1), b"x", b"\n") == b"[algo-1] " + b"x" * KIB64 + b"\n"


def test_a_longer_line_is_printed_cut_at_64_kib_and_its_end_says_how_much_was_not_shown():
    lines, out = host()
    lines.feed(b"y" * (KIB64 - 10))
    assert out.getvalue() == b""  # not yet at the limit: waits for its end
    lines.feed(b"y" * 20)  # past the limit: what there is, cut
    assert out.getvalue() == b"[algo-1] " + b"y" * KIB64 + CUT_MARK.encode() + b"\n"
    lines.feed(b"z" * 1000)
    lines.feed(b"z" * 990 + b"\nnext line\n")
    assert out.getvalue().split(b"\n")[1:] == [
        b"[algo-1] [line cut: 2,000 more bytes not shown; the stored log has them]",
        b"[algo-1] next line", b""]


def test_a_cut_line_within_one_chunk_and_the_lines_after_it():
    out = printed(b"a\n" + b"b" * (KIB64 + 5) + b"\nc\n")
    assert out == (b"[algo-1] a\n[algo-1] " + b"b" * KIB64 + CUT_MARK.encode() + b"\n"
                   b"[algo-1] [line cut: 5 more bytes not shown; the stored log has them]\n[algo-1] c\n")


def test_a_cut_line_still_unfinished_when_the_stream_ends_says_how_much_was_not_shown():
    out = printed(b"q" * (KIB64 + 3), flush=True)
    assert out.endswith(CUT_MARK.encode() + b"\n[algo-1] [line cut: 3 more bytes not shown; "
                                            b"the stored log has them]\n")


def test_a_cut_never_splits_a_character():
    lines, out = host(limit=10)
    lines.feed("abcdefgh€€".encode())  # the first € takes bytes 9..11: cut before it
    assert out.getvalue() == f"[algo-1] abcdefgh{CUT_MARK}\n".encode()
    lines.feed(b"\n")
    assert out.getvalue().endswith(b"[line cut: 6 more bytes not shown; the stored log has them]\n")


async def test_128_mib_without_a_newline_keeps_one_line_of_64_kib_at_most():
    """The container prints 128 MiB without a newline, in the transport's 64 KiB chunks, as
    the instance's reader hands them over in the event loop: the pending line never holds
    more than 64 KiB, the console gets the first 64 KiB, marked cut, then (once the line
    ends) how much was not shown. The old console re-joined the whole line on every chunk:
    111 s of event loop time for this (the generous timeout only guards against a hang)."""
    lines, out = host()
    chunk = b"x" * KIB64
    total = 128 * 2**20
    async with asyncio.timeout(120):
        for _ in range(total // len(chunk)):
            lines.feed(chunk)
            assert len(lines.partial) <= LINE_LIMIT
            await asyncio.sleep(0)  # as the reader does between reads: the loop goes on
    assert out.getvalue() == b"[algo-1] " + b"x" * KIB64 + CUT_MARK.encode() + b"\n"
    lines.feed(b"\ndone\n")
    assert out.getvalue().split(b"\n")[1:] == [
        f"[algo-1] [line cut: {total - KIB64:,} more bytes not shown; the stored log has them]".encode(),
        b"[algo-1] done", b""]
    assert len(lines.partial) == 0


# -- control characters -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    (b"\x1b[2Jcleared", b"\\x1b[2Jcleared"),  # erase the screen
    (b"\x1b]52;c;cm0gLXJmIH4K\x07copied", b"\\x1b]52;c;cm0gLXJmIH4K\\x07copied"),  # OSC 52: set the clipboard
    (b"ding\x07", b"ding\\x07"),  # BEL
    (b"rm -rf ~\rall is well", b"rm -rf ~\\x0dall is well"),  # CR: overwrite what was printed
    (b"\x9b2J", b"\\x9b2J"),  # C1 CSI, the raw byte (not UTF-8)
    ("\u009b2J".encode(), b"\\x9b2J"),  # C1 CSI, UTF-8 encoded
    (b"\x1b\x9b\x00\x7f\x08", b"\\x1b\\x9b\\x00\\x7f\\x08"),  # ESC, CSI, NUL, DEL, backspace
    (b"a\tb", b"a\tb"),  # TAB stays
    ("naïve € 🚀".encode(), "naïve € 🚀".encode()),  # UTF-8 text stays
    (b"dos line\r", b"dos line"),  # CRLF: the CR before the newline goes
])
def test_control_characters_in_a_line_are_shown_not_acted_on(raw, shown):
    assert printed(raw + b"\n") == b"[algo-1] " + shown + b"\n"


def test_many_lines_in_one_chunk_are_each_shown_so():
    chunk = b"a\r\nb\x1b[0m\r\n" + "naïve".encode() + b"\r\nbad \xff byte\ttab\r\n\r\nlast"
    assert printed(b"first ", chunk, flush=True) == (
        "[algo-1] first a\n[algo-1] b\\x1b[0m\n[algo-1] naïve\n[algo-1] bad \\xff byte\ttab\n"
        "[algo-1] \n[algo-1] last\n").encode()


def test_control_characters_in_an_unfinished_or_cut_line_are_shown():
    assert printed(b"\x1b[31mred", flush=True) == b"[algo-1] \\x1b[31mred\n"
    lines, out = host(limit=8)
    lines.feed(b"\x1b]0;title\x07 and on")
    assert out.getvalue() == b"[algo-1] \\x1b]0;titl" + CUT_MARK.encode() + b"\n"


def test_a_notice_quoting_a_file_name_with_an_escape_shows_it():
    err = io.StringIO()
    Console(io.BytesIO(), err).notice("output out: cannot read /opt/ml/processing/output/\x1b]0;owned\x07x.csv")
    assert err.getvalue() == "fleet: output out: cannot read /opt/ml/processing/output/\\x1b]0;owned\\x07x.csv\n"


def test_a_notice_keeps_its_lines_and_shows_every_other_control():
    err = io.StringIO()
    console = Console(io.BytesIO(), err)
    console.notice("algo-2: docker said:\nError\x1b[2J\r\nfake\rreal\x9b1m\n")
    console.notice("")
    assert err.getvalue() == ("fleet: algo-2: docker said:\nfleet: Error\\x1b[2J\n"
                              "fleet: fake\\x0dreal\\x9b1m\nfleet: \n")


def test_a_notice_about_many_hosts_names_them_in_ranges():
    assert host_ranges([f"algo-{k}" for k in range(100, 0, -1)]) == "algo-1..algo-100"
    assert host_ranges(["algo-1", "algo-2", "algo-3", "algo-5", "algo-7", "algo-8"]) == \
        "algo-1..algo-3, algo-5, algo-7, algo-8"
