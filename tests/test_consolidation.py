"""Consolidation end to end on a real Redis and Qdrant Edge: repeats fold, keyed facts keep
history (recall ``as_of``), retractions stay withdrawn on redelivery, conflicts reach the change
feed, and the final memory state does not depend on delivery order, duplicates or writer count."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis.asyncio as aioredis
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import membus
from membus.access.gate import OpenGate
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.core.config import (
    ConsolidationConfig,
    MembusConfig,
    PolicyConfig,
    RankingConfig,
    RedisConfig,
    WorkerConfig,
)
from membus.core.envelope import Event, new_event_id
from membus.core.keys import TenantKeys
from membus.embed.hashing import HashingEmbedder
from membus.errors import PermissionDenied, Unavailable
from membus.store.edge import EdgeStore
from membus.store.port import StoreMeta, point_id
from membus.stream.feed import Change
from membus.writer import expiry
from membus.writer.consolidate import RETRACTION
from membus.writer.ledger import dirty_key, slot_key
from membus.writer.worker import Writer

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
Entries = list[tuple[str, dict[str, str]]]


def config(url: str, writers: int = 1) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=writers,
        ranking=EVERY_HIT,
    )


async def changes(bus: membus.Bus, tenant: str) -> list[Change]:
    raw = cast(Entries, await bus.redis.xrange(TenantKeys(tenant).changes))
    return [Change.from_entry(i, f) for i, f in raw]


@pytest.mark.slow
async def test_repeats_from_two_agents_fold_into_one_memory(redis_url: str, tmp_path: Path) -> None:
    """The same observation from two agents is one memory listing both agents and events."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        x, y = bus.agent("x", "acme"), bus.agent("y", "acme")
        r1 = await x.publish("The VPN drops every hour.", "team/ops")
        r2 = await y.publish("the vpn drops every hour", "team/ops")
        r3 = await y.publish("the vpn drops every hour", "team/other")  # another scope
        await bus.drain(10)
        hits = await x.recall("vpn drops", k=5)
        by_scope = {h.memory.scope: h.memory for h in hits}
        assert len(hits) == 2 and await bus.store.count("acme") == 2
        assert by_scope["team/ops"].agents == ["x", "y"]
        assert by_scope["team/ops"].source_events == sorted([r1.event_id, r2.event_id])
        assert by_scope["team/ops"].content == "the vpn drops every hour"  # the newer wording
        assert by_scope["team/other"].source_events == [r3.event_id]


