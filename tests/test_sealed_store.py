"""Crypto-shredding in the store (``membus.store.sealed``): a sealed engine behaves like any engine
(the conformance suite), persists no plaintext of what can carry personal data, and once a key is
shredded no copy of the payload opens, whatever an attacker holding the files tries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from membus.core.redis import redis_client
from membus.store.edge import EdgeStore
from membus.store.port import Memory, point_id
from membus.store.qdrant import QdrantStore
from membus.store.seal import Blind, Seal, new_key
from membus.store.sealed import MemoryKeyStore, SealedStore
from membus.stream.datakeys import RedisKeyStore, datakeys_key
from membus.stream.tombstones import tombstones_key
from tests.conformance import META, TENANT, StoreConformance, StoreFactory, flt, rows, unit

pytestmark = pytest.mark.anyio

SECRET = "zq-sealed-canary"


@pytest.mark.slow  # an Edge shard per test: the quick loop runs the suite on local Qdrant
class TestSealedEdgeStore(StoreConformance):
    @pytest.fixture
    def make(self, tmp_path: Path) -> StoreFactory:
        keys = MemoryKeyStore()  # shared by every handle: a reopen finds its keys
        return lambda: SealedStore(EdgeStore(tmp_path / "store"), keys)


class TestSealedQdrantLocal(StoreConformance):
    @pytest.fixture
    async def make(self, anyio_backend: str) -> object:
        client, keys = AsyncQdrantClient(location=":memory:"), MemoryKeyStore()
        yield lambda: SealedStore(QdrantStore(":memory:", client=client), keys)
        await client.close()


def secret_memory(n: int = 0, tenant: str = TENANT) -> Memory:
    now = datetime.now(UTC)
    return Memory(
        id=point_id(tenant, f"secret-{n}"),
        tenant=tenant,
        scope="team/secret",
        kind="fact",
        content=f"{SECRET} content, call 5550{n}199",
        subject=f"{SECRET}-subject",
        key=f"{SECRET}-key",
        slot=f"team/secret:{SECRET}-slot",
        agents=["leaky"],
        source_events=[f"secret-{n}"],
        created_at=now,
        updated_at=now,
        metadata={"note": f"{SECRET} note", "importance": 0.9},
    )


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(f) for f in root.rglob("*") if f.is_file() and needle in f.read_bytes()]


@pytest.mark.slow
async def test_the_engine_persists_no_plaintext_yet_filters_still_match(tmp_path: Path) -> None:
    """Content, subject, key, slot, metadata and the numbers of the text never reach the shard's
    files in the clear; a subject filter and the numbers filter still find the memory."""
    keys = MemoryKeyStore()
    store = SealedStore(EdgeStore(tmp_path / "store"), keys)
    await store.open(META)
    m = secret_memory()
    await store.upsert([m], rows([unit(0)]))
    await store.inner.flush()
    assert files_holding(tmp_path, SECRET.encode()) == []
    assert files_holding(tmp_path, b"55500199") == []
    (raw,) = await store.inner.get(TENANT, [m.id])  # what the engine holds: sealed, empty text
    assert raw.sealed and raw.content == "" and raw.subject is None and raw.metadata == {}
    assert await store.get(TENANT, [m.id]) == [m]
    found = await store.search(unit(0), flt(subjects=[m.subject], numbers="55500199"), 5)
    assert [h.memory for h in found] == [m]
    assert await store.search(unit(0), flt(subjects=["someone else"]), 5) == []
    await store.close()


@pytest.mark.slow
async def test_after_shredding_no_copy_opens_and_no_key_is_minted_again(tmp_path: Path) -> None:
    """Shred a memory's key: reads drop it, its sealed payload opens under no key left, and a
    writer re-upserting it (a redelivery) cannot mint a fresh key for it."""
    keys = MemoryKeyStore()
    store = SealedStore(EdgeStore(tmp_path / "store"), keys)
    await store.open(META)
    gone, kept = secret_memory(0), secret_memory(1)
    await store.upsert([gone, kept], rows([unit(0), unit(1)]))
    (raw,) = await store.inner.get(TENANT, [gone.id])
    assert await store.shred(TENANT, [gone.id]) == 1
    assert await store.get(TENANT, [gone.id, kept.id]) == [kept]
    assert [h.memory.id for h in await store.search(unit(0), flt(), 5)] == [kept.id]
    assert (await store.scroll(TENANT))[0] == [kept]
    # an attacker with the files and every remaining key (and the blind-index key) opens nothing
    remaining = [*keys.keys.values(), await keys.index_key(TENANT)]
    assert all(raw.opened(k) is None for k in remaining)
    # a redelivery after the forget, in a batch with a new memory: only the new one is written,
    # with its own vector
    newer = secret_memory(2)
    await store.upsert([gone, newer], rows([unit(0), unit(2)]))
    assert await store.get(TENANT, [gone.id]) == []
    assert [h.memory.id for h in await store.search(unit(2), flt(), 1)] == [newer.id]
    assert (TENANT, gone.id) not in keys.keys
    await store.close()


def test_a_sealed_document_opens_only_at_its_own_point_and_unaltered() -> None:
    """AES-GCM with the tenant and id as associated data: a payload copied to another point (or
    tenant), or altered by one byte, opens under no key."""
    key, blind = new_key(), Blind(new_key())
    a = secret_memory(0)
    payload = a.sealing(Seal(key, blind)).to_payload()
    assert Memory.from_payload(payload).opened(key) == a
    moved = {**payload, "doc": payload["doc"].replace(a.id, point_id(TENANT, "other"))}
    assert Memory.from_payload(moved).opened(key) is None
    assert Memory.from_payload({**payload, "tenant": "beta"}).opened(key) is None
    doc = payload["doc"]
    i = doc.index('"sealed":"') + 20
    flipped = doc[:i] + ("A" if doc[i] != "A" else "B") + doc[i + 1 :]
    assert Memory.from_payload({**payload, "doc": flipped}).opened(key) is None
    # blind tokens: equal within a tenant's key, unrelated across keys, never the value itself
    other = Blind(new_key())
    assert blind("x") == blind("x") != other("x") and "x" not in blind("x")


async def test_redis_keys_refuse_tombstoned_ids_and_destroy_leaves_no_copy(redis_url: str) -> None:
    """The bus's key store: a key is minted once and kept; an erased (tombstoned) id never gets
    one; destroy removes it from Redis (DUMP of the hash no longer holds it)."""
    redis = redis_client(redis_url)
    try:
        keys = RedisKeyStore(redis)
        first = await keys.data_keys("acme", ["m1", "m2"], create=True)
        assert set(first) == {"m1", "m2"}
        assert await keys.data_keys("acme", ["m1", "m3"], create=True) == {
            "m1": first["m1"],
            "m3": (await keys.data_keys("acme", ["m3"], create=False))["m3"],
        }
        await redis.hset(tombstones_key("acme"), "m4", "erased")
        assert await keys.data_keys("acme", ["m4"], create=True) == {}
        assert await keys.destroy("acme", ["m1", "m4"]) == 1
        assert await keys.data_keys("acme", ["m1"], create=False) == {}
        raw = redis_client(redis_url)
        dumped = await raw.execute_command("DUMP", datakeys_key("acme"), NEVER_DECODE=True)
        assert first["m1"].hex().encode() not in dumped
        assert first["m2"].hex().encode() in dumped
        await raw.aclose()
        assert await keys.index_key("acme") == await RedisKeyStore(redis).index_key("acme")
        assert await keys.index_key("acme") != await keys.index_key("beta")
    finally:
        await redis.aclose()


class CountingKeyStore(MemoryKeyStore):
    """The in-memory key store, counting the fetches of existing keys."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches = 0

    async def data_keys(self, tenant: str, ids: Sequence[str], *, create: bool) -> dict[str, bytes]:
        self.fetches += not create
        return await super().data_keys(tenant, ids, create=create)


@pytest.mark.slow
async def test_a_batch_search_opens_every_hit_with_one_key_fetch(tmp_path: Path) -> None:
    """The near-duplicate pass searches once per queued slot: the hits of the whole batch are
    opened with one key fetch (not one each), and each query still gets its own hits, opened,
    with a shredded memory dropped from its query alone."""
    keys = CountingKeyStore()
    store = SealedStore(EdgeStore(tmp_path / "store"), keys)
    await store.open(META)
    ms = [secret_memory(n) for n in range(3)]
    await store.upsert(ms, rows([unit(n) for n in range(3)]))
    await store.shred(TENANT, [ms[1].id])
    keys.fetches = 0
    found = await store.search_batch([(unit(n), flt()) for n in range(3)], 1, 0.5)
    assert keys.fetches == 1
    assert [[h.memory for h in hits] for hits in found] == [[ms[0]], [], [ms[2]]]
    await store.close()
