"""Whatever a container prints, the controller stays responsive and the terminal stays the
user's: a line without end is printed cut (the stored log keeps every byte) while the
other hosts are supervised and the job stops on request; escape sequences are shown, not
acted on."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import make_job

FLOOD = 256 * 2**20  # bytes algo-1 prints without a newline
KIB64 = 64 * 1024
# algo-1 prints FLOOD bytes of "x" and no newline (through tee, which also hands them to
# `wc -c`: the container's own count of what it printed), then idles. `docker stop`'s
# SIGINT reaches the shell alone (PID 1), whose trap runs once the pipeline is done: it
# says what was printed. algo-2 prints a line every 0.5 s. (A script per host: an
# entrypoint word is at most 256 characters.)
FLOODING = ('trap \'wait; printf "\\nprinted %s bytes\\n" "$(cat /tmp/count)"; exit 0\' INT; '
            'mkfifo /tmp/copy; wc -c < /tmp/copy > /tmp/count & '
            f'head -c {FLOOD} /dev/zero | tr "\\0" x | tee /tmp/copy; while :; do sleep 0.2; done')
TICKING = ('trap "echo got SIGINT on $(hostname); exit 0" INT; i=0; '
           'while :; do i=$((i+1)); echo "tick $i"; sleep 0.5; done')


def _flood_job() -> dict:
    job = make_job(count=2)
    job["AppSpecification"].update({
        "ContainerEntrypoint": ["sh", "-c", 'if [ "$(hostname)" = algo-1 ]; then eval "$1"; else eval "$2"; fi', "sh"],
        "ContainerArguments": [FLOODING, TICKING]})
    return job


@pytest.fixture
def started():
    """fleet processes a test started: killed if the test leaves them running."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _all_x(path, size: int) -> bool:
    """The first `size` bytes of the file are all "x" (read a MiB at a time)."""
    left = size
    with open(path, "rb") as stored:
        while left:
            block = stored.read(min(left, 2**20))
            if not block or block.count(b"x") != len(block):
                return False
            left -= len(block)
    return True


def test_a_line_without_end_is_printed_cut_while_the_job_stops_on_request_and_the_log_keeps_it_all(
        fleet, cluster, tmp_path, started):
    job = _flood_job()
    name = job["ProcessingJobName"]
    out = tmp_path / "run.out"
    with open(out, "wb") as stdout:  # a file, not a pipe nobody reads: the console never waits
        process = subprocess.Popen(
            # a grace long enough for algo-1 to finish printing (SIGINT waits for its pipeline)
            fleet.command("run", "--inventory", str(cluster.inventory), str(fleet.write_job(job)),
                          "--stop-grace", "120"),
            stdout=stdout, stderr=subprocess.PIPE, env=fleet.env(), cwd=fleet.tmp)
    started.append(process)
    logs = fleet.home / "jobs" / name / "logs"

    def going() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"fleet run ended early ({process.returncode}): {process.stderr.read()}")
        try:
            return "tick 4\n" in fleet.log(name, "algo-2") and (logs / "algo-1.log").stat().st_size > KIB64
        except FileNotFoundError:
            return False
    _until(going, "algo-2 printed 4 lines and algo-1 its first 64 KiB")

    stop = fleet("stop", name, timeout=120)  # the old console: still reading the flood minutes later
    assert stop.returncode == 0, stop.stderr
    assert f"{name}: Stopped" in stop.stderr
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert fleet.record(name)["ProcessingJobStatus"] == "Stopped"

    # algo-1's stored log: every byte it printed, as it printed them, and its count
    stored = logs / "algo-1.log"
    with open(stored, "rb") as log:
        log.seek(-64, 2)
        tail = log.read().rsplit(b"x", 1)[1]
    assert tail.startswith(b"\nprinted ") and tail.endswith(b" bytes\n"), f"algo-1 never said what it printed: {tail!r}"
    printed = int(tail.removeprefix(b"\nprinted ").removesuffix(b" bytes\n"))
    assert printed == FLOOD  # the shell's trap runs once the pipeline is done
    assert stored.stat().st_size == printed + len(tail)
    assert _all_x(stored, printed)

    # the terminal: algo-1's line cut and marked, how much was not shown, algo-2 all along
    shown = out.read_bytes()
    assert len(shown) < 2**20
    lines = shown.decode().splitlines()
    assert f"[algo-1] {'x' * KIB64} [line cut at 64 KiB]" in lines
    assert f"[algo-1] [line cut: {printed - KIB64:,} more bytes not shown; the stored log has them]" in lines
    assert f"[algo-1] printed {printed} bytes" in lines
    ticks = [line for line in lines if line.startswith("[algo-2] tick ")]
    assert ticks == [f"[algo-2] tick {i}" for i in range(1, len(ticks) + 1)] and len(ticks) >= 4
    assert "[algo-2] got SIGINT on algo-2" in lines
    assert fleet.log(name, "algo-2").splitlines()[:len(ticks)] == [t.removeprefix("[algo-2] ") for t in ticks]


def test_escape_sequences_a_container_prints_are_shown_on_the_terminal_and_stored_raw(fleet):
    # C1 CSI as UTF-8 (U+009B): Docker's JSON log turns a byte that is not UTF-8 into U+FFFD
    raw = "\\033[2Jclear \\033]52;c;cm0gLXJmIH4K\\007clip \\a bell \\302\\233m csi fake\\rreal"
    job = make_job(f"printf '{raw}\\n'", count=1)
    run = fleet.run_job(job)
    assert run.returncode == 0, run.stderr
    shown = "\\x1b[2Jclear \\x1b]52;c;cm0gLXJmIH4K\\x07clip \\x07 bell \\x9bm csi fake\\x0dreal"
    assert f"[algo-1] {shown}\n" in run.stdout
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout and "\x9b" not in run.stdout
    stored = (fleet.home / "jobs" / job["ProcessingJobName"] / "logs" / "algo-1.log").read_bytes()
    assert stored == b"\x1b[2Jclear \x1b]52;c;cm0gLXJmIH4K\x07clip \x07 bell \xc2\x9bm csi fake\rreal\n"