async def test_keyed_facts_keep_history_recallable_as_of(redis_url: str, tmp_path: Path) -> None:
    """A newer value supersedes the older one, which stays recallable as of its time."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        a = bus.agent("a", "acme")
        key = {"subject": "customer:42", "key": "contact"}
        now = datetime.now(UTC)
        await a.publish(
            "Customer 42 prefers email.", "team/s", created_at=now - timedelta(hours=2), **key
        )
        later = now - timedelta(hours=1)
        await a.publish("Customer 42 prefers phone calls.", "team/s", created_at=later, **key)
        await bus.drain(10)
        [cur] = await a.recall("how to contact customer 42", k=5)
        assert cur.memory.content == "Customer 42 prefers phone calls." and not cur.memory.history
        [then] = await a.recall(
            "how to contact customer 42", k=5, as_of=now - timedelta(minutes=90)
        )
        assert then.memory.content == "Customer 42 prefers email." and then.memory.history
        assert then.memory.valid_to == cur.memory.valid_from
        assert await a.recall("contact", k=5, as_of=now - timedelta(hours=3)) == []


@pytest.mark.slow
async def test_retraction_withdraws_a_key_and_survives_redelivery(
    redis_url: str, tmp_path: Path
) -> None:
    """A retracted key is gone; redelivering its old events does not bring it back; a later
    assertion stands. Withdrawing needs the forget right as well as publish."""
    gate = CasbinGate(
        MemorySource(
            "p, a, acme, team/*, publish|recall|forget, allow\n"
            "p, b, acme, team/*, publish|recall, allow\n"
        )
    )
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        a, b = bus.agent("a", "acme"), bus.agent("b", "acme")
        key = {"subject": "build", "key": "status"}
        await a.publish("build is green", "team/ci", created_at=T0, **key)
        await b.publish("build is red", "team/ci", created_at=T0 + timedelta(minutes=1), **key)
        await bus.drain(10)
        with pytest.raises(PermissionDenied):
            await b.retract(scope="team/ci", subject="build", key="status")
        await a.retract(scope="team/ci", subject="build", key="status")
        await bus.drain(10)
        assert await a.recall("build status", k=5) == []
        assert await bus.store.count("acme") == 0
        # redelivery of every entry (the retraction's too), by another writer
        stream = TenantKeys("acme").events
        entries = cast(Entries, await bus.redis.xrange(stream))
        again = Writer(bus.redis, bus.store, bus.embedder, FAST, consumer="again", gate=gate)
        await again.process(stream, entries)
        assert await bus.store.count("acme") == 0
        await b.publish("build is green again", "team/ci", **key)
        await bus.drain(10)
        assert [h.memory.content for h in await a.recall("build", k=5)] == ["build is green again"]


@pytest.mark.slow
async def test_retracting_one_memory_by_id(redis_url: str, tmp_path: Path) -> None:
    """``retract(memory_id=…)`` withdraws that memory and its repeats, nothing else."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        a = bus.agent("a", "acme")
        await a.publish("the printer is on floor 3", "team/s")
        await a.publish("The printer is on floor 3.", "team/s")
        await a.publish("the kitchen is on floor 2", "team/s")
        await bus.drain(10)
        [printer] = await a.recall("printer", k=1)
        await a.retract(memory_id=printer.memory.id, reason="it moved")
        await bus.drain(10)
        left = [h.memory.content for h in await a.recall("floor", k=5)]
        assert left == ["the kitchen is on floor 2"]
        deleted = [c for c in await changes(bus, "acme") if c.op == "delete"]
        assert [c.memory_id for c in deleted] == [printer.memory.id]


