"""The index of arrival times beside each host's stored log (runtime/logindex.py): written by
the log file the instance writes to, read back per line; a crash's torn record, a take-over,
an older fleet's run without an index, and its size for a flood of tiny lines."""

from __future__ import annotations

import os
from pathlib import Path

from fleet.runtime.logindex import MAGIC, RECORD, LogIndex, Timeline, index_path
from fleet.runtime.store import JobRecord
from fleet.serve.logs import events as logs

T0 = 1_796_000_000_000  # ms


class Clock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def open_log(directory: Path, clock: Clock):
    """The host's log as the executor opens it (JobRecord.open_log), on a clock the test moves."""
    (directory / "logs").mkdir(exist_ok=True)
    log = JobRecord(directory, {}).open_log("algo-1")
    log._index._clock = clock  # the writer's time source; everything else is the real file code
    return log


def stamps(path: Path, fallback: int = 0) -> list[tuple[str, int]]:
    """(line, time) of every event of the log, as fleet serve reads them."""
    source = logs.Source("j/algo-1-1", path, fallback, complete=True)
    with logs.StreamReader(source) as reader:
        return [(e.data.decode(), e.stamp) for e in reader.events(0)]


def test_each_line_gets_the_time_its_newline_arrived(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    log.write(b"one\ntw")
    clock.ms += 1500
    log.write(b"o\nthree\n")
    clock.ms += 2000
    log.write(b"four\n")
    log.close()
    path = tmp_path / "logs" / "algo-1.log"
    assert path.read_bytes() == b"one\ntwo\nthree\nfour\n"  # the log is still exactly the bytes
    assert stamps(path) == [("one", T0), ("two", T0 + 1500), ("three", T0 + 1500), ("four", T0 + 3500)]
    assert os.stat(index_path(path)).st_mode & 0o777 == 0o600


def test_chunks_of_one_millisecond_or_without_a_newline_add_no_record(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    for _ in range(10_000):
        log.write(b"x\n")  # a flood of tiny lines within one ms: one record
    clock.ms += 5
    for _ in range(1000):
        log.write(b"no newline yet ")  # a long line arriving: no line ends, no record
    clock.ms += 5
    log.write(b"end\n")
    log.close()
    path = tmp_path / "logs" / "algo-1.log"
    with LogIndex.open(path) as index:
        assert index is not None
        assert list(index.records()) == [(0, T0), (20_000 + 15_000, T0 + 10)]
    assert stamps(path)[-1][1] == T0 + 10


def test_a_clock_stepped_back_repeats_the_last_time(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    log.write(b"a\n")
    clock.ms -= 60_000
    log.write(b"b\n")
    log.close()
    assert stamps(tmp_path / "logs" / "algo-1.log") == [("a", T0), ("b", T0)]


def test_a_torn_last_record_is_ignored_and_cut_by_the_writer_that_takes_over(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    log.write(b"first\n")
    clock.ms += 1000
    log.write(b"second\n")
    log.close()
    path = tmp_path / "logs" / "algo-1.log"
    with open(index_path(path), "ab") as index:  # the process died in the middle of a record
        index.write(RECORD.pack(13, T0 + 2000)[:7])
    assert stamps(path) == [("first", T0), ("second", T0 + 1000)]
    clock.ms += 5000
    log = open_log(tmp_path, clock)  # `fleet attach` resumes the log where it stopped
    log.write(b"third\n")
    log.close()
    assert stamps(path) == [("first", T0), ("second", T0 + 1000), ("third", T0 + 6000)]
    assert (os.path.getsize(index_path(path)) - len(MAGIC)) % RECORD.size == 0


def test_a_record_past_the_logs_end_is_dropped_by_the_next_writer(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    log.write(b"kept\n")
    log.close()
    path = tmp_path / "logs" / "algo-1.log"
    with open(index_path(path), "ab") as index:  # died between the record and the bytes it times
        index.write(RECORD.pack(5, T0 + 100))
    clock.ms += 3000
    log = open_log(tmp_path, clock)
    log.write(b"later\n")
    log.close()
    assert stamps(path) == [("kept", T0), ("later", T0 + 3000)]


def test_an_older_fleets_log_without_index_gets_the_fallback_time(tmp_path):
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "algo-1.log"
    path.write_bytes(b"old one\nold two\n")
    assert stamps(path, fallback=T0 - 9000) == [("old one", T0 - 9000), ("old two", T0 - 9000)]
    clock = Clock()
    log = open_log(tmp_path, clock)  # this fleet takes the older run over: its new lines are timed
    log.write(b"new\n")
    log.close()
    assert stamps(path, fallback=T0 - 9000) == [("old one", T0 - 9000), ("old two", T0 - 9000), ("new", T0)]
    # an index that is no index (garbage) counts as none
    index_path(path).write_bytes(b"garbage")
    assert stamps(path, fallback=T0 - 9000)[-1] == ("new", T0 - 9000)


def test_a_time_is_found_by_bisection_in_a_large_index(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    for i in range(20_000):
        clock.ms = T0 + 10 * i
        log.write(b"line %d\n" % i)
    log.close()
    path = tmp_path / "logs" / "algo-1.log"
    with LogIndex.open(path) as index:
        assert index is not None and index.count == 20_000
        timeline = Timeline(index, 0)
        position = timeline.position(T0 + 10 * 12_345 - 3)
        assert position == len(b"".join(b"line %d\n" % i for i in range(12_345)))
        assert timeline.stamp(position) == T0 + 10 * 12_345
        assert timeline.stamp(3) == T0  # backwards: bisects again
        assert timeline.position(T0 + 10 * 20_000) is None


def test_short_lines_within_10_ms_of_the_last_record_take_its_time(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock)
    log.write(b"a\n")
    clock.ms += 3
    log.write(b"b\n")  # 3 ms and 2 bytes after the record: no record, the time of "a"
    clock.ms += 3
    log.write(b"c" * 200 + b"\n")  # 200 bytes after it: a record
    clock.ms += 10
    log.write(b"d\n")  # 10 ms after the last record: a record
    log.close()
    assert [s for _, s in stamps(tmp_path / "logs" / "algo-1.log")] == [T0, T0, T0 + 6, T0 + 16]
