"""Erasure on a real Redis and a real store: after ``forget`` no trace of a canary string remains
in any Redis key (every stream entry, hash, set, string) or store point, whatever the criterion,
while memories outside the criteria survive untouched and tombstones stop the erased ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest

import membus
from membus.access.gate import OpenGate
from membus.access.signing import KeyRegistry
from membus.bus.api import Bus
from membus.bus.erasure import (
    erased,
    errors_key,
    forget,
    is_tombstoned,
    tombstoned,
)
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.envelope import Event, new_event_id
from membus.core.keys import TenantKeys, tenants_key
from membus.core.redis import Redis, redis_client
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Vectors
from membus.errors import InvalidInput
from membus.store.edge import EdgeStore
from membus.store.port import Memory, Store, StoreMeta, point_id
from membus.stream.feed import RECHECK_S, announce_deletes, follow, upsert_fields
from membus.stream.ops import publish_signed
from membus.stream.tombstones import tombstones_key
from membus.writer.worker import Writer

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

CANARY = "zq-canary-7f3e1d"
TENANT = "acme"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)


def config(url: str, writers: int) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=writers,
        ranking=EVERY_HIT,
    )


@dataclass
class World:
    bus: Bus
    canary_events: list[str]  # every event id that carries the canary
    committed: list[str]  # the canary events that became memories
    keeper_events: list[str]
    beta_events: list[str]


def leaky_fields(i: int) -> dict[str, Any]:
    return {
        "scope": "team/secret/deep" if i == 0 else "team/secret",
        "subject": f"subj-{CANARY}",
        "metadata": {"note": f"card of {CANARY}", "i": i},
    }


@pytest.fixture
async def world(redis_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """Canary events in every place: committed (memory + change entry + acked stream entry), an
    invalid one parked in the DLQ, an error note, one pending on a consumer, one undelivered."""
    path, keys = tmp_path / "bus", TenantKeys(TENANT)
    canary: list[str] = []
    async with membus.open(path, config(redis_url, writers=1)) as bus:
        leaky, keeper = bus.agent("leaky", TENANT), bus.agent("keeper", TENANT)
        committed = [
            (await leaky.publish(f"{CANARY} said card {i} is 4111", **leaky_fields(i))).event_id
            for i in range(3)
        ]
        keepers = [
            (await keeper.publish(f"ordinary note {i}", scope="team/open", subject="other"))
            for i in range(3)
        ]
        beta = [(await bus.agent("keeper", "beta").publish("beta note", scope="team/secret"))]
        bad_id = new_event_id()
        bad = {"id": bad_id, "tenant": TENANT, "agent": "leaky", "content": f"{CANARY} again"}
        bad |= leaky_fields(1) | {"label": "not-a-label"}
        await bus.redis.xadd(keys.events, {"e": orjson.dumps(bad)})
        await bus.drain(timeout_s=15)
        # a writer's error note on an entry (it failed once, then went through)
        noted = await leaky.publish(f"{CANARY} flaky", **leaky_fields(2))
        await bus.drain(timeout_s=15)
        await bus.redis.hset(errors_key(TENANT), noted.position, f"ValueError: {CANARY}")
        committed.append(noted.event_id)
        canary = [*committed, bad_id]
    async with membus.open(path, config(redis_url, writers=0)) as bus:
        leaky, keeper = bus.agent("leaky", TENANT), bus.agent("keeper", TENANT)
        unconsumed = [
            (await leaky.publish(f"{CANARY} late news", **leaky_fields(i))).event_id
            for i in range(2)
        ]
        await keeper.publish("ordinary late note", scope="team/open", subject="other")
        # the first unconsumed one is delivered to a consumer that never acks it
        await bus.redis.xreadgroup("writers", "ghost", {keys.events: ">"}, count=1)
        yield World(
            bus,
            canary + unconsumed,
            committed,
            [r.event_id for r in keepers],
            [r.event_id for r in beta],
        )


async def traces(redis: Redis, needle: str) -> list[str]:
    """Every key whose name or value (any type, every stream entry and group) holds ``needle``."""
    found: list[str] = []
    async for raw_key in redis.scan_iter(count=1000):
        key, kind = str(raw_key), str(await redis.type(raw_key))
        value: Any
        if kind == "stream":
            value = [await redis.xrange(key), await redis.xinfo_groups(key)]
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        else:
            value = await redis.get(key)
        if needle in key or needle in repr(value):
            found.append(f"{key} ({kind})")
    return found


async def store_traces(bus: Bus, needle: str) -> list[str]:
    """Every store point (all tenants) holding ``needle``; also proves no tenant was missed."""
    found: list[str] = []
    seen = 0
    members: Any = await bus.redis.smembers(tenants_key())
    for tenant in members:
        offset: str | None = None
        while True:
            page, offset = await bus.store.scroll(tenant, 256, offset)
            seen += len(page)
            found += [m.id for m in page if needle in m.model_dump_json()]
            if offset is None:
                break
    assert seen == await bus.store.count()
    return found


async def entries(redis: Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    raw: Any = await redis.xrange(key)
    return [(str(i), dict(f)) for i, f in raw]


CRITERIA: dict[str, Callable[[World], dict[str, Any]]] = {
    "subject": lambda w: {"subject": f"subj-{CANARY}"},
    "agent": lambda w: {"agent": "leaky"},
    "scope": lambda w: {"scope": "team/secret"},
    "memory_ids": lambda w: {"memory_ids": [point_id(TENANT, e) for e in w.canary_events]},
}


@pytest.mark.slow
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
async def test_forget_leaves_no_trace_of_the_canary_anywhere(world: World, criterion: str) -> None:
    """By each criterion: store, events (acked, pending, undelivered), DLQ, error notes and the
    change feed lose every canary; other memories, events and tenants stay; counts add up."""
    bus, keys = world.bus, TenantKeys(TENANT)
    assert await traces(bus.redis, CANARY)  # the world really is contaminated
    assert await store_traces(bus, CANARY)
    before = await bus.store.count(TENANT)

    report = await forget(bus.redis, bus.store, TENANT, **CRITERIA[criterion](world))

    assert await traces(bus.redis, CANARY) == []
    assert await store_traces(bus, CANARY) == []
    assert report.memories == len(world.committed) == 4
    assert report.events == 7  # 4 committed + the invalid one (parked, still in stream) + 2 late
    assert (report.dlq, report.changes, report.errors, report.pending) == (1, 4, 1, 1)
    assert report.notices == 4
    assert sorted(report.event_ids) == sorted(world.canary_events)
    assert set(report.memory_ids) == {point_id(TENANT, e) for e in world.canary_events}
    assert report.tombstones == 14  # 7 event ids + 7 memory ids
    assert report.aof_rewrite in ("started", "in_progress")
    assert report.keys == 4  # the committed memories' data keys: their store copies are shredded
    # this test server shares stream nodes (Redis's default, 100): the report says so
    assert report.stream_node_entries == 100
    # survivors untouched
    assert await bus.store.count(TENANT) == before - 4
    kept = await bus.store.get(TENANT, [point_id(TENANT, e) for e in world.keeper_events])
    assert [m.content for m in kept] == [f"ordinary note {i}" for i in range(3)]
    assert len(await bus.store.get("beta", [point_id("beta", e) for e in world.beta_events])) == 1
    remaining = [orjson.loads(f["e"])["agent"] for _, f in await entries(bus.redis, keys.events)]
    assert remaining == ["keeper"] * 4
    # no PEL id lingers; subscribers get content-free delete notices
    assert (await bus.redis.xpending(keys.events, "writers"))["pending"] == 0
    feed = [orjson.loads(f["c"]) for _, f in await entries(bus.redis, keys.changes)]
    notices = [c for c in feed if c["op"] == "delete"]
    assert {c["memory_id"] for c in notices} == {point_id(TENANT, e) for e in world.committed}
    assert all(c["content"] is None and c["subject"] is None for c in notices)
    # tombstones
    assert await tombstoned(bus.redis, TENANT, [*world.canary_events, *world.keeper_events]) == set(
        world.canary_events
    )
    assert await erased(bus.redis, TENANT, [*world.canary_events, *world.keeper_events]) == set(
        world.canary_events
    )
    assert await is_tombstoned(bus.redis, TENANT, world.canary_events[0])
    assert not await is_tombstoned(bus.redis, TENANT, world.keeper_events[0])
    assert not await is_tombstoned(bus.redis, "beta", world.canary_events[0])


@pytest.mark.slow
async def test_criteria_combine_and_a_second_forget_finds_nothing(world: World) -> None:
    """Every criterion given must hold (subject AND scope subtree, and the ``within`` fence);
    forget is idempotent."""
    bus = world.bus
    narrow = await forget(
        bus.redis, bus.store, TENANT, subject=f"subj-{CANARY}", scope="team/secret/deep"
    )
    # the committed #0 and the late #0 sit in team/secret/deep
    assert (narrow.memories, narrow.events, narrow.changes, narrow.pending) == (1, 2, 1, 1)
    assert len(await bus.store.get(TENANT, [point_id(TENANT, e) for e in world.committed])) == 3
    # ``within`` fences a forget to the scopes the caller may forget in
    fenced = await forget(
        bus.redis, bus.store, TENANT, agent="leaky", within=lambda s, _: s.startswith("elsewhere")
    )
    assert fenced.memories == fenced.events == fenced.tombstones == 0
    full = await forget(bus.redis, bus.store, TENANT, agent="leaky")
    assert (full.memories, full.events, full.dlq) == (3, 5, 1)
    again = await forget(bus.redis, bus.store, TENANT, agent="leaky")
    assert again.model_dump(include={"memories", "events", "dlq", "changes", "tombstones"}) == {
        "memories": 0,
        "events": 0,
        "dlq": 0,
        "changes": 0,
        "tombstones": 0,
    }
    assert again.event_ids == []


async def test_forget_refuses_no_criterion_and_malformed_ones(
    redis_url: str, tmp_path: Path
) -> None:
    async with membus.open(tmp_path, config(redis_url, writers=0)) as bus:
        with pytest.raises(InvalidInput, match="at least one criterion"):
            await forget(bus.redis, bus.store, TENANT)
        with pytest.raises(InvalidInput):
            await forget(bus.redis, bus.store, TENANT, memory_ids=["not-a-uuid"])
        with pytest.raises(InvalidInput):
            await forget(bus.redis, bus.store, TENANT, scope="team/../x")
        with pytest.raises(InvalidInput):
            await forget(bus.redis, bus.store, "Bad Tenant", agent="leaky")


def _memory(content: str) -> tuple[Memory, dict[str, bytes]]:
    event = Event.build(tenant=TENANT, agent="a", scope="s", content=content)
    m = Memory.from_event(event)
    return m, upsert_fields(m, m.source_events)


class PausingStore:
    """The real store, but after an upsert it waits for the test: a forget lands in the gap
    between the writer's store write and its commit."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.pause: Callable[[], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        await self._store.upsert(memories, vectors)
        if self.pause is not None:
            await self.pause()