async def test_conflicting_values_from_two_agents_reach_the_feed(
    redis_url: str, tmp_path: Path
) -> None:
    """Two agents, one key, different values, same moment: the newer (then the higher event id)
    is current and subscribers get a conflict change naming the superseded value."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        x, y = bus.agent("x", "acme"), bus.agent("y", "acme")
        key = {"subject": "ticket:7", "key": "owner"}
        await x.publish("owner is dana", "team/s", created_at=T0, **key)
        await y.publish("owner is lee", "team/s", created_at=T0 + timedelta(seconds=1), **key)
        await bus.drain(10)
        [c] = [c for c in await changes(bus, "acme") if c.op == "conflict"]
        assert c.content == "owner is lee" and c.detail is not None
        assert c.detail["superseded_content"] == "owner is dana"
        assert c.detail["superseded_agents"] == ["x"]
        got = [ch async for ch in _take(x.subscribe(["team"], start="0"), 3)]
        assert "conflict" in {ch.op for ch in got}


async def _take(feed: AsyncIterator[Change], n: int) -> AsyncIterator[Change]:
    with anyio.fail_after(10):
        async for ch in feed:
            yield ch
            n -= 1
            if n == 0:
                return


# -- order independence -----------------------------------------------------------------------

CONTENTS = ["likes tea", "Likes tea.", "likes coffee", "prefers email", "prefers phone"]


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(3, 14))
    out = []
    for _ in range(n):
        keyed = draw(st.booleans())
        retract = keyed and draw(st.integers(0, 5)) == 0
        extra: dict[str, Any] = {"subject": "c1", "key": "pref"} if keyed else {}
        out.append(
            Event.build(
                id=new_event_id(),
                tenant="t",
                agent=draw(st.sampled_from(["x", "y"])),
                scope=draw(st.sampled_from(["team/a", "team/b"])),
                kind=RETRACTION if retract else "observation",
                content=draw(st.sampled_from(CONTENTS)),
                created_at=T0 + timedelta(seconds=draw(st.integers(0, 8))),
                **extra,
            )
        )
    return out


@asynccontextmanager
async def edge(path: Path) -> AsyncIterator[EdgeStore]:
    emb = HashingEmbedder()
    store = EdgeStore(path)
    await store.open(StoreMeta(embedder=emb.name, dim=emb.dim))
    try:
        yield store
    finally:
        await store.close()


async def deliver(
    redis: aioredis.Redis,
    store: EdgeStore,
    tenant: str,
    events: Sequence[Event],
    writers: int,
    seed: int,
) -> set[tuple[Any, ...]]:
    """XADD the events, then hand them to ``writers`` writers at once in a shuffled order, a
    third of them twice; returns the tenant's memories as comparable tuples."""
    stream = TenantKeys(tenant).events
    for e in events:
        await redis.xadd(stream, {"e": e.model_copy(update={"tenant": tenant}).to_json()})
    entries = cast(Entries, await redis.xrange(stream))
    rng = random.Random(seed)
    order = entries + rng.sample(entries, len(entries) // 3)
    rng.shuffle(order)
    cfg = FAST.model_copy(update={"verify_signatures": False})
    crew = [
        Writer(redis, store, HashingEmbedder(), cfg, gate=OpenGate(), consumer=f"w{i}")
        for i in range(writers)
    ]

    async def work(i: int) -> None:
        mine = order[i::writers]
        while mine:
            size = rng.randint(1, 4)
            await crew[i].process(stream, mine[:size])
            mine = mine[size:]

    async with anyio.create_task_group() as tg:
        for i in range(writers):
            tg.start_soon(work, i)
    memories, offset = [], None
    while True:
        page, offset = await store.scroll(tenant, 256, offset)
        memories += page
        if offset is None:
            break
    return {
        (
            m.scope,
            m.kind,
            m.content,
            m.subject,
            m.key,
            tuple(m.agents),
            tuple(m.source_events),
            m.valid_from,
            m.valid_to,
            m.history,
        )
        for m in memories
    }


@pytest.mark.slow
def test_final_state_is_independent_of_order_duplicates_and_writer_count(
    redis_url: str, tmp_path: Path
) -> None:
    """1 writer in publish order vs 4 concurrent writers with shuffled, duplicated deliveries:
    the same memories, with the same provenance and validity."""
    counter = iter(range(10_000))
    with start_blocking_portal(backend="asyncio") as portal:
        redis = portal.call(lambda: _client(redis_url))
        store_cm = portal.wrap_async_context_manager(edge(tmp_path / "store"))
        with store_cm as store:

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(events=histories(), seed=st.integers(0, 1000))
            def check(events: list[Event], seed: int) -> None:
                n = next(counter)
                one = portal.call(deliver, redis, store, f"one{n}", events, 1, seed)
                four = portal.call(deliver, redis, store, f"four{n}", events, 4, seed + 1)
                assert one == four

            check()
        portal.call(redis.aclose)


async def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True)


@pytest.mark.slow
async def test_near_duplicates_merge_within_a_scope_in_the_idle_pass(
    redis_url: str, tmp_path: Path
) -> None:
    """Rewordings in one scope merge (newer wording, union of provenance); the same rewording
    in another scope, or with another number, stays apart; later repeats follow the merge."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        x, y = bus.agent("x", "acme"), bus.agent("y", "acme")
        r1 = await x.publish("The customer prefers email over phone", "team/s")
        await bus.drain(10)
        r2 = await y.publish("Customer prefers email over the phone", "team/s")
        await y.publish("Customer prefers email over the phone", "team/other")
        await x.publish("the printer on floor 3 is out of toner again", "team/s")
        await x.publish("the printer on floor 4 is out of toner again", "team/s")
        await bus.drain(10)
        # keyed by scope too: the same wording in team/other ties on score with the merged one
        hits = await x.recall("customer email", k=10)
        mems = {(h.memory.scope, h.memory.content): h.memory for h in hits}
        merged = mems[("team/s", "Customer prefers email over the phone")]
        assert ("team/other", "Customer prefers email over the phone") in mems
        assert merged.agents == ["x", "y"]
        assert merged.source_events == sorted([r1.event_id, r2.event_id])
        assert await bus.store.count("acme") == 4  # merged, other scope, two printers
        # an exact repeat of the merged-away wording lands in the merged memory
        r3 = await x.publish("the customer prefers email over phone.", "team/s")
        await bus.drain(10)
        assert await bus.store.count("acme") == 4
        hits = await x.recall("customer email", k=10, scopes=["team/s"])
        [again] = [h.memory for h in hits if "ustomer" in h.memory.content]
        assert r3.event_id in again.source_events


@pytest.mark.slow
async def test_a_near_duplicate_is_found_behind_nearer_texts_with_other_numbers(
    redis_url: str, tmp_path: Path
) -> None:
    """The search asks for the same numbers, so more than k nearer texts whose numbers differ
    (never mergeable) cannot hide the one rewording that is."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        x = bus.agent("x", "acme")
        # cosine 0.93 to the last text below, nearer than its rewording (0.90), other numbers
        for n in range(4, 12):
            await x.publish(f"the printer on floor {n} is out of toner again today", "team/s")
        r1 = await x.publish("the floor 3 printer is out of toner again today", "team/s")
        await bus.drain(10)
        r2 = await x.publish("the printer on floor 3 is out of toner again today", "team/s")
        await bus.drain(10)
        hits = await x.recall("printer floor 3 toner", k=20)
        [merged] = [h.memory for h in hits if r1.event_id in h.memory.source_events]
        assert merged.source_events == sorted([r1.event_id, r2.event_id])
        assert await bus.store.count("acme") == 9


