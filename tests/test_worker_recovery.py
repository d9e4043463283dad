"""Writers survive crashes, poison and Redis restarts without losing or duplicating a memory.

Everything here runs against real redis-server processes, real writer processes and a real
Qdrant Edge store. The invariant each test protects: every published event ends up as exactly one
memory (point id = uuid5(tenant/event id)), or, if it can never be processed, as exactly one
dead-letter entry, and the writer keeps going either way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

import membus
from membus.access.gate import OpenGate
from membus.access.signing import KeyRegistry, signed_fields
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.envelope import MAX_FUTURE_SKEW_S, Event
from membus.core.keys import TenantKeys, tenants_key
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder, Vectors
from membus.store.edge import EdgeStore
from membus.store.port import Memory, Store, StoreMeta, point_id
from membus.stream.ops import ensure_group, group_stats, idle, publish_signed
from membus.writer.worker import Writer
from tests.redis_proc import RedisProcess

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

REPO = Path(__file__).resolve().parent.parent
GROUP = "writers"
FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)

pytestmark = pytest.mark.anyio

Fields = dict[str, str]
Entries = list[tuple[str, Fields]]


async def xrange(redis: aioredis.Redis, stream: str, **kw: Any) -> Entries:
    """XRANGE typed for a ``decode_responses`` client (redis-py's stubs cover bytes too)."""
    return cast(Entries, await redis.xrange(stream, **kw))


async def xreadgroup(redis: aioredis.Redis, consumer: str, stream: str, n: int) -> Entries:
    batch = cast(
        list[tuple[str, Entries]], await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=n)
    )
    return batch[0][1] if batch else []


# -- helpers ------------------------------------------------------------------------------------


def client_for(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True)


def make_events(tenant: str, n: int, marker_at: int | None = None) -> list[Event]:
    return [
        Event.build(
            tenant=tenant,
            scope=f"team/s{i % 7}",
            agent="tester",
            content=f"observation {i} about widget {i % 13}"
            + (" STALL-HERE" if i == marker_at else ""),
        )
        for i in range(n)
    ]


async def publish_in_chunks(redis: aioredis.Redis, events: Sequence[Event]) -> None:
    for i in range(0, len(events), 500):
        await publish_signed(redis, KeyRegistry(redis), events[i : i + 500])


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await anyio.sleep(poll_s)


async def pending_and_lag(redis: aioredis.Redis, stream: str) -> tuple[int, int]:
    for s in await group_stats(redis, stream):
        if s.group == GROUP:
            return s.pending, s.lag
    return 0, await redis.xlen(stream)


def start_worker(
    url: str, store: Path, consumer: str, log: Path, *, stall_on: str | None = None
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.worker_proc", url, str(store), consumer, "50", "500", "3"]
    if stall_on is not None:
        args += ["--stall-on", stall_on]
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def assert_exactly_once(store: Store, tenant: str, events: Sequence[Event]) -> None:
    """One point per event, found under its deterministic id, and nothing else."""
    assert await store.count(tenant) == len({e.id for e in events})
    ids = [point_id(tenant, e.id) for e in events]
    found: list[Memory] = []
    for i in range(0, len(ids), 500):
        found += await store.get(tenant, ids[i : i + 500])
    assert sorted(m.id for m in found) == sorted(ids)
    by_id = {m.id: m for m in found}
    for e in events:
        m = by_id[point_id(tenant, e.id)]
        assert m.source_events == [e.id] and m.content == e.content


async def open_store(path: Path) -> EdgeStore:
    e = HashingEmbedder()
    store = EdgeStore(path)
    await store.open(StoreMeta(embedder=e.name, dim=e.dim))
    return store


async def drain_with(writer: Writer, redis: aioredis.Redis, timeout_s: float = 20) -> None:
    """Step an in-process writer until its group has consumed and acknowledged everything."""

    async def done() -> bool:
        await writer.step()
        streams = [TenantKeys(str(t)).events for t in await redis.smembers(tenants_key())]
        return await idle(redis, streams, GROUP)

    await wait_until(done, timeout_s, "the writer to drain", poll_s=0)


def fast_bus_config(url: str) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=url), worker=FAST, ranking=EVERY_HIT
    )


