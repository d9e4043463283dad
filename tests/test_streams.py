"""Retention and group bookkeeping on real Redis streams: trimming never loses an entry a consumer
group still needs, and idle/lag reflect what writers have really acknowledged."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from membus.core.config import WorkerConfig
from membus.stream.ops import ensure_group, group_stats, idle, safe_trim_point, trim
from membus.stream.reading import BatchReader

pytestmark = pytest.mark.anyio

STREAM = "membus:{acme}:events"


def later_ms() -> int:
    """'Now' a minute ahead: every entry added so far has aged out of a max_age of 0."""
    return int(time.time() * 1000) + 60_000


Entries = list[tuple[str, dict[str, str]]]  # what a decode_responses client returns


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def add(r: aioredis.Redis, n: int, stream: str = STREAM) -> list[str]:
    return [str(await r.xadd(stream, {"e": str(i)})) for i in range(n)]


async def ids(r: aioredis.Redis, stream: str = STREAM) -> list[str]:
    return [eid for eid, _ in cast(Entries, await r.xrange(stream))]


async def read(r: aioredis.Redis, group: str, n: int, stream: str = STREAM) -> list[str]:
    batch = cast(list[tuple[str, Entries]], await r.xreadgroup(group, "c1", {stream: ">"}, count=n))
    return [eid for eid, _ in batch[0][1]] if batch else []


async def test_trim_keeps_pending_and_undelivered_entries(r: aioredis.Redis) -> None:
    """Even with max_age 0, nothing at or after the oldest pending entry is removed."""
    all_ids = await add(r, 10)
    await ensure_group(r, STREAM, "g1")
    delivered = await read(r, "g1", 4)
    await r.xack(STREAM, "g1", *delivered[2:])  # entries 0,1 pending; 2,3 acked; 4.. undelivered

    assert await trim(r, STREAM, 0, later_ms()) == 0
    assert await ids(r) == all_ids

    await r.xack(STREAM, "g1", *delivered[:2])
    assert await trim(r, STREAM, 0, later_ms()) == 4
    assert await ids(r) == all_ids[4:]  # undelivered entries stay

    await r.xack(STREAM, "g1", *await read(r, "g1", 10))
    assert await trim(r, STREAM, 0, later_ms()) == 6
    assert await r.xlen(STREAM) == 0


async def test_trim_stops_at_the_slower_group(r: aioredis.Redis) -> None:
    all_ids = await add(r, 10)
    await ensure_group(r, STREAM, "fast")
    await ensure_group(r, STREAM, "slow")
    await r.xack(STREAM, "fast", *await read(r, "fast", 10))
    await r.xack(STREAM, "slow", *await read(r, "slow", 3))
    assert await trim(r, STREAM, 0, later_ms()) == 3
    assert await ids(r) == all_ids[3:]

    pending_in_slow = await read(r, "slow", 2)  # delivered to slow, not acked
    assert await trim(r, STREAM, 0, later_ms()) == 0
    assert await ids(r) == all_ids[3:]
    await r.xack(STREAM, "slow", *pending_in_slow)
    assert await trim(r, STREAM, 0, later_ms()) == 2


async def test_a_new_group_that_has_read_nothing_blocks_trimming(r: aioredis.Redis) -> None:
    all_ids = await add(r, 5)
    await ensure_group(r, STREAM, "g1")
    await r.xack(STREAM, "g1", *await read(r, "g1", 5))
    await ensure_group(r, STREAM, "late", start="0")
    assert await trim(r, STREAM, 0, later_ms()) == 0
    assert await ids(r) == all_ids


async def test_age_limit_caps_what_is_trimmed(r: aioredis.Redis) -> None:
    """Acknowledged but younger than max_age: kept."""
    await add(r, 5)
    await ensure_group(r, STREAM, "g1")
    await r.xack(STREAM, "g1", *await read(r, "g1", 5))
    now_ms = int(time.time() * 1000)
    assert await trim(r, STREAM, 3600, now_ms) == 0
    assert await r.xlen(STREAM) == 5
    assert await trim(r, STREAM, 0, now_ms + 1000) == 5


async def test_events_stream_without_group_is_never_trimmed(r: aioredis.Redis) -> None:
    """No writer has read it yet, so every entry is still needed, whatever its age."""
    await add(r, 5)
    assert await safe_trim_point(r, STREAM) is None
    assert await trim(r, STREAM, 0, later_ms()) == 0
    assert await r.xlen(STREAM) == 5


async def test_change_feed_without_groups_is_trimmed_by_age_only(r: aioredis.Redis) -> None:
    changes = "membus:{acme}:changes"
    await add(r, 5, changes)
    now_ms = int(time.time() * 1000)
    assert await trim(r, changes, 3600, now_ms, require_group=False) == 0
    assert await trim(r, changes, 0, later_ms(), require_group=False) == 5


async def test_idle_and_lag_follow_delivery_and_acks(r: aioredis.Redis) -> None:
    await add(r, 6)
    assert not await idle(r, [STREAM], "g1")  # entries, no group yet
    await ensure_group(r, STREAM, "g1")
    [s] = await group_stats(r, STREAM)
    assert (s.pending, s.lag) == (0, 6)
    got = await read(r, "g1", 4)
    [s] = await group_stats(r, STREAM)
    assert (s.pending, s.lag) == (4, 2)
    await r.xack(STREAM, "g1", *got)
    assert not await idle(r, [STREAM], "g1")
    await r.xack(STREAM, "g1", *await read(r, "g1", 10))
    assert await idle(r, [STREAM], "g1")
    assert await idle(r, ["membus:{nobody}:events"], "g1")  # a stream that does not exist


async def test_idle_counts_what_deletions_hide_from_redis_lag(r: aioredis.Redis) -> None:
    """Redis reports no lag once an entry the group has not read is deleted (an erasure's
    XDEL): ``idle`` must then count the unread entries itself, not take "no lag" for none."""
    entries = await add(r, 5)
    await ensure_group(r, STREAM, "g1")
    await r.xack(STREAM, "g1", *await read(r, "g1", 2))
    await r.xdel(STREAM, entries[3])  # unread by g1: its lag becomes unknown
    groups = cast(list[dict[str, Any]], await r.xinfo_groups(STREAM))
    assert groups[0]["lag"] is None
    assert not await idle(r, [STREAM], "g1")  # entries 2 and 4 are still unread
    await r.xack(STREAM, "g1", *await read(r, "g1", 10))
    assert await idle(r, [STREAM, "membus:{nobody}:events"], "g1")
    await r.xadd("membus:{other}:events", {"e": "x"})  # a stream no group has read yet
    assert not await idle(r, [STREAM, "membus:{other}:events"], "g1")


async def test_a_reader_is_quiet_only_after_a_blocking_read_found_nothing(
    r: aioredis.Redis,
) -> None:
    """Idle work (the near-duplicate pass) waits for ``quiet``: an empty read right after
    another writer took the entries, or a non-blocking one, must not count as idle."""
    await ensure_group(r, STREAM, "writers")
    reader = BatchReader(r, WorkerConfig(block_ms=20, linger_ms=0), "w1", cluster=False)
    assert not reader.quiet
    await reader.read([STREAM], block=False)
    assert not reader.quiet  # a non-blocking miss proves nothing
    assert not [e for _, e in await reader.read([STREAM]) if e]
    assert reader.quiet  # waited block_ms: idle
    await add(r, 3)
    assert sum(len(e) for _, e in await reader.read([STREAM], block=False)) == 3
    assert not reader.quiet  # work arrived
    await reader.read([STREAM], block=False)
    assert not reader.quiet
