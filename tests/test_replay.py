"""The writer's replay check (membus/stream/replay.py): verdicts per batch in one script call, the
records it leaves behind, and ULID timestamps read as python-ulid reads them."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest
from ulid import ULID

from membus.core.redis import Redis, redis_client
from membus.errors import InvalidInput
from membus.stream.replay import ReplayGuard

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)
    yield client
    await client.aclose()


def ulid_at(seconds: float) -> str:
    return str(ULID.from_timestamp(seconds))


def test_ulid_timestamps_match_the_reference_decoder() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        u = ulid_at(rng.uniform(0, 2**48 / 1000 - 1))
        assert ReplayGuard._ms(u) == ULID.from_str(u).milliseconds
    for bad in ("8" + "Z" * 25, "not-a-ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAU", ""):
        with pytest.raises(InvalidInput):
            ReplayGuard._ms(bad)


async def test_verdicts_and_the_records_left_behind(redis: Redis) -> None:
    now = time.time()
    seen, fresh, old = ulid_at(now - 1800), ulid_at(now), ulid_at(0)
    later, other_hour = ulid_at(now + 2 * 3600), ulid_at(now - 2 * 3600)
    guard, tenant = ReplayGuard(redis), "t-verdicts"
    batches = [
        [(seen, "1-0")],
        [(seen, "1-0"), (fresh, "2-0"), (old, "3-0"), (fresh, "4-0"), (seen, "5-0")],
        [(other_hour, "6-0"), (later, "7-0"), ("8" + "Z" * 25, "8-0"), (other_hour, "9-0")],
        [(old, "10-0")],
        [],
    ]
    got = [list(await guard.check_many(tenant, b)) for b in batches]
    assert got == [
        ["new"],
        ["redelivery", "new", "stale", "replay", "replay"],  # a copy in its original's batch too
        ["new", "stale", "stale", "replay"],  # too far ahead, not a ULID
        ["stale"],
        [],
    ]
    for eid, first in ((seen, "1-0"), (fresh, "2-0"), (other_hour, "6-0")):
        key, field = guard.slot(tenant, eid)
        assert await redis.hget(key, field) == first  # the entry that first carried it
        assert await redis.ttl(key) > 3600  # kept until its events turn stale


async def test_forget_then_check_is_new_again(redis: Redis) -> None:
    guard = ReplayGuard(redis, window_s=3600)
    eid = ulid_at(time.time())
    assert await guard.check("acme", eid, "1-0") == "new"
    assert await guard.check("acme", eid, "9-0") == "replay"
    await guard.forget("acme", eid)  # an operator re-publishing from the DLQ
    assert await guard.check("acme", eid, "9-0") == "new"