# -- a writer process killed mid-batch -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("when", ["stalled_mid_batch", "while_busy"])
async def test_sigkilled_writer_process_then_another_commits_every_event_exactly_once(
    fresh_redis: RedisProcess, tmp_path: Path, when: str
) -> None:
    """SIGKILL a writer process with a batch in hand; a second process finishes the job.

    ``stalled_mid_batch`` is deterministic: the first writer blocks inside a batch (read, not yet
    upserted or acknowledged) when it is killed, so the second must reclaim that batch.
    ``while_busy`` kills at whatever instant the writer happens to be at (possibly inside the
    Edge write), which also checks the store reopens cleanly after an unclean death.
    """
    tenant, n = "crash", 3000
    url, store_path = fresh_redis.url, tmp_path / "store"
    stream = TenantKeys(tenant).events
    marker = "STALL-HERE"
    events = make_events(tenant, n, marker_at=1500 if when == "stalled_mid_batch" else None)
    redis = client_for(url)
    try:
        await publish_in_chunks(redis, events)
        first = start_worker(
            url,
            store_path,
            "doomed",
            tmp_path / "w1.log",
            stall_on=marker if when == "stalled_mid_batch" else None,
        )
        try:
            if when == "stalled_mid_batch":

                async def stalled() -> bool:
                    pending, _ = await pending_and_lag(redis, stream)
                    return pending > 0 and await redis.xlen(TenantKeys(tenant).changes) >= 1450

                await wait_until(stalled, 30, "the first writer to stall mid-batch")
                await anyio.sleep(0.2)  # it cannot get further: the stall is forever
            else:

                async def busy() -> bool:
                    return await redis.xlen(TenantKeys(tenant).changes) >= 600

                await wait_until(busy, 30, "the first writer to make progress", poll_s=0.005)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert first.returncode == -signal.SIGKILL
        done_before = await redis.xlen(TenantKeys(tenant).changes)
        pending, _ = await pending_and_lag(redis, stream)
        assert 0 < done_before < n, "the kill must land with some but not all events processed"
        if when == "stalled_mid_batch":
            assert pending > 0, "the killed writer must leave its batch pending"

        second = start_worker(url, store_path, "rescuer", tmp_path / "w2.log")
        try:

            async def drained() -> bool:
                return await pending_and_lag(redis, stream) == (0, 0)

            await wait_until(drained, 40, "the second writer to drain the group", poll_s=0.05)
        finally:
            second.send_signal(signal.SIGTERM)
            rc = second.wait(15)
        assert rc == 0, (tmp_path / "w2.log").read_text()[-3000:]
        assert await redis.xlen(TenantKeys(tenant).dlq) == 0

        # change delivery is at-least-once: every memory has a change, repeats are allowed
        changes = await xrange(redis, TenantKeys(tenant).changes, count=10 * n)
        changed = {orjson.loads(f["c"])["memory_id"] for _, f in changes}
        assert changed == {point_id(tenant, e.id) for e in events}
    finally:
        await redis.aclose()

    store = await open_store(store_path)
    try:
        await assert_exactly_once(store, tenant, events)
    finally:
        await store.close()


# -- the window between the store write and the XACK ------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying: nothing after it runs, no handler catches it."""