@pytest.mark.slow
@pytest.mark.parametrize("first", [0, 1])
async def test_a_merge_never_loses_the_memory_whichever_slot_came_first(
    redis_url: str, tmp_path: Path, first: int
) -> None:
    """The smaller slot id survives, but the merged memory's point id comes from the earliest
    event, which may be the loser's: the loser's delete must not take the merged memory with it.
    Both orders run, so one of them publishes the loser's event first."""
    texts = ["The customer prefers email over phone", "Customer prefers email over the phone"]
    async with membus.open(tmp_path, config(redis_url)) as bus:
        x = bus.agent("x", "acme")
        a = await x.publish(texts[first], "team/s")
        await bus.drain(10)
        b = await x.publish(texts[1 - first], "team/s")
        await bus.drain(10)
        [merged] = [h.memory for h in await x.recall("customer email", k=10)]
        assert merged.source_events == sorted([a.event_id, b.event_id])
        assert merged.id == point_id("acme", min(a.event_id, b.event_id))
        assert await bus.store.count("acme") == 1


async def test_near_duplicate_merging_can_be_turned_off(redis_url: str, tmp_path: Path) -> None:
    cfg = config(redis_url).model_copy(
        update={"consolidation": ConsolidationConfig(near_duplicate=None)}
    )
    async with membus.open(tmp_path, cfg) as bus:
        x = bus.agent("x", "acme")
        await x.publish("The customer prefers email over phone", "team/s")
        await x.publish("Customer prefers email over the phone", "team/s")
        await bus.drain(10)
        assert await bus.store.count("acme") == 2
        assert await bus.redis.zcard(dirty_key("acme")) == 0  # nothing queued when off


async def test_expired_memories_are_hidden_then_swept_out(redis_url: str, tmp_path: Path) -> None:
    """A TTL by kind: recall stops returning the memory once it expires, the sweep deletes it
    (with a delete change) and drops its text from the ledger; a fresh assertion stands."""
    folding = ConsolidationConfig(ttl_by_kind={"status": 3600}, near_duplicate=None)
    cfg = config(redis_url).model_copy(update={"consolidation": folding})
    async with membus.open(tmp_path, cfg) as bus:
        a = bus.agent("a", "acme")
        old = datetime.now(UTC) - timedelta(hours=2)
        await a.publish("deploy in progress", "team/ops", kind="status", created_at=old)
        await a.publish("the runbook lives in the wiki", "team/ops")  # no TTL for its kind
        await bus.drain(10)
        assert [h.memory.content for h in await a.recall("deploy", k=5)] == [
            "the runbook lives in the wiki"
        ]
        assert await bus.store.count("acme") == 2  # hidden, not yet deleted
        writer = Writer(
            bus.redis, bus.store, bus.embedder, FAST, consolidation=folding, gate=OpenGate()
        )
        # the bus's own maintenance loop may get there first (it sweeps every 2 s): either way
        await expiry.sweep(writer.consolidator, "acme")
        assert await bus.store.count("acme") == 1
        assert [c.op for c in await changes(bus, "acme")][-1] == "delete"
        ledger = [
            await bus.redis.hgetall(k) async for k in bus.redis.scan_iter("membus:{acme}:slot:*")
        ]
        assert "deploy in progress" not in repr(ledger)
        await a.publish("deploy in progress", "team/ops", kind="status")  # a new, live one
        await bus.drain(10)
        assert "deploy in progress" in [h.memory.content for h in await a.recall("deploy", k=5)]


