"""The Edge index build out of process (membus.store.edge_build): the served shard keeps every
acknowledged write through a build, a crash at any step reopens on a complete shard, and a failed
build leaves the served shard as it was. Real Qdrant Edge; the build's child is a real process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from membus.errors import Unavailable
from membus.store import edge, edge_build
from membus.store.edge import EdgeStore
from membus.store.port import Memory
from tests.conformance import META, TENANT, fill, flt, mem, ray, rows, unit
from tests.log_capture import capture_logs

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path, anyio_backend: str) -> AsyncIterator[EdgeStore]:
    s = EdgeStore(tmp_path / "store")
    await s.open(META)
    yield s
    await s.close()


async def _answers(store: EdgeStore, ids: list[str]) -> tuple[Any, ...]:
    """What search, get, count and browse say: equal before and after a build. Searches ask
    for more hits than there are memories: which k of the hits tied at the k-th score the engine
    returns depends on where it holds each point, which a build may change."""
    found = []
    for i in range(6):
        hits = await store.search(ray(i), flt(), 500)
        found.append([(h.memory.id, round(h.score, 5)) for h in hits])
    got = sorted(await store.get(TENANT, ids), key=lambda m: m.id)
    browsed = [m.id for m in await store.browse(flt(), 50)]
    return found, got, await store.count(), await store.count(TENANT), browsed


def _generations(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("shard")}


@pytest.mark.slow
async def test_build_swaps_in_an_equal_shard(store: EdgeStore, tmp_path: Path) -> None:
    """Protects: after a build the store answers every read as before, from the new generation,
    and the old one is gone."""
    saved = await fill(store, [mem(i) for i in range(200)])
    ids = [m.id for m in saved]
    before = await _answers(store, ids)
    await store.optimize()
    root = tmp_path / "store"
    assert edge_build.current(root).name == "shard-1"
    assert _generations(root) == {"shard-1"}
    assert await _answers(store, ids) == before


@pytest.mark.slow
async def test_a_build_reports_how_long_each_step_held_the_process(
    store: EdgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: an operator (and ``membus bench``) can tell how long recall stood still in a
    build: the steps that hold the GIL in the serving process are timed and logged apart from
    the child's build. And the old shard's freed memory is handed back to the system once it
    is closed, not kept resident until reused."""
    trims: list[bool] = []

    def trim() -> bool:
        trims.append(True)
        return True

    monkeypatch.setattr(edge, "release_free_memory", trim)
    await fill(store, [mem(i) for i in range(200)])
    assert store.last_build is None
    with capture_logs() as logs:
        await store.optimize()
    assert trims == [True]
    phases = store.last_build
    assert phases is not None
    steps = (
        phases.flush,
        phases.copy,
        phases.child,
        phases.load,
        phases.swap,
        phases.close,
        phases.trim,
    )
    assert all(s >= 0 for s in steps) and phases.child > 0
    assert phases.stalled_s == pytest.approx(phases.flush + phases.load + phases.close)
    [built] = [e for e in logs if e["event"] == "edge.index_built"]
    assert built["stalled_s"] == round(phases.stalled_s, 3)
    steps_logged = ("flush", "copy", "child", "load", "swap", "close", "trim")
    assert {f"{k}_s" for k in steps_logged} <= built.keys()


