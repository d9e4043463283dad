"""Dead-letter operations against a real redis-server: what parks can be seen, replayed, dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from membus.access.gate import OpenGate
from membus.core.config import WorkerConfig
from membus.core.keys import TenantKeys, tenants_key
from membus.embed.hashing import HashingEmbedder
from membus.errors import InvalidInput
from membus.store.edge import EdgeStore
from membus.store.port import StoreMeta
from membus.stream.dlq import DeadLetter, DeadLetterNotFound, drop, list_dead, replay
from membus.writer.worker import Writer

pytestmark = pytest.mark.anyio
TENANT = "acme"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def writer(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Writer]:
    embedder = HashingEmbedder(64)
    store = EdgeStore(tmp_path / "store")
    await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
    yield Writer(redis, store, embedder, WorkerConfig(block_ms=10), gate=OpenGate(), consumer="w1")
    await store.close()


async def park(redis: aioredis.Redis, writer: Writer, *bodies: str) -> list[str]:
    """Publish malformed events and let a writer step park them; returns their origin ids."""
    keys = TenantKeys(TENANT)
    await redis.sadd(tenants_key(), TENANT)
    ids = [str(await redis.xadd(keys.events, {"e": body, "extra": "x"})) for body in bodies]
    await writer.step()
    return ids


async def test_parked_entries_list_as_typed_records_with_original_fields(
    redis: aioredis.Redis, writer: Writer
) -> None:
    origin = await park(redis, writer, "not json", '{"content": "no envelope"}')
    letters = await list_dead(redis, TENANT)
    assert [type(d) for d in letters] == [DeadLetter, DeadLetter]
    first, second = letters
    assert first.origin_id == origin[0] and first.origin_stream == TenantKeys(TENANT).events
    assert first.reason == "invalid" and "JSON" in first.error
    assert first.fields == {"e": "not json", "extra": "x"} and first.event is None
    assert first.group == "writers" and first.deliveries == 1
    assert second.event == {"content": "no envelope"}
    # paging: count and an exclusive start
    assert [d.id for d in await list_dead(redis, TENANT, count=1)] == [first.id]
    assert [d.id for d in await list_dead(redis, TENANT, start="(" + first.id)] == [second.id]


async def test_replay_moves_the_original_fields_back_and_deletes_the_letter(
    redis: aioredis.Redis, writer: Writer
) -> None:
    await park(redis, writer, "not json")
    (letter,) = await list_dead(redis, TENANT)
    keys = TenantKeys(TENANT)
    (done,) = await replay(redis, TENANT, [letter.id])
    assert done.id == letter.id
    assert await redis.xlen(keys.dlq) == 0
    entries: Any = await redis.xrange(keys.events, min=done.position, max=done.position)
    assert entries[0][1] == {"e": "not json", "extra": "x"}
    # still malformed: the next writer step parks it again, as a new dead letter
    await writer.step()
    (again,) = await list_dead(redis, TENANT)
    assert again.origin_id == done.position and again.id != letter.id


async def test_replay_all_acts_on_a_snapshot_oldest_first(
    redis: aioredis.Redis, writer: Writer
) -> None:
    await park(redis, writer, "a", "b", "c")
    done = await replay(redis, TENANT, None)
    assert len(done) == 3
    events: Any = await redis.xrange(TenantKeys(TENANT).events)
    positions = [p for p, _ in events][-3:]
    assert [d.position for d in done] == positions
    assert await list_dead(redis, TENANT) == []
    assert await replay(redis, TENANT, None) == []


async def test_unknown_ids_fail_typed_and_nothing_is_changed(
    redis: aioredis.Redis, writer: Writer
) -> None:
    await park(redis, writer, "a")
    (letter,) = await list_dead(redis, TENANT)
    with pytest.raises(DeadLetterNotFound) as info:
        await replay(redis, TENANT, [letter.id, "1-1"])
    assert info.value.ids == ["1-1"] and info.value.to_dict()["code"] == "not_found"
    with pytest.raises(DeadLetterNotFound):
        await drop(redis, TENANT, ["1-1"])
    assert len(await list_dead(redis, TENANT)) == 1
    with pytest.raises(InvalidInput, match="not a stream id"):
        await drop(redis, TENANT, ["nope"])
    with pytest.raises(InvalidInput, match="tenant"):
        await list_dead(redis, "Bad Tenant")


async def test_drop_by_id_and_all(redis: aioredis.Redis, writer: Writer) -> None:
    await park(redis, writer, "a", "b", "c")
    first, *_ = await list_dead(redis, TENANT)
    assert await drop(redis, TENANT, [first.id]) == 1
    assert await drop(redis, TENANT, None) == 2
    assert await redis.xlen(TenantKeys(TENANT).dlq) == 0
