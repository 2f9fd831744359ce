"""owner.lock: the one fleet process running a job, looked at without being disturbed, and
proven before it is signalled.

The owner holds an open-file-description (OFD) write lock on the whole file, and the file
says who it is: `{"pid": PID, "starttime": TICKS}`, TICKS being field 22 of /proc/PID/stat
(when the process started, in clock ticks since boot: a pid reused later has another).
The lock goes with the owner's descriptor: released when it closes it or dies, whatever
else the process opens and closes (a classic POSIX lock would go at the first close of any
descriptor of the file), and a second open in the same process conflicts with it (the
tests' owners and followers share a process).

Others only look (`holder`, F_OFD_GETLK): they take no lock, so a follower looking at the
wrong moment never makes a real claim fail, nor a stop read a dead owner's pid as if the
lock were held. What the file says is not proof: a killed owner leaves its pid there, and
that pid may be any process of the user's by now. So `signal_holder` signals a pid only
when the process with that pid has a descriptor holding the lock (its
/proc/PID/fdinfo/N says so: OFD locks report no pid to F_OFD_GETLK) and started at the
recorded starttime, and it signals through a pidfd opened before those checks, so the pid
cannot be reused between proof and signal.

Linux only, as the rest of the controller's job control.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# struct flock on Linux (x86_64, aarch64): l_type, l_whence, l_start, l_len, l_pid, padding
_FLOCK = "hhqqi4x"
_WHOLE_FILE_WRITE = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)


@dataclass(frozen=True)
class Holder:
    """Someone holds owner.lock; who the file says it is (None: it does not say, yet)."""

    pid: int | None
    starttime: int | None


class Unproven(Exception):
    """The lock is held, but not provably by the process the file names."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(f"pid {holder.pid}")
        self.holder = holder


def lock(path: Path, fd: int) -> BinaryIO | None:
    """Take the owner lock through `fd` (open read-write on `path`) and write who holds it;
    the file, or None (fd closed) when another description holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WHOLE_FILE_WRITE)
    except BlockingIOError:
        os.close(fd)
        return None
    file = os.fdopen(fd, "r+b", buffering=0)
    file.truncate(0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "starttime": starttime(os.getpid())}).encode() + b"\n", 0)
    return file


def holder(path: Path) -> Holder | None:
    """Who holds the owner lock, as the file says; None when nobody does (or no fleet
    process ever claimed the job). Takes no lock, creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _WHOLE_FILE_WRITE)
        if struct.unpack(_FLOCK, answer)[0] == fcntl.F_UNLCK:
            return None
        return _said(os.pread(fd, 4096, 0))
    finally:
        os.close(fd)


def signal_holder(path: Path, signum: int) -> int | None:
    """Send `signum` to the process holding the owner lock, once proven to be it; its pid.
    None when nobody holds the lock (also when the holder let go meanwhile); Unproven when
    the lock is held but the file names a process that does not hold it, or that started
    at another time than recorded (a dead owner's pid reused), or names none yet."""
    found = holder(path)
    if found is None:
        return None
    if found.pid is None or found.pid <= 0 or found.starttime is None:
        raise Unproven(found)
    try:
        pidfd = os.pidfd_open(found.pid)  # the process, whatever its pid becomes later
    except ProcessLookupError:
        _unless_let_go(path, found)
        return None
    try:
        if starttime(found.pid) != found.starttime or not _holds_lock(found.pid, os.stat(path)):
            _unless_let_go(path, found)
            return None
        signal.pidfd_send_signal(pidfd, signum)
    except (ProcessLookupError, FileNotFoundError):  # it ended between proof and signal
        _unless_let_go(path, found)
        return None
    finally:
        os.close(pidfd)
    return found.pid


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks since boot); None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])  # after the command, which may hold anything


def _said(content: bytes) -> Holder:
    try:
        said = json.loads(content)
        pid, start = said["pid"], said["starttime"]
    except (ValueError, TypeError, KeyError):  # being written, or an older fleet's bare pid
        return Holder(int(content) if content.strip().isdigit() else None, None)
    return Holder(pid if isinstance(pid, int) else None, start if isinstance(start, int) else None)


def _unless_let_go(path: Path, found: Holder) -> None:
    """`found` is not provably the holder: fine if the lock is free by now, else Unproven."""
    if holder(path) is not None:
        raise Unproven(found)


def _holds_lock(pid: int, file: os.stat_result) -> bool:
    """Whether a descriptor of process `pid` holds an OFD write lock on `file`: its fdinfo
    lists the locks held through that descriptor, as /proc/locks does (`... WRITE -1
    MAJ:MIN:INODE 0 EOF`)."""
    where = f"{os.major(file.st_dev):02x}:{os.minor(file.st_dev):02x}:{file.st_ino}"
    try:
        descriptors = os.listdir(f"/proc/{pid}/fdinfo")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for fd in descriptors:
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in info.splitlines():
            fields = line.split()
            if fields[:1] == ["lock:"] and "OFDLCK" in fields and "WRITE" in fields and where in fields:
                return True
    return False