@pytest.mark.slow
async def test_writes_during_the_build_are_in_the_shard_after_the_swap(
    store: EdgeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: upserts and deletes acknowledged while the child builds (after the copy) are
    replayed onto the built shard, more of them than the lock-free catch-up leaves for the swap,
    and survive a reopen."""
    first = await fill(store, [mem(i) for i in range(100)])
    real_build = edge_build.build
    during: list[Memory] = []

    async def build_with_writes(path: Path) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(real_build, path)
            for start in range(1000, 1150, 30):  # 150 new memories in batches
                batch = [
                    mem(i, content=f"written during the build {i}")
                    for i in range(start, start + 30)
                ]
                await store.upsert(batch, rows([unit(i % 8) for i in range(len(batch))]))
                during.extend(batch)
            assert await store.delete(TENANT, [m.id for m in first[:20]]) == 20
            assert await store.delete(TENANT, [m.id for m in during[:5]]) == 5
            changed = mem(50, content="memory 50, changed during the build")
            await store.upsert([changed], rows([unit(3)]))

    monkeypatch.setattr(edge_build, "build", build_with_writes)
    await store.optimize()

    kept = first[20:50] + first[51:] + during[5:]
    expected = {m.id: m for m in kept} | {
        first[50].id: mem(50, content="memory 50, changed during the build")
    }
    everyone = [m.id for m in first + during]
    ids = sorted(everyone)

    async def check(s: EdgeStore) -> None:
        got = {m.id: m for m in await s.get(TENANT, ids)}
        assert got == expected
        assert await s.count(TENANT) == len(expected)

    await check(store)
    assert edge_build.current(tmp_path / "store").name == "shard-1"
    await store.close()
    again = EdgeStore(tmp_path / "store")
    await again.open(META)
    try:
        await check(again)
    finally:
        await again.close()


async def _filled_and_closed(root: Path) -> list[Memory]:
    s = EdgeStore(root)
    await s.open(META)
    saved = await fill(s, [mem(i) for i in range(30)])
    await s.close()
    return saved


async def _reopened_holds(root: Path, saved: list[Memory]) -> None:
    s = EdgeStore(root)
    await s.open(META)
    try:
        assert await s.count(TENANT) == len(saved)
        got = await s.get(TENANT, [m.id for m in saved])
        assert sorted(got, key=lambda m: m.id) == sorted(saved, key=lambda m: m.id)
        await fill(s, [mem(99)])  # and it takes writes
        assert await s.count(TENANT) == len(saved) + 1
    finally:
        await s.close()


@pytest.mark.slow
async def test_crash_before_the_switch_reopens_on_the_old_shard(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Protects: a crash after the copy (or mid-copy) but before the switch leaves the old shard
    current, with every write, and the half-built copy is removed at open."""
    root = tmp_path / "store"
    saved = await _filled_and_closed(root)
    edge_build.copy(root / "shard", root / "shard-1")
    (root / "shard-2").mkdir()  # a copy cut short
    (root / "shard-2" / "segments").mkdir()
    (root / "current.tmp").write_text("shard-")  # a pointer write cut short
    await _reopened_holds(root, saved)
    assert _generations(root) == {"shard"}
    assert not (root / "current.tmp").exists()


@pytest.mark.slow
async def test_crash_after_the_switch_reopens_on_the_new_shard(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Protects: a crash after the switch but before the old generation is deleted reopens on
    the new one, and the old one is removed at open."""
    root = tmp_path / "store"
    saved = await _filled_and_closed(root)
    edge_build.copy(root / "shard", root / "shard-1")
    edge_build.switch(root, root / "shard-1")
    await _reopened_holds(root, saved)
    assert _generations(root) == {"shard-1"}
    assert edge_build.next_generation(root).name == "shard-2"


class Builds:
    """The store's ``optimize`` replaced by a count: what ``maintain`` decides, no build."""

    def __init__(
        self, store: EdgeStore, monkeypatch: pytest.MonkeyPatch, optimize_every: int
    ) -> None:
        self.n = 0
        monkeypatch.setattr(store, "optimize", self._build)
        monkeypatch.setattr(store, "_optimize_every", optimize_every)

    async def _build(self) -> None:
        self.n += 1


async def test_a_hybrid_store_counts_its_points_unindexed_until_a_build(
    store: EdgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: Edge counts a point's lexical vector as indexed, so a hybrid store once read
    as fully indexed from its first point and ``maintain`` never built (a 25k-point store:
    25,000 of 25,000 "indexed" before its build). Unindexed counts the dense vectors outside an
    HNSW index; ``maintain`` builds once ``optimize_every`` of them wait."""
    await fill(store, [mem(i) for i in range(40)])
    assert store.unindexed() == 40
    builds = Builds(store, monkeypatch, optimize_every=41)
    await store.maintain()
    assert builds.n == 0
    monkeypatch.setattr(store, "_optimize_every", 40)
    await store.maintain()
    assert builds.n == 1
    counts = 0
    real = store.unindexed

    def counted_unindexed() -> int:
        nonlocal counts
        counts += 1
        return real()

    monkeypatch.setattr(store, "unindexed", counted_unindexed)
    monkeypatch.setattr(store, "_optimize_every", 100)
    await store.maintain()
    await store.maintain()  # the last count (40), nothing written since: short, not counted
    assert counts == 0 and builds.n == 1
    await fill(store, [mem(40)])
    await store.maintain()  # 40 counted + 1 written since: still short of 100, not counted
    assert counts == 0
    monkeypatch.setattr(store, "_optimize_every", 41)
    await store.maintain()
    assert counts == 1 and builds.n == 2


async def test_writers_that_never_pause_get_a_build_at_twice_the_bound(
    store: EdgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: under writing that never paused, the store built only when the runtime's
    five-minute interval came, whatever had piled up unindexed meanwhile. ``busy`` builds wait
    for twice ``optimize_every`` (a build then competes with the writers), never longer."""
    builds = Builds(store, monkeypatch, optimize_every=20)
    await fill(store, [mem(i) for i in range(30)])
    await store.maintain(busy=True)
    assert builds.n == 0  # 30 wait: enough when quiet, not yet while busy
    await store.maintain()
    assert builds.n == 1
    await fill(store, [mem(i) for i in range(30, 40)])
    await store.maintain(busy=True)
    assert builds.n == 2  # 40 wait: twice the bound


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["child", "disk"])
async def test_a_failed_build_leaves_the_served_shard_intact(
    store: EdgeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Protects: when the child fails (its copy vanished under it) or the copy runs out of disk,
    optimize raises Unavailable, maintain logs it and backs off before copying the shard again,
    the store serves and takes writes as before, nothing is left on disk, and the next build
    succeeds."""
    saved = await fill(store, [mem(i) for i in range(40)])
    root = tmp_path / "store"
    real_copy = edge_build.copy

    def copy_then_lose(src: Path, dst: Path) -> None:
        real_copy(src, dst)
        if failure == "disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        edge_build.discard(dst)

    monkeypatch.setattr(edge_build, "copy", copy_then_lose)
    with pytest.raises(Unavailable, match="index build"):
        await store.optimize()
    monkeypatch.setattr(store, "_optimize_every", 1)
    copies = 0

    def counted(src: Path, dst: Path) -> None:
        nonlocal copies
        copies += 1
        copy_then_lose(src, dst)

    monkeypatch.setattr(edge_build, "copy", counted)
    await store.maintain()  # logged, not raised
    await store.maintain()  # backing off: no second copy of the shard two seconds later
    assert copies == 1
    monkeypatch.setattr(store, "_retry_at", 0.0)  # the backoff is over
    await store.maintain()
    assert copies == 2
    assert _generations(root) == {"shard"}
    assert edge_build.current(root).name == "shard"
    await fill(store, [mem(100)])
    assert await store.count(TENANT) == len(saved) + 1
    got = await store.get(TENANT, [m.id for m in saved])
    assert sorted(got, key=lambda m: m.id) == sorted(saved, key=lambda m: m.id)

    monkeypatch.setattr(edge_build, "copy", real_copy)
    await store.optimize()
    assert edge_build.current(root).name == "shard-1"  # the failed one's name, freed again
    assert await store.count(TENANT) == len(saved) + 1


async def test_close_during_a_build_stops_it_before_letting_go_of_the_store(
    store: EdgeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: ``close`` while the child builds kills the child and removes its copy before
    the file lock goes (another process may open the store the moment it is free, and a build
    left running could switch generations under it); ``optimize`` says the store closed; the
    next open serves the old generation with every write."""
    saved = await fill(store, [mem(i) for i in range(40)])
    root = tmp_path / "store"
    pid_file = tmp_path / "child.pid"
    started = anyio.Event()

    async def hanging_build(path: Path) -> None:  # a child that would build for ten minutes
        started.set()
        code = (
            "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
        )
        await anyio.run_process([sys.executable, "-c", code, str(pid_file)], check=False)

    monkeypatch.setattr(edge_build, "build", hanging_build)
    failed: list[BaseException] = []

    async def build() -> None:
        try:
            await store.optimize()
        except Unavailable as exc:
            failed.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(build)
            await started.wait()
            await anyio.to_thread.run_sync(_written, pid_file)
            await store.close()
            assert _generations(root) == {"shard"}  # the copy is gone before close returns
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid_file.read_text()), 0)
    assert len(failed) == 1 and "closed during an index build" in str(failed[0])
    again = EdgeStore(root)
    await again.open(META)  # the file lock is free
    try:
        got = await again.get(TENANT, [m.id for m in saved])
        assert sorted(got, key=lambda m: m.id) == sorted(saved, key=lambda m: m.id)
        assert edge_build.current(root).name == "shard"
    finally:
        await again.close()


def _written(path: Path) -> None:
    """Wait until a child process has written ``path``."""
    while not path.exists() or not path.read_text():
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["copy", "build", "switch", "discard"])
async def test_a_process_killed_at_each_step_loses_no_acknowledged_write(
    tmp_path: Path, anyio_backend: str, step: str
) -> None:
    """Protects: SIGKILL of the store's process at each step of a build, with writes going on,
    reopens on one complete generation holding every write it acknowledged (tests/edge_build_proc
    halts there, so the kill lands exactly at the step)."""
    root = tmp_path / "store"
    acked = await anyio.to_thread.run_sync(_killed_at, root, step)
    assert len(acked) >= 200
    s = EdgeStore(root)
    await s.open(META)
    try:
        got = {m.id for m in await s.get(TENANT, acked)}
        assert got == set(acked)
        assert await s.count(TENANT) >= len(acked)  # writes in flight at the kill may be there
    finally:
        await s.close()
    assert len(_generations(root)) == 1