async def test_a_writer_mid_commit_cannot_bring_an_erased_memory_back(
    redis_url: str, tmp_path: Path
) -> None:
    """Forget runs after a writer upserted a batch but before it committed: the tombstones stop
    the commit, the writer removes what it wrote, and no trace remains; a replay of the erased
    event is dropped and acknowledged. The real Writer, with only its store slowed down."""
    redis, keys = redis_client(redis_url), TenantKeys(TENANT)
    embedder = HashingEmbedder(64)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
    paused = PausingStore(store)
    writer = Writer(
        redis,
        cast(Store, paused),
        embedder,
        WorkerConfig(block_ms=10),
        gate=OpenGate(),
        consumer="w1",
    )
    upserted, go = anyio.Event(), anyio.Event()

    async def pause() -> None:
        upserted.set()
        await go.wait()

    try:
        secret = [
            Event.build(tenant=TENANT, agent="leaky", content=f"{CANARY} {i}", **leaky_fields(i))
            for i in range(3)
        ]
        keep = Event.build(tenant=TENANT, agent="keeper", scope="team/open", content="fine")
        await publish_signed(redis, KeyRegistry(redis), [*secret, keep])
        ((stream, entries),) = await writer._read()
        prepared = await writer._prepare(stream, entries)
        paused.pause = pause
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer._write, prepared)
            await upserted.wait()
            assert len(await store.get(TENANT, [point_id(TENANT, e.id) for e in secret])) == 3
            report = await forget(redis, store, TENANT, agent="leaky")
            go.set()
        assert report.memories == 3 and report.pending == 3
        assert await traces(redis, CANARY) == []
        assert [m.content for (m,) in [await store.get(TENANT, [point_id(TENANT, keep.id)])]] == [
            "fine"
        ]
        assert await store.count(TENANT) == 1
        # a replay of an erased event (same id) is dropped and acknowledged, never written
        paused.pause = None
        await publish_signed(redis, KeyRegistry(redis), [secret[0]])
        assert await writer.step() == 1
        assert await traces(redis, CANARY) == []  # the replayed entry was deleted, too
        assert await store.count(TENANT) == 1
        assert (await redis.xpending(keys.events, "writers"))["pending"] == 0
    finally:
        await store.close()
        await redis.aclose()


