"""Access statistics on a real redis-server: recall bumps what it returns (best effort), agents
read them only for memories they may recall, heat can rank by them, erasure drops them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import membus
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.bus.api import Bus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.keys import TenantKeys
from membus.core.redis import redis_client
from membus.errors import InvalidInput
from membus.recall import ranking
from membus.recall.heat import Access, AccessLog, bump_access, forget_access, read_access
from membus.store.port import point_id
from tests.redis_proc import RedisProcess

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
IDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(3)]


def config(url: str, **ranking: float) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        # every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
        ranking=RankingConfig(**{"min_score": 0, **ranking}),
    )


async def test_bump_read_and_forget_round_trip(redis_url: str) -> None:
    redis = redis_client(redis_url)
    try:
        at = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp() * 1000)
        assert await bump_access(redis, "acme", [IDS[0], IDS[1], IDS[0]], at)  # repeats count once
        assert await bump_access(redis, "acme", [IDS[0]], at + 1000)
        assert await bump_access(redis, "other", [IDS[2]], at)
        got = await read_access(redis, "acme", IDS)
        assert got[IDS[0]] == Access(count=2, last_at=datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC))
        assert got[IDS[1]].count == 1
        assert got[IDS[2]] == Access()  # tenants never mix
        assert await forget_access(redis, "acme", [IDS[0], IDS[2]]) == 2
        assert (await read_access(redis, "acme", [IDS[0]]))[IDS[0]] == Access()
        assert (await read_access(redis, "acme", [IDS[1]]))[IDS[1]].count == 1
        assert await forget_access(redis, "acme", []) == 0
        # one hash-tagged key per tenant: same cluster slot as the tenant's streams
        assert set(await redis.keys("membus:*:access")) == {
            TenantKeys("acme").access,
            TenantKeys("other").access,
        }
        assert TenantKeys("acme").access == "membus:{acme}:access"
    finally:
        await redis.aclose()


async def test_a_flush_larger_than_one_script_call_counts_every_memory(redis_url: str) -> None:
    """The flusher writes a tenant's bumps in script calls of at most 1,000 memories each (so
    one call cannot hold Redis long): a buffer of 2,500 counts each of them, with its time."""
    redis = redis_client(redis_url)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(2_500)]
    at = int(datetime(2026, 1, 3, tzinfo=UTC).timestamp() * 1000)
    try:
        await redis.delete(TenantKeys("many").access)
        assert await bump_access(redis, "many", ids, at)
        assert await bump_access(redis, "many", ids[::2], at + 1000)
        got = await read_access(redis, "many", ids)
        assert [got[i].count for i in ids] == [2 - n % 2 for n in range(len(ids))]
        assert got[ids[-1]].last_at == datetime(2026, 1, 3, tzinfo=UTC)
        assert got[ids[0]].last_at == datetime(2026, 1, 3, 0, 0, 1, tzinfo=UTC)
    finally:
        await redis.aclose()


async def test_bump_is_best_effort_when_redis_is_gone() -> None:
    redis = redis_client("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    try:
        assert await bump_access(redis, "acme", IDS) is False
    finally:
        await redis.aclose()


async def test_the_access_log_writes_off_the_request_path_and_nothing_is_lost(
    redis_url: str,
) -> None:
    """Recall only buffers its bumps; the flusher writes them. A reader of statistics sees its
    own recalls (the buffer is written first), and closing writes whatever is left."""
    redis = redis_client(redis_url)
    log = AccessLog(redis, flush_every_s=60)  # the timer never fires during the test
    try:
        await redis.delete(TenantKeys("buffered").access)
        async with anyio.create_task_group() as tg:
            await tg.start(log.run)
            await log.bump("buffered", [IDS[0], IDS[0], IDS[1]])  # repeats in one recall: once
            await log.bump("buffered", [IDS[0]])
            assert await read_access(redis, "buffered", [IDS[0]]) == {IDS[0]: Access()}
            stats = await log.read("buffered", [IDS[0], IDS[1]])
            assert (stats[IDS[0]].count, stats[IDS[1]].count) == (2, 1)
            await log.bump("buffered", [IDS[1]])
            await log.aclose()
            tg.cancel_scope.cancel()
        assert (await read_access(redis, "buffered", [IDS[1]]))[IDS[1]].count == 2
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_recall_bumps_what_it_returns_and_only_that(redis_url: str, tmp_path: Path) -> None:
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        kept = await alice.publish("the printer on floor 3 is out of toner", scope="team/a")
        other = await alice.publish("lunch is at noon", scope="team/a")
        await bus.drain(10)
        before = datetime.now(UTC) - timedelta(seconds=1)
        for _ in range(3):
            [h] = await alice.recall("printer toner floor 3", k=1)
        assert h.memory.id == point_id("acme", kept.event_id)
        stats = await alice.access([h.memory.id, point_id("acme", other.event_id)])
        assert stats[h.memory.id].count == 3
        last = stats[h.memory.id].last_at
        assert last is not None and last >= before
        assert stats[point_id("acme", other.event_id)] == Access()


async def test_access_answers_only_for_memories_the_caller_may_recall(
    redis_url: str, tmp_path: Path
) -> None:
    """Statistics are about memories: a memory the caller may not recall is left out, as if it
    did not exist (its id says nothing). Malformed ids are refused like everywhere else."""
    gate = CasbinGate(MemorySource("p, *, acme, team/*, publish|recall, allow\n"))
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        alice, bob = bus.agent("alice", "acme"), bus.agent("bob", "acme")
        private = await alice.publish("alice's diary: the launch slips", scope="agent/alice/notes")
        shared = await alice.publish("the launch slips a week", scope="team/launch")
        await bus.drain(10)
        mine, ours = point_id("acme", private.event_id), point_id("acme", shared.event_id)
        await alice.recall("launch slips", k=5)
        assert {m: a.count for m, a in (await alice.access([mine, ours])).items()} == {
            mine: 1,
            ours: 1,
        }
        assert set(await bob.access([mine, ours])) == {ours}
        with pytest.raises(InvalidInput):
            await bob.access(["not-a-uuid"])


@pytest.mark.slow
async def test_recall_survives_a_redis_that_refuses_the_bump(
    fresh_redis: RedisProcess, tmp_path: Path
) -> None:
    """A user without HINCRBY (an old ACL file): the recall answers, the failure is only logged."""
    admin = fresh_redis.client()
    admin.acl_setuser(
        "nobump",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-hincrby"],
    )
    admin.close()
    async with membus.open(tmp_path, config(fresh_redis.url)) as bus:
        await bus.agent("alice", "acme").publish("the wifi password changed", scope="team/a")
        await bus.drain(10)
        url = f"redis://nobump:pw@127.0.0.1:{fresh_redis.port}/0"
        limited = Bus(redis_client(url), bus.store, bus.embedder, bus.config)
        try:
            [h] = await limited.agent("alice", "acme").recall("wifi password", k=1)
        finally:
            await limited.redis.aclose()
        assert h.memory.content == "the wifi password changed"
        # the bump script stopped at its first refused command: the count did not move
        assert (await bus.agent("alice", "acme").access([h.memory.id]))[h.memory.id].count == 0


@pytest.mark.slow
async def test_heat_ranks_often_recalled_memories_up_when_weighted(
    redis_url: str, tmp_path: Path
) -> None:
    """The same text in two scopes: the memory recalled more often wins once heat has a weight
    (strong enough to overturn one rank of a hybrid engine's fusion); by default heat is off."""
    assert not ranking.uses_heat(RankingConfig())
    cfg = config(
        redis_url, heat_weight=0.6, heat_saturation=1, recency_weight=0, importance_weight=0
    )
    async with membus.open(tmp_path, cfg) as bus:
        alice = bus.agent("alice", "acme")
        text = "standup moved to 9:30"
        await alice.publish(text, scope="team/a")
        await alice.publish(text, scope="team/b")
        await bus.drain(10)
        for _ in range(5):
            await alice.recall("standup time", k=1, scopes=["team/b"])
        hits = await alice.recall("when is standup", k=2)
        assert [h.memory.scope for h in hits] == ["team/b", "team/a"]
        assert hits[0].score > hits[1].score


@pytest.mark.slow
async def test_forget_leaves_no_statistics_even_of_a_recall_just_made(
    redis_url: str, tmp_path: Path
) -> None:
    """The bus writes its buffered bumps before erasing, so erasure finds and drops them: a
    forgotten memory leaves no trace of how often it was read."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "erase-stats")
        await alice.publish("the vault code is 4471", scope="team/a")
        await bus.drain(10)
        [hit] = await alice.recall("vault code", k=1)  # bump buffered, not yet written
        await alice.forget(memory_ids=[hit.memory.id])
        await anyio.sleep(0.05)  # past the flusher's delay: nothing comes back later
        assert await bus.redis.hgetall(TenantKeys("erase-stats").access) == {}