class CrashAfterUpsert:
    """A store whose upsert commits and then 'kills the process' before the writer can XACK."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        await self.inner.upsert(memories, vectors)
        raise Crash

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.slow
async def test_crash_between_upsert_and_ack_is_redone_without_duplicates(
    redis_url: str, tmp_path: Path
) -> None:
    """The store write happened but the XACK never did: the reclaiming writer overwrites.

    Change delivery is at-least-once; here the dead writer never reached its MULTI, so each
    memory gets exactly one change event, from the writer that reclaimed it.
    """
    tenant, n = "window", 40
    keys = TenantKeys(tenant)
    redis = client_for(redis_url)
    store = await open_store(tmp_path / "store")
    emb = HashingEmbedder()
    try:
        events = make_events(tenant, n)
        await publish_signed(redis, KeyRegistry(redis), events)
        await ensure_group(redis, keys.events, GROUP)
        entries = await xreadgroup(redis, "doomed", keys.events, n)
        doomed = Writer(
            redis, CrashAfterUpsert(store), emb, FAST, gate=OpenGate(), consumer="doomed"
        )
        with pytest.raises(Crash):
            await doomed.process(keys.events, list(entries))
        assert await store.count(tenant) == n  # written...
        assert await pending_and_lag(redis, keys.events) == (n, 0)  # ...but not acknowledged
        assert await redis.xlen(keys.changes) == 0

        await anyio.sleep(FAST.min_idle_ms / 1000 + 0.05)
        rescuer = Writer(redis, store, emb, FAST, gate=OpenGate(), consumer="rescuer")
        await drain_with(rescuer, redis)
        await assert_exactly_once(store, tenant, events)
        assert await redis.xlen(keys.changes) == n
        assert await redis.xlen(keys.dlq) == 0
    finally:
        await store.close()
        await redis.aclose()


@pytest.mark.slow
async def test_slow_writer_committing_after_reclaim_duplicates_changes_not_memories(
    redis_url: str, tmp_path: Path
) -> None:
    """A writer presumed dead (idle past min_idle_ms) that commits late: memories stay unique,
    the change feed carries that memory twice. This is the documented at-least-once delivery."""
    tenant, n = "slowpoke", 10
    keys = TenantKeys(tenant)
    redis = client_for(redis_url)
    store = await open_store(tmp_path / "store")
    emb = HashingEmbedder()
    try:
        events = make_events(tenant, n)
        await publish_signed(redis, KeyRegistry(redis), events)
        await ensure_group(redis, keys.events, GROUP)
        entries = await xreadgroup(redis, "slow", keys.events, n)
        await anyio.sleep(FAST.min_idle_ms / 1000 + 0.05)
        await drain_with(Writer(redis, store, emb, FAST, gate=OpenGate(), consumer="fast"), redis)
        slow = Writer(redis, store, emb, FAST, gate=OpenGate(), consumer="slow")
        await slow.process(keys.events, list(entries))  # its XACK is now a no-op

        await assert_exactly_once(store, tenant, events)
        changes = await xrange(redis, keys.changes)
        ids = [orjson.loads(f["c"])["memory_id"] for _, f in changes]
        assert sorted(ids) == sorted(2 * [point_id(tenant, e.id) for e in events])
        assert await pending_and_lag(redis, keys.events) == (0, 0)
    finally:
        await store.close()
        await redis.aclose()


class HashingDouble:
    """A test embedder over the hashing embedder: its name and size, its vectors."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim


class SlowCountingEmbedder(HashingDouble):
    """A model's pace: each batch takes ``seconds`` in a worker thread (the GIL released, as
    ONNX Runtime and torch release it); counts how often each text was embedded."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.seen: dict[str, int] = {}

    def embed(self, texts: Sequence[str]) -> Vectors:
        time.sleep(self.seconds)
        for t in texts:
            self.seen[t] = self.seen.get(t, 0) + 1
        return self.inner.embed(texts)


@pytest.mark.slow
async def test_a_live_writer_slower_than_min_idle_keeps_its_batch(
    redis_url: str, tmp_path: Path
) -> None:
    """Reclaiming is for dead writers' entries. Two live writers whose model takes three times
    ``min_idle_ms`` a batch: neither takes the batch the other holds, so every event is
    embedded once and committed once, and none is parked for having been delivered too often
    (before, the other writer took such batches, embedded and committed them again, and each
    take counted towards ``max_deliveries``: 2 here)."""
    tenant, n = "patient", 40
    keys = TenantKeys(tenant)
    redis = client_for(redis_url)
    store = await open_store(tmp_path / "store")
    model = SlowCountingEmbedder(3 * FAST.min_idle_ms / 1000)
    config = FAST.model_copy(update={"batch_size": 10})
    try:
        events = make_events(tenant, n)
        await publish_signed(redis, KeyRegistry(redis), events)
        await ensure_group(redis, keys.events, GROUP)
        crew = [
            Writer(redis, store, model, config, gate=OpenGate(), consumer=f"w{i}") for i in range(2)
        ]
        stop = anyio.Event()

        async def drained() -> bool:
            return await pending_and_lag(redis, keys.events) == (0, 0)

        async with anyio.create_task_group() as tg:
            for w in crew:
                tg.start_soon(w.run, stop)
            await wait_until(drained, 60, "both writers to drain", poll_s=0.1)
            stop.set()
        await assert_exactly_once(store, tenant, events)
        assert sorted(model.seen) == sorted(e.content for e in events)
        assert set(model.seen.values()) == {1}  # nothing embedded twice: nothing taken over
        assert await redis.xlen(keys.dlq) == 0
    finally:
        await store.close()
        await redis.aclose()


# -- poison and malformed entries -----------------------------------------------------------------


class PoisonEmbedder(HashingDouble):
    """Fails every time it sees 'POISON', like a model that chokes on one input."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        for t in texts:
            if "POISON" in t:
                raise ValueError(f"cannot embed {t[:40]!r}")
        return self.inner.embed(texts)