@pytest.mark.slow
async def test_long_streams_are_paged_through(redis_url: str, tmp_path: Path) -> None:
    """More entries than one page (and more doomed ids than one XDEL chunk), spread through the
    stream: every doomed one goes, every other one stays."""
    redis, keys = redis_client(redis_url), TenantKeys(TENANT)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder="hashing", dim=64))
    try:
        events = [
            Event.build(
                tenant=TENANT,
                agent="leaky" if i % 3 else "keeper",
                scope="team/x",
                content=f"{CANARY} {i}" if i % 3 else f"fine {i}",
            )
            for i in range(1500)
        ]
        await publish_signed(redis, KeyRegistry(redis), events)
        report = await forget(redis, store, TENANT, agent="leaky")
        assert report.events == 1000 and report.tombstones == 2000
        assert await traces(redis, CANARY) == []
        kept = [orjson.loads(f["e"])["content"] for _, f in await entries(redis, keys.events)]
        assert kept == [f"fine {i}" for i in range(0, 1500, 3)]
    finally:
        await store.close()
        await redis.aclose()


# -- conflicts: erased content inside another memory's change entry ------------------------------

LOSER = f"loser-{CANARY}"


async def _conflict_world(bus: Bus) -> tuple[str, str]:
    """Two agents assert different values for one key within the conflict window: the first
    (carrying the canary) is superseded. Returns (loser memory id, winner memory id)."""
    slow, fast = bus.agent("slowpoke", TENANT), bus.agent("quick", TENANT)
    lost = await slow.publish(f"{CANARY} says tier gold", "team/acct", subject="c-1", key="tier")
    won = await fast.publish("tier is silver", "team/acct", subject="c-1", key="tier")
    await bus.drain(timeout_s=15)
    feed = [orjson.loads(f["c"]) for _, f in await entries(bus.redis, TenantKeys(TENANT).changes)]
    [conflict] = [c for c in feed if c["op"] == "conflict"]
    assert CANARY in conflict["detail"]["superseded_content"]  # the leak this guards against
    assert conflict["memory_id"] == point_id(TENANT, won.event_id)
    return point_id(TENANT, lost.event_id), point_id(TENANT, won.event_id)


