"""The audit trail on a real Redis: every filter, order, limit and time range of ``query``;
buffered writes that reach Redis on flush and on clean shutdown; bounded loss when Redis is
down; age trimming; and what a record costs (printed, not asserted)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

import membus
from membus.access.audit import AuditLog, AuditRecord, audit_key
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig
from membus.core.redis import Redis, redis_client
from membus.errors import InvalidInput, Unavailable
from tests.redis_proc import free_port

pytestmark = pytest.mark.anyio
T = "acme"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)
    yield client
    await client.aclose()


def rec(agent: str = "alice", scope: str = "team/a", **kw: object) -> AuditRecord:
    fields: dict[str, object] = {
        "tenant": T,
        "agent": agent,
        "action": "recall",
        "scope": scope,
        "decision": "allow",
    }
    return AuditRecord.model_validate(fields | kw)


async def test_records_round_trip_and_never_carry_text(redis: Redis) -> None:
    """What is written reads back field for field (plus its position); a record refuses a
    query/content field instead of silently storing or dropping it, and bounds ``reason``."""
    log = AuditLog(redis)
    one = rec(rule="p, alice, recall, team/a", result_count=2, memory_ids=["m1", "m2"])
    await log.record(one)  # no flusher running: writes through
    (back,) = await log.query(T)
    assert back.position is not None
    assert back.model_copy(update={"position": None}) == one
    with pytest.raises(ValidationError):
        rec(query="what did the customer say")
    assert len(rec(reason="x" * 10_000).reason or "") == 500


async def test_query_filters_by_agent_scope_action_decision(redis: Redis) -> None:
    log = AuditLog(redis)
    await log.record_many(
        [
            rec("alice", "team/a"),
            rec("bob", "team/a/x", decision="deny", reason="no rule"),
            rec("alice", "team/ab", action="publish", event_ids=["e1"]),
            rec("carol", "*", action="subscribe", scopes=["private/carol", "team/b"]),
            rec("alice", "team/a", tenant="other"),
        ]
    )

    async def agents(**kw: object) -> list[str]:
        return [r.agent + ":" + r.scope for r in await log.query(T, newest_first=False, **kw)]  # type: ignore[arg-type]

    assert await agents(agent="alice") == ["alice:team/a", "alice:team/ab"]
    assert await agents(scope="team/a") == ["alice:team/a", "bob:team/a/x"]  # subtree, not prefix
    assert await agents(scope="team/a/x") == ["bob:team/a/x"]
    assert await agents(action="publish") == ["alice:team/ab"]
    assert await agents(scope="team/b") == ["carol:*"]  # a multi-scope call, by one of its roots
    assert await agents(decision="deny") == ["bob:team/a/x"]
    assert await agents(agent="alice", action="recall") == ["alice:team/a"]
    assert len(await log.query("other")) == 1  # tenants never mix
    assert await log.query("nobody") == []


async def test_order_limit_and_time_range(redis: Redis) -> None:
    """Newest first by default; ``limit`` cuts; ``since``/``until`` select by the record's time."""
    log = AuditLog(redis)
    marks = []
    for batch in range(3):
        await log.record_many([rec(f"a{batch}-{i}") for i in range(4)])
        await anyio.sleep(0.02)
        marks.append(datetime.now(UTC))
        await anyio.sleep(0.02)
    names = [r.agent for r in await log.query(T, limit=1000)]
    assert names == [f"a{b}-{i}" for b in (2, 1, 0) for i in (3, 2, 1, 0)]
    assert [r.agent for r in await log.query(T, limit=2)] == ["a2-3", "a2-2"]
    assert [r.agent for r in await log.query(T, limit=2, newest_first=False)] == ["a0-0", "a0-1"]
    mid = await log.query(T, since=marks[0], until=marks[1], newest_first=False)
    assert [r.agent for r in mid] == [f"a1-{i}" for i in range(4)]
    assert len(await log.query(T, since=marks[1])) == 4
    assert len(await log.query(T, until=marks[0])) == 4
    # paging across many entries with a filter that matches few, and the scan cap
    await log.record_many([rec("noise") for _ in range(1200)] + [rec("needle")])
    await log.record_many([rec("noise") for _ in range(1200)])
    assert [r.agent for r in await log.query(T, agent="needle")] == ["needle"]
    assert await log.query(T, agent="needle", scan_cap=500) == []
    with pytest.raises(InvalidInput):
        await log.query(T, limit=0)
    with pytest.raises(InvalidInput):
        await log.query(T, since=datetime(2024, 1, 1))  # naive time