async def dlq_entries(redis: aioredis.Redis, tenant: str) -> list[dict[str, str]]:
    return [f for _, f in await xrange(redis, TenantKeys(tenant).dlq)]


@pytest.mark.slow
async def test_poison_event_is_parked_after_max_deliveries_and_others_commit(
    redis_url: str, tmp_path: Path
) -> None:
    """An event that makes the embedder raise every time: retried, then dead-lettered with the
    error text after ``max_deliveries``; its batch-mates and later events all become memories."""
    embedder: Embedder = PoisonEmbedder()
    async with membus.open(tmp_path, fast_bus_config(redis_url), embedder=embedder) as bus:
        agent = bus.agent("tester", "acme")
        drafts = [membus.Draft(content=f"fine event {i}", scope="team/x") for i in range(10)]
        drafts.insert(5, membus.Draft(content="POISON pill", scope="team/x"))
        receipts = await agent.publish_many(drafts)
        await bus.drain(timeout_s=15)
        poison_id = receipts[5].event_id

        parked = await dlq_entries(bus.redis, "acme")
        assert len(parked) == 1
        entry = parked[0]
        assert entry["reason"] == "poison"
        assert "cannot embed" in entry["error"] and "ValueError" in entry["error"]
        assert int(entry["deliveries"]) == FAST.max_deliveries + 1
        assert entry["origin_id"] == receipts[5].position
        assert orjson.loads(entry["f:e"])["id"] == poison_id
        assert await bus.redis.hlen(TenantKeys("acme").dlq + ":errors") == 0

        good = [r.event_id for i, r in enumerate(receipts) if i != 5]
        assert await bus.store.count("acme") == 10
        got = await bus.store.get("acme", [point_id("acme", e) for e in good])
        assert len(got) == 10
        assert await bus.store.get("acme", [point_id("acme", poison_id)]) == []

        await agent.publish("after the poison", scope="team/x")  # the writer carries on
        await bus.drain(timeout_s=10)
        assert await bus.store.count("acme") == 11


async def test_malformed_entries_are_parked_as_invalid_and_good_events_commit(
    redis_url: str, tmp_path: Path
) -> None:
    """Entries no writer could ever parse go straight to the dead-letter stream, first delivery."""
    tenant = "acme"
    keys = TenantKeys(tenant)
    async with membus.open(tmp_path, fast_bus_config(redis_url)) as bus:
        agent = bus.agent("tester", tenant)
        await agent.publish("before the junk", scope="team/x")
        bad_scope = Event.build(tenant=tenant, scope="team/x", agent="a", content="x")
        bad_scope_json = orjson.dumps({**bad_scope.model_dump(mode="json"), "scope": "team/../b"})
        other_tenant = Event.build(tenant="other", scope="team/x", agent="a", content="x")
        junk: list[dict[str | bytes, bytes | str | int | float]] = [
            {"e": "not json"},
            {"e": "[1, 2, 3]"},
            {"e": bad_scope_json},
            {"e": other_tenant.to_json()},
            {"wrong": "field"},
        ]
        for fields in junk:
            await bus.redis.xadd(keys.events, fields)  # type: ignore[arg-type]
        after = await agent.publish("after the junk", scope="team/x")
        await bus.drain(timeout_s=10)

        parked = await dlq_entries(bus.redis, tenant)
        assert [p["reason"] for p in parked] == ["invalid"] * len(junk)
        assert all(p["deliveries"] == "1" for p in parked)
        assert parked[0]["f:e"] == "not json"
        assert "scope" in parked[2]["error"]
        assert parked[4]["f:wrong"] == "field"
        assert await bus.store.count(tenant) == 2
        assert await bus.store.get(tenant, [point_id(tenant, after.event_id)])