async def _read_all(agent: membus.Agent) -> list[Any]:
    """What a subscriber reading the feed from the beginning receives (until it goes quiet)."""
    got: list[Any] = []
    with anyio.move_on_after(0.5):
        async for change in agent.subscribe(start="0"):
            got.append(change)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["memory_ids", "agent", "subject", "scope"])
async def test_forget_removes_erased_text_carried_by_a_conflict_change(
    redis_url: str, tmp_path: Path, criterion: str
) -> None:
    """Issue 15.1: a ``conflict`` change is about the winner but carries the superseded value
    and agents in ``detail``. Forgetting the superseded memory (by id, or by its agent) removes
    that entry too, so a subscriber reading from 0 never receives the erased text or agent,
    and the winner, which nobody asked to erase, stays; by subject or scope both go."""
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        lost, won = await _conflict_world(bus)
        args: dict[str, Any] = {
            "memory_ids": {"memory_ids": [lost]},
            "agent": {"agent": "slowpoke"},
            "subject": {"subject": "c-1"},
            "scope": {"scope": "team/acct"},
        }[criterion]
        report = await forget(bus.redis, bus.store, TENANT, **args)
        both = criterion in ("subject", "scope")
        assert report.memory_ids == sorted([lost, won] if both else [lost])
        assert await traces(bus.redis, CANARY) == []
        changes = await entries(bus.redis, TenantKeys(TENANT).changes)
        assert "slowpoke" not in repr(changes)  # its signing key and audit trail stay
        assert await store_traces(bus, CANARY) == []
        kept = await bus.store.get(TENANT, [won])
        assert [m.content for m in kept] == ([] if both else ["tier is silver"])
        seen = await _read_all(bus.agent("reader", TENANT))
        assert seen and not any(CANARY in c.model_dump_json() for c in seen)
        assert not any("slowpoke" in c.model_dump_json() for c in seen)