class _CountingEmbedder(HashingEmbedder):
    """The hashing embedder, remembering every text it was asked to embed."""

    def __init__(self) -> None:
        super().__init__(384)
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.seen += list(texts)
        return super().embed(texts)


@pytest.mark.slow
async def test_the_near_duplicate_pass_reuses_stored_vectors(
    redis_url: str, tmp_path: Path
) -> None:
    """With a model, embedding is the cost of ingest: the pass takes each memory's vector from
    the store, where the writer put it, and embeds nothing again. It still merges."""
    counting = _CountingEmbedder()
    async with membus.open(tmp_path, config(redis_url), embedder=counting) as bus:
        x = bus.agent("x", "acme")
        await x.publish("The customer prefers email over phone", "team/s")
        await x.publish("Customer prefers email over the phone", "team/s")
        await x.publish("the printer on floor 3 is out of toner again", "team/s")
        await bus.drain(10)
        assert await bus.store.count("acme") == 2  # the rewording merged
    published = {
        "The customer prefers email over phone",
        "Customer prefers email over the phone",
        "the printer on floor 3 is out of toner again",
    }
    # each text once, by the writer's commit; the merge's rewrite reuses the commit's vectors
    from_writers = [t for t in counting.seen if t in published]
    assert sorted(from_writers) == sorted(published), counting.seen


@pytest.mark.slow
async def test_a_merge_with_an_earlier_pass_s_memory_embeds_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """The survivor of a merge may take the wording of a memory an earlier pass looked at (the
    newer one): its vector comes from the store too, not from a model call (each cost a merge
    ~10 ms with MiniLM)."""
    counting = _CountingEmbedder()
    now = datetime.now(UTC)
    async with membus.open(tmp_path, config(redis_url), embedder=counting) as bus:
        x = bus.agent("x", "acme")
        newer = "Customer prefers email over the phone"
        await x.publish(newer, "team/s", created_at=now)
        await bus.drain(10)  # looked at alone: no neighbour yet
        await x.publish("The customer prefers email over phone", "team/s", created_at=now - HOUR)
        await bus.drain(10)
        [kept] = await bus.agent("r", "acme").recall("customer email", scopes=["team/s"])
        # the merge kept the newer wording, the one the earlier pass had looked at
        assert kept.memory.content == newer
    assert counting.seen.count(newer) == 1, counting.seen


HOUR = timedelta(hours=1)
_VOCABULARY = [f"{a}{b}" for a in ("bar", "cor", "dun", "fel", "gam", "hox") for b in "aeiouy"]


class _SearchCounter:
    """Counts the dense searches a store answers for the near-duplicate pass."""

    def __init__(self, store: Any) -> None:
        self.store, self.queries, self.self_hits = store, 0, 0
        self._inner = store.search_batch

    async def search_batch(self, queries: Any, k: int, min_score: float) -> Any:
        found = await self._inner(queries, k, min_score)
        self.queries += len(queries)
        self.self_hits += sum(
            1
            for (_, flt), hits in zip(queries, found, strict=True)
            for h in hits
            if flt.exclude_slots and h.memory.slot in flt.exclude_slots
        )
        return found


