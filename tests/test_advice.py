"""The LLM consolidator wired into a writer (real Redis + Qdrant Edge; the model is a test
double): its decisions move facts between slots, are recorded in provenance, survive redelivery
unchanged, and any failure leaves the deterministic rules in charge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from membus.access.gate import OpenGate
from membus.core.config import ConsolidationConfig, WorkerConfig
from membus.core.envelope import Event, new_event_id
from membus.core.keys import TenantKeys
from membus.embed.hashing import HashingEmbedder
from membus.store.edge import EdgeStore
from membus.store.port import Memory, StoreMeta
from membus.writer.advice import writes_key
from membus.writer.llm import Decision, Fact, FallbackConsolidator, Neighbour
from membus.writer.worker import Writer

pytestmark = pytest.mark.anyio

CFG = WorkerConfig(block_ms=10, verify_signatures=False)
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
Entries = list[tuple[str, dict[str, str]]]


class Scripted:
    """A model that answers with a fixed action against its best-scoring neighbour."""

    def __init__(self, action: str) -> None:
        self.action, self.calls = action, 0

    async def decide(self, fact: Fact, neighbours: Sequence[Neighbour]) -> Decision:
        self.calls += 1
        if self.action == "boom":
            raise ValueError("the model fell over")
        target = None if self.action == "add" else neighbours[0].memory_id
        return Decision(action=self.action, target=target, reason="scripted", model="double")  # type: ignore[arg-type]


@pytest.fixture
async def parts(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[aioredis.Redis, EdgeStore]]:
    emb = HashingEmbedder()
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder=emb.name, dim=emb.dim))
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield redis, store
    await redis.aclose()
    await store.close()


def writer(redis: aioredis.Redis, store: EdgeStore, model: Scripted | None) -> Writer:
    llm = FallbackConsolidator(model) if model is not None else None
    folding = ConsolidationConfig(near_duplicate=None)
    return Writer(
        redis,
        store,
        HashingEmbedder(),
        CFG,
        consumer="w",
        consolidation=folding,
        llm=llm,
        gate=OpenGate(),
    )


async def publish(redis: aioredis.Redis, *contents: str) -> Entries:
    stream = TenantKeys("acme").events
    for i, text in enumerate(contents):
        e = Event.build(
            id=new_event_id(),
            tenant="acme",
            agent="a",
            scope="team/s",
            content=text,
            created_at=T0 + timedelta(minutes=i),
        )
        await redis.xadd(stream, {"e": e.to_json()})
    return cast(Entries, await redis.xrange(stream))


async def memories(store: EdgeStore) -> list[Memory]:
    page, _ = await store.scroll("acme", 100)
    return sorted(page, key=lambda m: m.content)


async def test_update_folds_the_fact_into_its_neighbour_and_records_why(
    parts: tuple[aioredis.Redis, EdgeStore],
) -> None:
    redis, store = parts
    first, second = await publish(
        redis, "The office wifi password is on the fridge", "wifi code: see fridge note"
    )
    await writer(redis, store, None).process(TenantKeys("acme").events, [first])
    model = Scripted("update")
    w = writer(redis, store, model)
    await w.process(TenantKeys("acme").events, [second])
    [m] = await memories(store)
    assert m.content == "wifi code: see fridge note"  # the newer wording
    assert len(m.source_events) == 2
    assert m.metadata["consolidator"]["action"] == "update"
    assert m.metadata["consolidator"]["model"] == "double"
    # redelivered: the stored decision is reused, the model is not asked again
    await w.process(TenantKeys("acme").events, [second])
    assert model.calls == 1 and len(await memories(store)) == 1
    assert await redis.hexists(writes_key("acme"), orjson_id(second))


def orjson_id(entry: tuple[str, dict[str, str]]) -> str:
    return Event.from_json(entry[1]["e"]).id


async def test_delete_retracts_the_neighbour_and_keeps_the_fact(
    parts: tuple[aioredis.Redis, EdgeStore],
) -> None:
    redis, store = parts
    old, new = await publish(redis, "standup is at 9:30 in room A", "standup moved to room B")
    await writer(redis, store, None).process(TenantKeys("acme").events, [old])
    await writer(redis, store, Scripted("delete")).process(TenantKeys("acme").events, [new])
    assert [m.content for m in await memories(store)] == ["standup moved to room B"]


async def test_a_failing_model_leaves_the_rules_in_charge(
    parts: tuple[aioredis.Redis, EdgeStore],
) -> None:
    redis, store = parts
    a, b = await publish(redis, "deploys freeze on fridays", "no deploys on friday afternoons")
    await writer(redis, store, None).process(TenantKeys("acme").events, [a])
    model = Scripted("boom")
    llm_writer = writer(redis, store, model)
    await llm_writer.process(TenantKeys("acme").events, [b])
    got = await memories(store)
    assert len(got) == 2 and all("consolidator" not in m.metadata for m in got)
    assert model.calls == 1 and llm_writer.advisor is not None
    assert llm_writer.advisor.model.failures == 1