async def test_conflict_entries_written_before_superseded_events_are_found(
    redis_url: str, tmp_path: Path
) -> None:
    """A conflict entry from before ``detail.superseded_events`` existed is still found, by the
    superseded memory id and by the superseded agents; a bare delete notice stays."""
    redis, keys = redis_client(redis_url), TenantKeys(TENANT)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder="hashing", dim=64))
    lost = point_id(TENANT, new_event_id())
    old = {
        "op": "conflict",
        "memory_id": point_id(TENANT, new_event_id()),
        "tenant": TENANT,
        "scope": "team/acct",
        "kind": "fact",
        "content": "tier is silver",
        "agents": ["quick"],
        "event_ids": [new_event_id()],
        "sensitivity": 0,
        "detail": {"superseded": lost, "superseded_content": CANARY, "superseded_agents": ["old"]},
    }
    notice = {"op": "delete", "memory_id": lost, "tenant": TENANT, "scope": "team/acct"}
    try:
        for by in ({"memory_ids": [lost]}, {"agent": "old"}):
            await redis.delete(keys.changes)
            await redis.xadd(keys.changes, {"c": orjson.dumps(old)})
            await redis.xadd(keys.changes, {"c": orjson.dumps(notice | {"kind": "fact"})})
            report = await forget(redis, store, TENANT, **by)
            assert report.changes == 1
            assert await traces(redis, CANARY) == []
            assert await redis.xlen(keys.changes) == 1  # the content-free notice
    finally:
        await store.close()
        await redis.aclose()


@pytest.mark.slow
async def test_writer_delete_changes_naming_the_subject_are_erased(
    redis_url: str, tmp_path: Path
) -> None:
    """A writer's own ``delete`` change (here: a retracted fact) names the subject and key;
    forgetting the subject removes it too, so the subject leaves the feed."""
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        a = bus.agent("a", TENANT)
        await a.publish("plan is basic", "team/acct", subject=f"s-{CANARY}", key="plan")
        await bus.drain(timeout_s=15)
        await a.retract(scope="team/acct", subject=f"s-{CANARY}", key="plan")
        await bus.drain(timeout_s=15)
        feed = [
            orjson.loads(f["c"]) for _, f in await entries(bus.redis, TenantKeys(TENANT).changes)
        ]
        assert any(c["op"] == "delete" and CANARY in (c["subject"] or "") for c in feed)
        await forget(bus.redis, bus.store, TENANT, subject=f"s-{CANARY}")
        assert await traces(bus.redis, CANARY) == []


