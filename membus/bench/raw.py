"""Benchmark workload and raw-engine baselines for ``membus bench``.

The raw figures are the ceiling the end-to-end path is judged against, so they call the engines
the way the bus does, minus the bus: redis.asyncio (hiredis parser) on the bus's own connection
pool, and the Qdrant Edge shard of an ``EdgeStore`` (same vector, HNSW and payload-index config)
called directly in this thread, without the worker-thread hop.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as q

from membus.bus.draft import Draft
from membus.core.envelope import Event
from membus.core.redis import Redis
from membus.errors import InvalidInput
from membus.store import sparse
from membus.store.edge import EdgeStore
from membus.store.edge_query import filter_of
from membus.store.filters import spec
from membus.store.port import Memory, RecallFilter, StoreMeta
from membus.store.sealed import SealedStore
from membus.stream.feed import Change

TENANT = "bench"
SCOPES = (
    "team/support",
    "team/support/tier1",
    "team/eng",
    "team/eng/infra",
    "project/apollo",
    "ops/oncall",
)
RECALL_SCOPE = "team/eng"  # matches team/eng and team/eng/infra: about a third of the points
LIVE_SCOPE = "ops/live"
RAW_PREFIX = "membus:{bench-raw}"  # own hash tag: never a tenant the writers read
_VECTOR = "dense"  # the named vector EdgeStore creates
POOL = 1024  # distinct vectors/payloads cycled by the raw upsert (memory stays small at 100k)

_PEOPLE = ["Ana", "Bilal", "Chen", "Dara", "Eitan", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
_COMPONENTS = [
    "billing service",
    "search index",
    "login page",
    "payment gateway",
    "export job",
    "mobile app",
    "webhook relay",
    "rate limiter",
    "report builder",
    "sync daemon",
    "cache cluster",
    "email worker",
    "audit log",
    "onboarding flow",
    "pricing API",
]
_SYMPTOMS = [
    "timed out",
    "returned stale data",
    "crashed on start",
    "double-charged a user",
    "leaked memory",
    "dropped messages",
    "slowed to a crawl",
    "rejected valid tokens",
]
_ACTIONS = ["roll back", "shard", "rewrite", "rate-limit", "deprecate", "cache", "monitor"]
_TOPICS = ["the Q3 roadmap", "SLO reviews", "the migration plan", "vendor contracts", "hiring"]
_PREFS = ["short status updates", "written RFCs", "pairing sessions", "async reviews"]
_REGIONS = ["eu-west", "us-east", "ap-south", "us-west"]
_TEMPLATES = [
    "Customer {p} reported that the {c} {s} after the {v} upgrade.",
    "{p} decided to {a} the {c} before the {t} deadline.",
    "The {c} in {r} {s} at {h}:00; {p} is investigating.",
    "Meeting note: {p} will own {t} and check the {c} weekly.",
    "{p} prefers {f} when changing the {c}.",
    "Incident {n}: {c} latency rose to {ms} ms in {r}, so we had to {a} it.",
    "Reminder from {p}: the {c} {s} twice last week, see ticket {n}.",
]
_KINDS = {0: "observation", 1: "decision", 2: "observation", 3: "task", 4: "preference"}


def sentence(rng: random.Random) -> tuple[int, str]:
    i = rng.randrange(len(_TEMPLATES))
    text = _TEMPLATES[i].format(
        p=rng.choice(_PEOPLE),
        c=rng.choice(_COMPONENTS),
        s=rng.choice(_SYMPTOMS),
        a=rng.choice(_ACTIONS),
        t=rng.choice(_TOPICS),
        f=rng.choice(_PREFS),
        r=rng.choice(_REGIONS),
        v=f"{rng.randint(1, 9)}.{rng.randint(0, 30)}",
        h=rng.randint(0, 23),
        n=rng.randint(1000, 99999),
        ms=rng.randint(80, 9000),
    )
    return i, text


def drafts(n: int, seed: int = 1) -> list[Draft]:
    """Varied, realistic observations over several scopes and kinds, each about its own case:
    no two are exact repeats, so every event makes one memory (consolidation would fold
    repeats, and the bench sizes the store by memories)."""
    rng = random.Random(seed)
    out = []
    for case in range(n):
        i, text = sentence(rng)
        out.append(
            Draft(
                content=f"{text} (case {seed}-{case})",
                scope=rng.choice(SCOPES),
                kind=_KINDS.get(i, "observation"),
                subject=rng.choice(_PEOPLE) if i in (1, 4) else None,
                metadata={"source": "bench", "ticket": rng.randint(1, 500)},
            )
        )
    return out


def semantic_drafts(n: int) -> list[Draft]:
    """The varied workload with one event in ten a rewording of an earlier one (same scope,
    kind, subject and numbers): the near-duplicate pass has real merges to make."""
    base = drafts(n, seed=31)
    out = []
    for i, d in enumerate(base):
        if i % 10 == 9:
            src = base[i - 5]
            d = src.model_copy(update={"content": f"Update: {src.content}"})
        out.append(d)
    return out


def queries(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        f"what happened with the {rng.choice(_COMPONENTS)} in {rng.choice(_REGIONS)}"
        if j % 2
        else sentence(rng)[1]
        for j in range(n)
    ]


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if not samples_s:
        return 0.0, 0.0
    p50, p99 = np.percentile(np.asarray(samples_s) * 1000.0, [50, 99])
    return float(p50), float(p99)


def edge_shard(store: object) -> Any:
    """The Qdrant Edge shard behind an ``EdgeStore``: raw search must see the same indexed state."""
    if isinstance(store, SealedStore):  # a bus's store: the engine is inside
        store = store.inner
    if not isinstance(store, EdgeStore) or store._shard is None:
        raise InvalidInput("the benchmark needs the embedded Qdrant Edge store (store.engine=edge)")
    return store._shard


def _events(n: int) -> list[Event]:
    return _built(drafts(n, seed=3))


def _built(source: Sequence[Draft]) -> list[Event]:
    return [
        Event.build(tenant=TENANT, agent="raw", **d.model_dump(exclude_none=True)) for d in source
    ]


# -- Redis ----------------------------------------------------------------------------------------


async def raw_xadd(redis: Redis, n: int, batch: int = 100) -> float:
    """Pipelined XADD of real event envelopes, ``batch`` per round trip. Returns events/s."""
    pool = [{"e": e.to_json()} for e in _events(min(n, POOL))]
    key = f"{RAW_PREFIX}:events"
    await redis.delete(key)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + batch)):
                pipe.xadd(key, pool[i % len(pool)])  # type: ignore[arg-type]
            await pipe.execute()
    return n / (time.perf_counter() - t0)


async def raw_read_ack(redis: Redis, n: int, count: int = 100) -> float:
    """XREADGROUP(count) then XACK of that batch, over what ``raw_xadd`` wrote. Returns msg/s."""
    key, group = f"{RAW_PREFIX}:events", "bench"
    await redis.xgroup_create(key, group, id="0", mkstream=True)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        batch: Any = await redis.xreadgroup(group, "c1", {key: ">"}, count=count)
        if not batch:
            break
        ids = [eid for eid, _ in batch[0][1]]
        await redis.xack(key, group, *ids)
        done += len(ids)
    return done / (time.perf_counter() - t0)


async def cleanup(redis: Redis) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{RAW_PREFIX}:*")]
    if keys:
        await redis.delete(*keys)


# -- Qdrant Edge ----------------------------------------------------------------------------------


@dataclass
class RawStore:
    """A private EdgeStore (identical config to the bus's) whose shard the raw phases drive."""

    store: EdgeStore
    shard: Any
    dim: int
    rows: list[list[float]]
    payloads: list[dict[str, Any]]
    # the BM25 sparse vector of each payload's content: EdgeStore writes one with every point
    # (hybrid recall), so the raw upsert indexes the same point shape
    lexical: list[Any]

    @classmethod
    async def open(
        cls, path: Path, embedder_name: str, dim: int, source: Sequence[Draft] | None = None
    ) -> RawStore:
        """``source``: the drafts whose payloads and lexical vectors the points cycle through
        (default: the varied workload's)."""
        store = EdgeStore(path)
        await store.open(StoreMeta(embedder=embedder_name, dim=dim))
        rng = np.random.default_rng(5)
        vecs = rng.standard_normal((POOL, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        events = _events(POOL) if source is None else _built(source[:POOL])
        memories = [Memory.from_event(e) for e in events]
        lexical = [sparse.document(m.content) for m in memories]
        return cls(
            store,
            edge_shard(store),
            dim,
            vecs.tolist(),
            [m.to_payload() for m in memories],
            [q.SparseVector(v.indices, v.values) for v in lexical],
        )

    def point(self, i: int, pid: str | None = None) -> Any:
        j = i % POOL
        vectors = {_VECTOR: self.rows[j], sparse.VECTOR: self.lexical[j]}
        return q.Point(pid or str(uuid.uuid4()), vectors, self.payloads[j])

    def upsert(self, n: int, batch: int, tick: Callable[[int], None] | None = None) -> float:
        """Upsert ``n`` points in batches of ``batch``. Returns points/s.

        Timed: building ``q.Point`` objects from precomputed rows/payloads plus the update call,
        the least any Python caller of Edge must do. Each point carries what a membus point
        carries: the dense vector and the lexical (BM25 sparse) one, both precomputed, like the
        payload; the engine indexes both.
        """
        ids = [str(uuid.uuid4()) for _ in range(n)]
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            points = [self.point(i, ids[i]) for i in range(start, min(n, start + batch))]
            self.shard.update(q.UpdateOperation.upsert_points(points))
            if tick is not None:
                tick(len(points))
        return n / (time.perf_counter() - t0)

    async def close(self) -> None:
        await self.store.close()


async def raw_visible_floor(redis: Redis, raw: RawStore, n: int) -> list[float]:
    """The publish->visible chain for one event with no waiting anywhere: XADD, XREADGROUP,
    Edge upsert of one point, MULTI(XADD change + XACK), XREAD of the change. Seconds each."""
    events_key, changes_key, group = f"{RAW_PREFIX}:vis-events", f"{RAW_PREFIX}:vis-changes", "g"
    await redis.xgroup_create(events_key, group, id="$", mkstream=True)
    pool = _events(min(n, 64))
    last = "0-0"
    out: list[float] = []
    for i in range(n):
        ev = pool[i % len(pool)]
        t0 = time.perf_counter()
        await redis.xadd(events_key, {"e": ev.to_json()})
        got: Any = await redis.xreadgroup(group, "c1", {events_key: ">"}, count=1)
        eid, fields = got[0][1][0]
        mem = Memory.from_event(Event.from_json(fields["e"]))
        raw.shard.update(q.UpdateOperation.upsert_points([raw.point(i, mem.id)]))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(changes_key, Change.upsert(mem, mem.source_events).to_fields())  # type: ignore[arg-type]
            pipe.xack(events_key, group, eid)
            await pipe.execute()
        seen: Any = await redis.xread({changes_key: last}, count=1)
        last = seen[0][1][0][0]
        out.append(time.perf_counter() - t0)
    return out


def search_requests(vectors: np.ndarray[Any, Any], k: int, scope: str) -> list[Any]:
    """The same request ``EdgeStore.search`` builds for a tenant + scope recall."""
    flt = filter_of(spec(RecallFilter(tenant=TENANT, scopes=[scope])))
    return [
        q.QueryRequest(
            limit=k,
            query=q.Query.Nearest([float(x) for x in v], using=_VECTOR),
            filter=flt,
            with_payload=True,
        )
        for v in vectors
    ]


def raw_search(shard: Any, requests: Sequence[Any], warmup: int = 10) -> list[float]:
    """Latency of each filtered query straight on the shard, in seconds."""
    for r in requests[:warmup]:
        shard.query(r)
    out: list[float] = []
    for r in requests:
        t0 = time.perf_counter()
        shard.query(r)
        out.append(time.perf_counter() - t0)
    return out


async def redis_phase(redis: Redis, store: RawStore, n: int, floor_n: int) -> dict[str, float]:
    """Raw XADD and XREADGROUP+XACK over ``n`` entries, then the publish->visible floor."""
    try:
        xadd = await raw_xadd(redis, n)
        read_ack = await raw_read_ack(redis, n)
        await cleanup(redis)
        floor_p50, floor_p99 = percentiles(await raw_visible_floor(redis, store, floor_n))
    finally:
        await cleanup(redis)
    return {"xadd": xadd, "read_ack": read_ack, "floor_p50": floor_p50, "floor_p99": floor_p99}
