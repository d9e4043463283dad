"""The embedded runtime: ``membus.open(path)`` owns a redis-server child, an Edge store and writers
under one directory; closing and reopening (even after the host is SIGKILLed) loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest

import membus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, WorkerConfig
from membus.errors import Conflict, Unavailable
from membus.runtime.embedded import socket_path
from membus.store.port import point_id

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
FAST = WorkerConfig(min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50)
NO_WRITERS = MembusConfig(
    policy=PolicyConfig(mode="open"), writers=0, worker=FAST, ranking=EVERY_HIT
)
WRITERS = MembusConfig(policy=PolicyConfig(mode="open"), worker=FAST, ranking=EVERY_HIT)


@pytest.mark.slow
async def test_events_published_without_writers_are_committed_after_reopen(tmp_path: Path) -> None:
    """Published, closed before any writer ran, reopened with writers: all become memories; a
    further reopen finds every one of them again."""
    async with membus.open(tmp_path, NO_WRITERS) as bus:
        receipts = await bus.agent("alice", "acme").publish_many(
            [membus.Draft(content=f"pending thought {i}", scope="team") for i in range(50)]
        )
    ids = [point_id("acme", r.event_id) for r in receipts]

    async with membus.open(tmp_path, WRITERS) as bus:
        await bus.drain(timeout_s=15)
        assert await bus.store.count("acme") == 50

    async with membus.open(tmp_path, NO_WRITERS) as bus:
        assert len(await bus.store.get("acme", ids)) == 50
        hits = await bus.agent("bob", "acme").recall("pending thought 7", k=1)
        assert hits[0].memory.content == "pending thought 7"
        stats = await bus.stats()
        assert stats["tenants"]["acme"]["groups"][0]["pending"] == 0


@pytest.mark.slow
async def test_second_open_of_the_same_path_is_a_conflict(tmp_path: Path) -> None:
    async with membus.open(tmp_path, WRITERS) as bus:
        with pytest.raises(Conflict):
            async with membus.open(tmp_path, WRITERS):
                pass
        # the refused opener touched nothing: the first bus still works
        await bus.agent("alice", "acme").publish("still here", scope="team")
        await bus.drain(timeout_s=10)
        assert await bus.store.count("acme") == 1
    async with membus.open(tmp_path, NO_WRITERS) as bus:  # and the path is free again after close
        assert await bus.store.count("acme") == 1


@pytest.mark.slow
async def test_long_paths_fall_back_to_a_short_socket(tmp_path: Path) -> None:
    """unix socket paths are limited to ~108 bytes; deep data directories must still work."""
    root = tmp_path / ("d" * 60) / ("e" * 60)
    sock = socket_path(root / "redis")
    assert len(str(root / "redis" / "redis.sock")) > 100 and len(str(sock)) <= 100
    async with membus.open(root, WRITERS) as bus:
        assert sock.exists()
        await bus.agent("alice", "acme").publish("deep down", scope="team")
        await bus.drain(timeout_s=10)
        assert await bus.store.count("acme") == 1
    assert not sock.exists()
    async with membus.open(root, NO_WRITERS) as bus:
        assert await bus.store.count("acme") == 1


def test_a_squatted_socket_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: another local user creates the short socket's directory first (world-writable,
    or a link to a place they control) to put their own server at the predictable socket name.
    A long data directory's socket only goes into a directory that is this user's, 0700, and
    not a link; anything else is refused with a typed error before a socket is used."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "redis"
    private = tmp_path / f"membus-{os.getuid()}"
    sock = socket_path(deep)
    assert sock.parent == private and stat.S_IMODE(private.stat().st_mode) == 0o700

    private.chmod(0o777)  # opened up to everyone
    with pytest.raises(Unavailable, match="0700"):
        socket_path(deep)
    private.rmdir()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    private.symlink_to(elsewhere)  # a link, even to a 0700 directory
    with pytest.raises(Unavailable, match="0700"):
        socket_path(deep)


_HOST = """
import sys, time
import membus
from membus.core.config import MembusConfig, PolicyConfig
config = MembusConfig(policy=PolicyConfig(mode="open"), writers=0)
with membus.open_sync(sys.argv[1], config) as bus:
    agent = bus.agent("alice", "acme")
    for i in range(int(sys.argv[2])):
        agent.publish(f"before the crash {i}", scope="team", wait=False)  # writers=0
    print("published", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
async def test_host_process_sigkilled_after_publish_loses_nothing(tmp_path: Path) -> None:
    """The embedded redis-server gets SIGTERM when its host dies, so it flushes its AOF; the next
    open finds every acknowledged publish."""
    n = 100
    host = subprocess.Popen(  # noqa: ASYNC220 - we SIGKILL it, anyio's process API adds nothing
        [sys.executable, "-c", _HOST, str(tmp_path), str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert host.stdout is not None
        with anyio.fail_after(30):
            while (line := await anyio.to_thread.run_sync(host.stdout.readline)) != b"published\n":
                assert line, "the host process died before publishing"
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    sock = socket_path(tmp_path / "redis")
    deadline = time.monotonic() + 10
    while sock.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a file
        await anyio.sleep(0.02)  # the orphaned server got SIGTERM and is shutting down

    async with membus.open(tmp_path, WRITERS) as bus:
        await bus.drain(timeout_s=15)
        assert await bus.store.count("acme") == n


@pytest.mark.slow
@pytest.mark.anyio
async def test_embedded_redis_outlives_retired_worker_threads(tmp_path: Path) -> None:
    """The death signal of the redis child is bound to the forking thread: it must not be a
    worker thread that anyio retires after 10 s idle (that killed long-running buses)."""
    async with membus.open(tmp_path / "bus") as bus:
        agent = bus.agent("a", tenant="t")
        # several worker threads exist, then all go idle past anyio's 10 s retirement
        await asyncio.gather(*[anyio.to_thread.run_sync(time.sleep, 0.05) for _ in range(4)])
        await anyio.sleep(11)
        await anyio.to_thread.run_sync(time.sleep, 0.01)
        await agent.publish("still here", scope="agent/a")
        await bus.drain(timeout_s=10)
        assert [h.memory.content for h in await agent.recall("still here")] == ["still here"]
