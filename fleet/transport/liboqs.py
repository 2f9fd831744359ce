"""asyncssh's import without its slow look for liboqs, where the machine has none.

asyncssh (2.24, asyncssh/crypto/pq.py) looks for liboqs (the sntrup761 post-quantum key
exchange) as it is imported: `ctypes.util.find_library("oqs")`, then "liboqs". On Linux
each runs `ldconfig -p` and, the library not there, gcc and ld: measured 30 ms and 19 ms of
CPU in those children at every `fleet run` start (issue 20 counts the controller's CPU: 20
ms a host). The dynamic loader's cache says whether liboqs is installed: where it names no
liboqs and LD_LIBRARY_PATH adds no directory, asyncssh is told at once there is none (what
it would have found); otherwise it looks as it always did. A liboqs the cache misses (built
into /usr/local/lib without ldconfig) goes unused: the key exchange falls back to ML-KEM
(from cryptography) or curve25519, as on a machine without it.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
from collections.abc import Iterator

LOADER_CACHE = "/etc/ld.so.cache"
NAMES = ("oqs", "liboqs")  # what asyncssh asks find_library for


def maybe_installed() -> bool:
    """False when the loader's cache names no liboqs and LD_LIBRARY_PATH is unset."""
    if os.environ.get("LD_LIBRARY_PATH"):
        return True
    try:
        with open(LOADER_CACHE, "rb") as cache:
            return b"liboqs" in cache.read()
    except OSError:
        return True


@contextlib.contextmanager
def quick_lookup() -> Iterator[None]:
    """Within: find_library answers None for liboqs at once where it is not installed
    (see the module's docstring); every other name, and liboqs where it may be, as always."""
    if maybe_installed():
        yield
        return
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return None if name in NAMES else real(name)
    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = real