async def test_envelope_with_key_named_cls_is_parked_not_fatal(
    redis_url: str, tmp_path: Path
) -> None:
    """Regression: a JSON key ``"cls"`` used to collide with ``Event.build(cls, ...)`` and raise
    TypeError, which the writer does not catch: its task, and the embedded bus, died."""
    tenant = "acme"
    async with membus.open(tmp_path, fast_bus_config(redis_url)) as bus:
        await bus.redis.sadd(tenants_key(), tenant)
        await bus.redis.xadd(TenantKeys(tenant).events, {"e": '{"cls": 1}'})
        receipt = await bus.agent("tester", tenant).publish("still fine", scope="team/x")
        await bus.drain(timeout_s=5)
        assert [p["reason"] for p in await dlq_entries(bus.redis, tenant)] == ["invalid"]
        assert await bus.store.get(tenant, [point_id(tenant, receipt.event_id)])


async def test_non_utf8_entry_is_parked_not_fatal(redis_url: str, tmp_path: Path) -> None:
    """Regression: with strict decoding one entry of non-UTF-8 bytes made every XREADGROUP and
    XAUTOCLAIM raise UnicodeDecodeError, killing the writer for good. It is parked instead, and
    the dead-letter copy holds the original bytes."""
    tenant = "acme"
    async with membus.open(tmp_path, fast_bus_config(redis_url)) as bus:
        await bus.redis.sadd(tenants_key(), tenant)
        await bus.redis.xadd(TenantKeys(tenant).events, {"e": b"\xff\xfe not utf-8"})
        receipt = await bus.agent("tester", tenant).publish("still fine", scope="team/x")
        await bus.drain(timeout_s=5)
        assert [p["reason"] for p in await dlq_entries(bus.redis, tenant)] == ["invalid"]
        assert await bus.store.get(tenant, [point_id(tenant, receipt.event_id)])
    keys_dlq = TenantKeys(tenant).dlq
    raw = aioredis.Redis.from_url(redis_url)  # no decoding: compare bytes
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await raw.xrange(keys_dlq))
        [(_, parked)] = entries
        assert parked[b"f:e"] == b"\xff\xfe not utf-8"
    finally:
        await raw.aclose()


# -- the consumer group disappears ---------------------------------------------------------------


@pytest.mark.slow
async def test_destroyed_group_is_recreated_and_processing_continues(
    redis_url: str, tmp_path: Path
) -> None:
    """XGROUP DESTROY under a running writer: it recreates the group (from the start of the
    stream, so the rewrite is idempotent) and events published afterwards still become memories."""
    tenant = "acme"
    keys = TenantKeys(tenant)
    async with membus.open(tmp_path, fast_bus_config(redis_url)) as bus:
        agent = bus.agent("tester", tenant)
        first = await agent.publish_many(
            [membus.Draft(content=f"before {i}", scope="team/x") for i in range(20)]
        )
        await bus.drain(timeout_s=10)
        assert await bus.redis.xgroup_destroy(keys.events, GROUP) == 1
        await anyio.sleep(0.1)  # let the writer hit NOGROUP while blocked or on its next read
        later = await agent.publish_many(
            [membus.Draft(content=f"after {i}", scope="team/x") for i in range(20)]
        )
        await bus.drain(timeout_s=10)
        ids = [point_id(tenant, r.event_id) for r in [*first, *later]]
        assert await bus.store.count(tenant) == 40
        assert len(await bus.store.get(tenant, ids)) == 40
        assert [g.group for g in await group_stats(bus.redis, keys.events)] == [GROUP]


# -- Redis itself dies ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_events_survive_redis_sigkill_and_restart_with_aof(
    fresh_redis: RedisProcess, tmp_path: Path
) -> None:
    """Published with no writer running, Redis SIGKILLed (appendfsync always) and restarted on
    the same directory and port: a writer started afterwards turns every event into a memory."""
    tenant, n = "durable", 300
    keys = TenantKeys(tenant)
    events = make_events(tenant, n)
    redis = client_for(fresh_redis.url)
    await publish_in_chunks(redis, events)
    await redis.aclose()

    fresh_redis.kill()
    fresh_redis.start()

    redis = client_for(fresh_redis.url)
    store = await open_store(tmp_path / "store")
    try:
        assert await redis.xlen(keys.events) == n
        assert await redis.smembers(tenants_key()) == {tenant}
        writer = Writer(
            redis, store, HashingEmbedder(), FAST, gate=OpenGate(), consumer="after-restart"
        )
        await drain_with(writer, redis)
        await assert_exactly_once(store, tenant, events)
    finally:
        await store.close()
        await redis.aclose()


