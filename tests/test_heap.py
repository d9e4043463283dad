"""membus.core.heap: freed memory goes back to the system after a big free."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from membus.core import heap


def _resident() -> int:
    """This process's resident set in bytes (/proc, as ``membus bench`` reads it)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(heap._libc() is None, reason="glibc's malloc_trim only")
def test_freed_heap_memory_leaves_the_resident_set() -> None:
    """Protects: what an index build frees (the old shard) stops counting against the process
    (a container's memory limit sees the resident set, not what malloc keeps for reuse)."""
    # 64 KB blocks: under glibc's mmap threshold, so they come from the heap, as a shard's do;
    # each followed by a small block that stays, so the freed ones are holes that free() alone
    # cannot hand back (it trims only the top of the heap)
    blocks, kept = [], []
    for _ in range(3_000):  # ~200 MB, every page touched
        blocks.append(bytearray(b"x" * 65_536))
        kept.append(bytearray(b"y" * 1_024))
    held = _resident()
    del blocks
    assert heap.release_free_memory() is True
    assert _resident() < held - 100 * 2**20
    assert len(kept) == 3_000


def test_elsewhere_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Protects: on a C library without malloc_trim (musl, macOS) the call is a no-op."""
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.release_free_memory() is False
