"""Giving freed memory back to the operating system.

glibc's malloc keeps what a process frees for its next allocations: after an index build swaps
shards, the old shard's structures (and, in ``membus bench``, a model loaded and dropped) stay
in the process's resident set until something reuses them. ``malloc_trim`` returns the free
pages of every arena. Elsewhere (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    return libc if hasattr(libc, "malloc_trim") else None  # glibc only


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the system; True where that was possible.
    Blocking for a few milliseconds on a heap of hundreds of MB, without the GIL (ctypes lets it
    go around the call): run it in a worker thread.

    Example: ``await anyio.to_thread.run_sync(release_free_memory)`` after freeing a shard"""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