@pytest.mark.slow
async def test_the_pass_searches_each_slot_about_once_and_never_finds_itself(
    redis_url: str, tmp_path: Path
) -> None:
    """After a merge the pass searches again only the answers the merge changed (those naming
    either merged slot), not every slot still ahead: it used to search each queued slot about
    four times with one merge in ten. A slot's own memory is left out by the filter."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        counter = _SearchCounter(bus.store)
        bus.store.search_batch = counter.search_batch  # type: ignore[method-assign]
        x = bus.agent("x", "acme")
        rng = random.Random(5)
        texts = [" ".join(rng.sample(_VOCABULARY, 7)) for _ in range(40)]
        rewordings = [f"Update: {t}" for t in texts[::5]]
        await x.publish_many([membus.Draft(content=t, scope="team/s") for t in texts + rewordings])
        await bus.drain(30)
        assert await bus.store.count("acme") == len(texts)  # every rewording merged
    searched = len(texts) + len(rewordings)
    assert counter.queries <= searched + 3 * len(rewordings), (counter.queries, searched)
    assert counter.self_hits == 0


class _SlowModel:
    """A stand-in for a model: each batch takes 50 ms in a worker thread (the GIL released, as
    ONNX Runtime and torch release it), vectors from the hashing embedder."""

    name, dim = "slow-model", 384

    def __init__(self) -> None:
        self._inner = HashingEmbedder(384)

    def embed(self, texts: Sequence[str]) -> Any:
        time.sleep(0.05)
        return self._inner.embed(texts)


@pytest.mark.slow
async def test_with_a_model_near_duplicates_merge_under_sustained_load(
    redis_url: str, tmp_path: Path
) -> None:
    """The pass runs while the model embeds the next batch, not only when the streams are idle:
    under a steady stream of events the writer never idles, and merges used to wait for the
    stream to stop."""
    rng = random.Random(9)
    async with membus.open(tmp_path, config(redis_url), embedder=_SlowModel()) as bus:
        x = bus.agent("x", "acme")
        original = await x.publish("The customer prefers email over phone", "team/s")
        await bus.drain(10)
        rewording = await x.publish("Customer prefers email over the phone", "team/s")
        reader = bus.agent("r", "acme")
        merged = False
        for _ in range(150):  # ~20 events/s, 3 s at most: never a blocking read that finds none
            await x.publish(" ".join(rng.sample(_VOCABULARY, 7)), "team/other")
            hits = await reader.recall("customer prefers email", scopes=["team/s"])
            events = {e for h in hits for e in h.memory.source_events}
            if len(hits) == 1 and {original.event_id, rewording.event_id} <= events:
                merged = True
                break
            await anyio.sleep(0.02)
        assert merged, "the rewording did not merge while events kept arriving"


class _DownModel(_SlowModel):
    """A model that is unavailable (a remote embedder's outage, a failed load)."""

    def embed(self, texts: Sequence[str]) -> Any:
        raise Unavailable("the model is down")


async def test_a_model_outage_reaches_the_writer_as_itself_while_it_sweeps(
    redis_url: str, tmp_path: Path
) -> None:
    """The pass runs beside the model in a task group, which would wrap the model's error in an
    ExceptionGroup: the writer must still see ``Unavailable`` (it backs off and retries) and
    never a group it does not handle."""
    redis = await _client(redis_url)
    async with edge(tmp_path / "store") as store:
        writer = Writer(redis, store, _DownModel(), FAST, gate=OpenGate(), consumer="w")
        with pytest.raises(Unavailable, match="model is down"):
            await writer._embed_and_sweep(["a text"])
    await redis.aclose()


async def test_a_retried_commit_still_tells_the_feed_what_it_deleted(
    redis_url: str, tmp_path: Path
) -> None:
    """A commit whose slot moves between its store write and its EXEC runs again; the points
    the first round deleted are gone from the store by then, and the feed must still get their
    delete change (subscribers would otherwise keep a withdrawn memory forever)."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        a = bus.agent("a", "acme")
        await a.publish("the printer is on floor 3", "team/s")
        await bus.drain(10)
        [printer] = await a.recall("printer", k=1)
        store: Any = bus.store
        engine_delete = store.delete
        moved: list[str] = []

        async def delete_then_race(tenant: str, ids: Sequence[str]) -> int:
            n = await engine_delete(tenant, ids)
            if not moved:  # another writer touches the slot before this EXEC: WatchError
                slot = printer.memory.slot
                assert slot is not None
                key = slot_key("acme", slot)
                field, value = next(iter((await bus.redis.hgetall(key)).items()))
                await bus.redis.hset(key, field, value)
                moved.append(key)
            return n

        store.delete = delete_then_race
        await a.retract(memory_id=printer.memory.id, reason="it moved")
        await bus.drain(10)
        assert moved and await a.recall("printer", k=5) == []
        deleted = [c for c in await changes(bus, "acme") if c.op == "delete"]
        assert [c.memory_id for c in deleted] == [printer.memory.id]