def _killed_at(root: Path, step: str) -> list[str]:
    """Run tests/edge_build_proc until it halts at ``step``, SIGKILL it; the ids it acknowledged."""
    cmd = [sys.executable, "-m", "tests.edge_build_proc", str(root), step]
    acked: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ack":
                acked.append(rest)
            elif word == "at":
                assert rest == step
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return acked


def _sparse_file(path: Path) -> bytes:
    """A file like Edge's preallocated ones: 32 MiB, data at two places, holes elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(b"head")
        out.seek(8 << 20)
        out.write(b"middle")
        out.truncate(32 << 20)
    if path.stat().st_blocks * 512 >= 8 << 20:
        pytest.skip("this file system does not keep holes")
    return path.read_bytes()


def test_the_build_copy_keeps_holes_and_every_byte(tmp_path: Path) -> None:
    """Protects: a build's copy of the shard takes the disk its data takes. Edge preallocates
    WAL segments and vector chunks as holes; a plain copy wrote them out as zeros, and they
    stayed in the generation served next (the one-scope bench's disk after a 20k build: 225 MB
    against 178)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = _sparse_file(src / "segments" / "chunk")
    (src / "small").write_bytes(b"x" * 100)
    edge_build.copy(src, dst)
    copied = dst / "segments" / "chunk"
    assert copied.read_bytes() == content
    assert copied.stat().st_blocks * 512 < 1 << 20
    assert (dst / "small").read_bytes() == b"x" * 100


def test_the_build_copy_copies_every_byte_where_holes_are_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: on a file system without SEEK_DATA the copy still holds every byte."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = _sparse_file(src / "chunk")
    real_lseek = edge_build.os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (edge_build.os.SEEK_DATA, edge_build.os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(edge_build.os, "lseek", lseek)
    edge_build.copy(src, dst)
    assert (dst / "chunk").read_bytes() == content


def test_the_build_copy_reads_and_writes_where_the_kernel_cannot_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: where ``copy_file_range`` refuses (across file systems on older kernels, or
    not offered), the copy falls back to reading and writing, with every byte and the holes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = _sparse_file(src / "chunk")

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(edge_build.os, "copy_file_range", refuse)
    edge_build.copy(src, dst)
    assert (dst / "chunk").read_bytes() == content
    assert (dst / "chunk").stat().st_blocks * 512 < 1 << 20