async def test_buffered_records_reach_redis_on_flush_and_on_clean_shutdown(redis: Redis) -> None:
    """With the flusher running a record is buffered (cheap), written within a few ms, and
    nothing buffered is lost when the log closes."""
    key = audit_key(T)
    async with AuditLog(redis, flush_every_s=0.05) as log:
        await log.record(rec("first"))
        assert log.pending == 1 and await redis.xlen(key) == 0
        await log.flush()
        assert await redis.xlen(key) == 1
        await log.record(rec("timer"))
        for _ in range(200):  # the timer flushes within flush_every_s
            if await redis.xlen(key) == 2:
                break
            await anyio.sleep(0.01)
        assert await redis.xlen(key) == 2
        await log.record_many([rec(f"late-{i}") for i in range(10)])
        assert log.pending == 10
    assert await redis.xlen(key) == 12 and log.pending == 0
    # after close a record writes through
    await log.record(rec("after"))
    assert await redis.xlen(key) == 13
    # a burst past flush_at does not wait for the timer
    async with AuditLog(redis, flush_every_s=10.0, flush_at=100) as log2:
        await log2.record_many([rec("burst") for _ in range(100)])
        assert log2.pending == 0 and await redis.xlen(key) == 113


async def test_redis_down_keeps_a_bounded_buffer_and_raises_unavailable() -> None:
    """Nothing listens: flush raises ``Unavailable``, records stay buffered for the next try,
    and past ``max_buffer`` the oldest are dropped and counted."""
    down = redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    log = AuditLog(down, flush_at=5, max_buffer=8)
    try:
        for n in range(3):
            with pytest.raises(Unavailable):
                await log.record_many([rec(f"r{n}-{i}") for i in range(4)])
        assert log.pending == 8 and log.dropped == 4 and log.written == 0
        with pytest.raises(Unavailable):
            await log.aclose()
        with pytest.raises(Unavailable):
            await log.query(T)
    finally:
        await down.aclose()


async def test_with_a_flusher_a_redis_outage_never_fails_the_caller() -> None:
    """The door that records is not failed by the audit: records stay buffered (bounded) and
    the flusher retries; only the explicit close reports the loss."""
    down = redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    log = AuditLog(down, flush_every_s=0.001, flush_at=5, max_buffer=20)
    try:
        with pytest.raises(Unavailable):
            async with log:
                for n in range(10):
                    await log.record_many([rec(f"r{n}-{i}") for i in range(4)])
                    await anyio.sleep(0.005)
                assert log.pending == 20 and log.dropped == 20
    finally:
        await down.aclose()


async def test_old_records_are_trimmed_by_age_on_write(redis: Redis) -> None:
    key = audit_key(T)
    await AuditLog(redis, trim_every_s=0).record_many([rec() for _ in range(350)])
    assert await redis.xlen(key) == 350
    await anyio.sleep(0.01)
    short = AuditLog(redis, max_age_s=0.001, trim_every_s=0)
    await short.record(rec("fresh"))
    # approximate MINID drops whole radix-tree nodes (100 entries each): most of the old ones
    assert await redis.xlen(key) <= 101
    assert (await short.query(T, limit=1))[0].agent == "fresh"


async def test_a_flood_of_records_stays_cheap(redis: Redis) -> None:
    """Prints µs per record as the recall path pays it (buffering) and all in (with flushes)."""
    n = 5000
    recs = [rec(result_count=5, memory_ids=[f"m{i}" for i in range(5)]) for _ in range(n)]
    async with AuditLog(redis) as log:
        t0 = time.perf_counter()
        for r in recs:
            await log.record(r)
        t1 = time.perf_counter()
        await log.flush()
    t2 = time.perf_counter()
    assert await redis.xlen(audit_key(T)) == n
    print(
        f"\naudit: {(t1 - t0) / n * 1e6:.1f} µs/record on the caller, "
        f"{(t2 - t0) / n * 1e6:.1f} µs/record including flushes ({n} records)"
    )
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert len(await log.query(T, since=since, limit=n)) == n


async def test_a_published_batch_is_one_record_per_decision_naming_its_events(
    redis_url: str, tmp_path: Path
) -> None:
    """The gate decides once per (action, scope) of a batch; the audit says so once, with the
    ids of every event that decision let in (and a retraction's forget decision apart)."""
    config = MembusConfig(policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url))
    async with membus.open(tmp_path, config) as bus:
        alice = bus.agent("alice", "acme")
        scopes = ["t/a", "t/b", "t/a"]
        drafts = [membus.Draft(content=f"note {i}", scope=s) for i, s in enumerate(scopes)]
        got = await alice.publish_many(drafts)
        await bus.audit.flush()
        records = await AuditLog(bus.redis).query("acme", action="publish", newest_first=False)
        by_scope = {r.scope: r.event_ids for r in records}
        assert by_scope == {"t/a": [got[0].event_id, got[2].event_id], "t/b": [got[1].event_id]}
        assert all(r.decision == "allow" for r in records)
