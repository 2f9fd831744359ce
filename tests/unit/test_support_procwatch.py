"""The leak watch the secret tests rely on (tests/support/procwatch.py) sees a leak: a process
whose argv holds the needle, a file under a root holding it; and passes over what it is told
to (a symlink out of the root, a skipped directory, a file over `largest`). A watch that
cannot see proves nothing when it sees nothing."""

from __future__ import annotations

import secrets
import subprocess
import time

from support.procwatch import ProcWatch, argvs_holding, files_holding


def test_a_process_holding_the_needle_in_its_argv_is_found_and_watched():
    needle = f"zq-{secrets.token_hex(8)}"
    with ProcWatch(needle) as watch:
        process = subprocess.Popen(["sh", "-c", "sleep 30", "sh", needle])
        try:
            assert [pid for pid, _ in argvs_holding(needle.encode())] == [process.pid]
            scans = watch.scans
            while watch.scans < scans + 2:  # two whole rounds while the process lives
                time.sleep(0.01)
        finally:
            process.kill()
            process.wait()
    assert any(needle in seen for seen in watch.seen)
    assert argvs_holding(needle.encode()) == []


def test_files_holding_the_needle_are_found_and_what_is_passed_over_is_not(tmp_path):
    needle = secrets.token_hex(8).encode()
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "skipped").mkdir()
    outside.mkdir()
    (root / "sub" / "leak.txt").write_bytes(b"x" + needle)
    (root / "clean.txt").write_bytes(b"nothing")
    (root / "skipped" / "leak.txt").write_bytes(needle)
    (root / "big.bin").write_bytes(needle + b"\0" * 2000)
    (outside / "leak.txt").write_bytes(needle)
    (root / "link").symlink_to(outside / "leak.txt")
    assert sorted(files_holding([root], [needle])) == sorted(
        [str(root / "sub" / "leak.txt"), str(root / "skipped" / "leak.txt"), str(root / "big.bin")])
    assert files_holding([root], [b"other", needle], skip=("skipped",), largest=1000) == [
        str(root / "sub" / "leak.txt")]
    with ProcWatch(needle, roots=[root]) as watch:
        while watch.scans < 1:
            time.sleep(0.01)
    assert str(root / "sub" / "leak.txt") in watch.seen