@pytest.mark.slow
async def test_writer_rides_out_a_redis_restart_mid_stream(
    fresh_redis: RedisProcess, tmp_path: Path
) -> None:
    """Redis SIGKILLed while a writer is consuming: the writer backs off, reconnects once Redis
    is back, reclaims what it had in hand and finishes; nothing lost, nothing doubled."""
    tenant, n = "bumpy", 1500
    keys = TenantKeys(tenant)
    events = make_events(tenant, n)
    redis = client_for(fresh_redis.url)
    store = await open_store(tmp_path / "store")
    config = WorkerConfig(
        batch_size=50, min_idle_ms=200, reclaim_every_s=0.2, block_ms=50, tenants_refresh_s=0.1
    )
    try:
        await publish_in_chunks(redis, events)
        writer = Writer(redis, store, HashingEmbedder(), config, gate=OpenGate(), consumer="bumpy")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, stop)
            await wait_until(lambda: _at_least(writer, 200), 20, "progress", poll_s=0.001)
            fresh_redis.kill()
            assert writer.processed < n
            await anyio.sleep(0.3)
            fresh_redis.start()

            async def drained() -> bool:
                try:
                    return await pending_and_lag(redis, keys.events) == (0, 0)
                except Exception:  # Redis may still be coming back
                    return False

            await wait_until(drained, 30, "the writer to finish after the restart", poll_s=0.05)
            stop.set()
        await assert_exactly_once(store, tenant, events)
        assert await redis.xlen(keys.dlq) == 0
    finally:
        await store.close()
        await redis.aclose()


async def _at_least(writer: Writer, n: int) -> bool:
    return writer.processed >= n


@pytest.mark.slow
async def test_future_dated_entry_xadded_around_the_door_is_parked(
    redis_url: str, tmp_path: Path
) -> None:
    """The stream is not trusted: an entry XADDed around the door (here even validly signed, as a
    door that skipped its check would sign it) dated 2999 would stay the current value of its key
    for ever. The writer re-checks created_at against the entry's own id time (Redis's clock,
    which no publisher sets) and parks it as ``future_dated`` with a reason naming the field and
    the bound; a later real update of the key becomes current. An entry with an explicit id in
    2023 proves the writer's bound is the entry's time, not the writer's clock."""
    tenant = "acme"
    stream = TenantKeys(tenant).events
    async with membus.open(tmp_path, fast_bus_config(redis_url)) as bus:
        key = await bus.keys.current(tenant, "mallory")

        def dated(content: str, at: datetime) -> Event:
            return Event.build(
                tenant=tenant,
                scope="team/x",
                agent="mallory",
                content=content,
                subject="wifi",
                key="password",
                created_at=at,
            )

        early = datetime(2023, 5, 8, tzinfo=UTC)
        # Redis accepts explicit ids as long as they grow: the 2023 one goes first
        await bus.redis.xadd(
            stream,
            signed_fields(dated("an hour ahead of its entry", early + timedelta(hours=1)), key),
            id=f"{int(early.timestamp() * 1000)}-0",
        )
        await bus.redis.xadd(
            stream, signed_fields(dated("hunter2 for ever", datetime(2999, 1, 1, tzinfo=UTC)), key)
        )
        await bus.redis.sadd(tenants_key(), tenant)
        real = await bus.agent("mallory", tenant).publish(
            "the wifi password is correct-horse", "team/x", subject="wifi", key="password"
        )
        await bus.drain(timeout_s=10)

        parked = await dlq_entries(bus.redis, tenant)
        assert [p["reason"] for p in parked] == ["future_dated", "future_dated"]
        for p in parked:
            assert "created_at" in p["error"] and f"at most {MAX_FUTURE_SKEW_S:.0f} s" in p["error"]
            assert "stream entry's (Redis) clock" in p["error"]
        hits = await bus.agent("mallory", tenant).recall("wifi password", k=5)
        assert [h.memory.content for h in hits] == ["the wifi password is correct-horse"]
        assert hits[0].memory.source_events == [real.event_id]
