"""asyncssh's import skips its slow liboqs search (ldconfig, gcc, ld) only where the
loader's cache names no liboqs (fleet/transport/liboqs.py)."""

from __future__ import annotations

import ctypes.util

from fleet.transport import liboqs


def test_liboqs_is_answered_at_once_where_the_loaders_cache_names_none(tmp_path, monkeypatch):
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(b"glibc-ld.so.cache1.1\0libc.so.6\0/lib/x86_64-linux-gnu/libc.so.6\0")
    monkeypatch.setattr(liboqs, "LOADER_CACHE", str(cache))
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    asked = []

    def search(name):  # the real search, as seen from here
        asked.append(name)
        return f"lib{name}.so"
    monkeypatch.setattr(ctypes.util, "find_library", search)
    with liboqs.quick_lookup():
        assert ctypes.util.find_library("oqs") is None and ctypes.util.find_library("liboqs") is None
        assert ctypes.util.find_library("c") == "libc.so"  # any other name: the real search
    assert asked == ["c"]
    assert ctypes.util.find_library is search  # restored


def test_liboqs_is_searched_as_always_where_it_may_be_installed(tmp_path, monkeypatch):
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(b"glibc-ld.so.cache1.1\0liboqs.so.5\0/usr/lib/x86_64-linux-gnu/liboqs.so.5\0")
    monkeypatch.setattr(liboqs, "LOADER_CACHE", str(cache))
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    searched = ctypes.util.find_library
    with liboqs.quick_lookup():
        assert ctypes.util.find_library is searched
    cache.write_bytes(b"glibc-ld.so.cache1.1\0")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))  # a directory the cache does not cover
    with liboqs.quick_lookup():
        assert ctypes.util.find_library is searched
    monkeypatch.setattr(liboqs, "LOADER_CACHE", str(tmp_path / "none"))
    monkeypatch.delenv("LD_LIBRARY_PATH")
    with liboqs.quick_lookup():  # no cache to read: as always
        assert ctypes.util.find_library is searched