async def test_a_forget_that_matches_nothing_scans_once_and_rewrites_nothing(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15.5: any agent may ask to forget something that does not exist; that must not cost
    a second scan of the tenant, delete notices or a BGREWRITEAOF. One that matches does all."""
    import membus.bus.erasure as erasure_mod

    redis = redis_client(redis_url)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder="hashing", dim=64))
    passes = 0
    real = erasure_mod._pass

    async def counting(*args: Any) -> None:
        nonlocal passes
        passes += 1
        await real(*args)

    monkeypatch.setattr(erasure_mod, "_pass", counting)
    try:
        events = [Event.build(tenant=TENANT, agent="a", scope="team/x", content="x")]
        await publish_signed(redis, KeyRegistry(redis), events)
        nothing = await forget(redis, store, TENANT, agent="nobody-here")
        assert (passes, nothing.aof_rewrite, nothing.notices) == (1, "skipped", 0)
        fenced = await forget(redis, store, TENANT, agent="a", within=lambda s, _: False)
        assert (passes, fenced.aof_rewrite, fenced.events) == (2, "skipped", 0)
        hit = await forget(redis, store, TENANT, agent="a")
        assert (passes, hit.events) == (4, 1)
        assert hit.aof_rewrite in ("started", "in_progress")
    finally:
        await store.close()
        await redis.aclose()


async def test_a_subscriber_slower_than_an_erasure_does_not_get_what_it_erased(
    redis_url: str, tmp_path: Path
) -> None:
    """Issue 15.2: a follower reads a batch of changes ahead; if a forget erases some of them
    while the subscriber is still working through the batch, those are not delivered (the
    batch is checked against the tombstones again)."""
    redis, keys = redis_client(redis_url), TenantKeys(TENANT)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder="hashing", dim=64))
    try:
        first, _ = _memory("first note")
        rows = [_memory(f"{CANARY} {i}") for i in range(3)]
        for fields in [upsert_fields(first, first.source_events), *(f for _, f in rows)]:
            await redis.xadd(keys.changes, fields)  # type: ignore[arg-type]
        feed = follow(redis, TENANT, None, start="0", until_now=True)
        got = [await anext(feed)]
        assert got[0].content == "first note"
        report = await forget(redis, store, TENANT, memory_ids=[m.id for m, _ in rows])
        assert report.changes == 3
        await anyio.sleep(RECHECK_S * 2)  # the subscriber was busy with the first one
        got += [c async for c in feed]
        assert not any(CANARY in c.model_dump_json() for c in got)
        assert [c.content for c in got] == ["first note"]
    finally:
        await store.close()
        await redis.aclose()


@pytest.mark.slow
async def test_a_surviving_version_carries_no_time_of_an_erased_one(
    redis_url: str, tmp_path: Path
) -> None:
    """Forgetting a key's first version (by its agent) rewrites the versions that survive: the
    current one no longer says the key was first recorded when the erased one was, so no
    recall (plain or ``as_of``) tells that an erased version existed, or when."""
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        lost, won = await _conflict_world(bus)
        [before] = await bus.store.get(TENANT, [won])
        assert before.created_at < before.valid_from  # dated from the (canary) first version
        report = await bus.agent("dpo", TENANT).forget(agent="slowpoke")
        assert report.memory_ids == [lost]
        [after] = await bus.store.get(TENANT, [won])
        assert after.created_at == after.valid_from == before.valid_from
        assert (after.content, after.agents, after.history) == ("tier is silver", ["quick"], False)
        reader = bus.agent("reader", TENANT)
        [hit] = await reader.recall("tier", scopes=["team/acct"])
        assert hit.memory.created_at == before.valid_from
        assert await reader.recall("tier", scopes=["team/acct"], as_of=before.created_at) == []
        assert await traces(bus.redis, CANARY) == []


async def test_a_delete_notice_never_names_what_a_forget_tombstoned(redis_url: str) -> None:
    """A writer announces a deleted memory (its subject and key included) before deleting the
    point, outside its MULTI; a forget's feed scan may already have run. Once the memory, or any
    of its events, is tombstoned, the announcement adds nothing: a notice carrying the erased
    subject would otherwise outlive the forget."""
    redis = redis_client(redis_url)
    keys = TenantKeys(TENANT)
    try:
        await redis.delete(keys.changes, tombstones_key(TENANT))
        events = [new_event_id(), new_event_id()]

        def memory(n: int) -> Memory:
            return Memory(
                id=point_id(TENANT, events[n]),
                tenant=TENANT,
                scope="team/acct",
                kind="fact",
                content=f"{CANARY} owes 40",
                created_at=T0,
                updated_at=T0,
                subject=f"s-{CANARY}",
                key="balance",
                source_events=[events[n]],
            )

        # erased by the memory's id, then by its event's id: no notice either time
        await redis.hset(tombstones_key(TENANT), memory(0).id, "erased")
        assert await announce_deletes(redis, TENANT, [memory(0)], ["r-1"]) == 0
        await redis.hdel(tombstones_key(TENANT), memory(0).id)
        await redis.hset(tombstones_key(TENANT), events[0], "erased")
        assert await announce_deletes(redis, TENANT, [memory(0), memory(1)], ["r-1"]) == 1
        [(_, fields)] = cast(list[tuple[str, dict[str, str]]], await redis.xrange(keys.changes))
        notice = orjson.loads(fields["c"])
        assert notice["op"] == "delete" and notice["memory_id"] == memory(1).id
        assert notice["event_ids"] == ["r-1"] and notice["content"] is None
    finally:
        await redis.delete(keys.changes, tombstones_key(TENANT))
        await redis.aclose()
