"""Qdrant Edge engine: a real Qdrant shard (HNSW, payload indexes, filters) inside this process.

Edge allows one process per shard, and a second opener breaks the first one's next flush, so we
take our own exclusive file lock before opening. Edge calls are synchronous, hold the GIL most
of the time and run behind one lock: searches and upserts on the caller's thread when the lock is
free, anything else in a worker thread. ``optimize()`` (the HNSW build) holds the GIL for its
whole run, so it is never called on a request path: ``maintain()`` runs it only when asked (by
the embedded runtime when writers pause, or under writing without a pause after minutes of it or
once twice ``optimize_every`` points wait: ``runtime.host.maintain_loop``; or ``membus
optimize``), and it runs in a child process on a copy of the shard that then replaces the served
one (``membus.store.edge_build``): reads go on throughout but for flushing the served shard
before the copy, loading the built shard and closing the old one (all three hold the GIL:
~0.15-0.45 s each at 20k points; at 100k the flush 1.5 s with every point written since the last
one, the load 0.7-1.2 s, the close 0.6 s; ``last_build`` times each step and ``membus bench
--workload one-scope`` reports them), writes pause only while the shard is copied and while the
built copy catches up.

Hybrid recall (``membus.store.sparse``): every point also carries a BM25 sparse vector of its
content, declared with Edge's IDF modifier. A search with ``text`` runs a dense and a lexical
prefetch, each under the full filter (the filter carries the read grant: a branch without it would
leak memories outside the grant), and scores their union by the evidence each candidate carries
(``membus.store.relevance``), a formula over both branches' scores (``membus.store.formula``):
scores in [0, 1] that mean the same on every query. Query terms are weighted by IDF over the
caller's corpus through a cache (``membus.store.idf``) that every write clears; the same cache
holds what the scores need of the corpus. Recall's rerank runs in the engine too, as a formula
over the candidates.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import numpy as np
import qdrant_edge as q

from membus.core.heap import release_free_memory
from membus.core.logs import get_logger
from membus.embed.port import Vectors
from membus.errors import Conflict, InvalidInput, MembusError, StoreLocked, Unavailable
from membus.store import edge_build, formula, relevance, sparse
from membus.store.edge_query import Row, filter_of, ranked, rows
from membus.store.filters import FilterSpec, corpus_spec, spec, tenant_spec
from membus.store.formula import Boost
from membus.store.idf import IdfWeights, corpus_key
from membus.store.port import (
    BROWSE_ORDER,
    INDEXED_FLOATS,
    INDEXED_KEYWORDS,
    Hit,
    Memory,
    RecallFilter,
    StoreMeta,
    check_batch,
    check_ids,
    check_query,
)

T = TypeVar("T")
_VECTOR = "dense"
# a term fewer memories of the corpus hold than this, or than the corpus size over
# ``_HOLDERS_SHARE``, gets its corpus IDF from their count (``_probe``). Finding the holders costs
# ~1 µs each, Edge's corpus IDF ~40 ns per memory of the corpus (20k, one-scope bench): a count
# pays below about a 25th of the corpus; a 50th leaves a margin.
_HOLDERS = 128
_HOLDERS_SHARE = 50
_META_FILE = "membus-store.json"
_RETRY_FIRST_S, _RETRY_MAX_S = 30.0, 600.0  # maintain's backoff after a failed index build


def _ensure_indexes(shard: Any) -> None:
    """Create the payload indexes the shard does not have yet.

    In RAM (Edge's default), not memory-mapped: ``Memory.Cached`` halved the time loading a
    built shard holds the GIL (20k one-scope points: 210-230 ms against 410-450; the slowest
    recall during a build 165-227 ms against 290-467) but slowed every filtered query (the raw
    hybrid query's p50 2.3-2.5 ms against 1.7-1.9 in the same bench, the semantic bench's
    3.9 against 2.1-3.3): a stall once per build is not worth that on every recall."""
    wanted: dict[str, Any] = {"tenant": q.KeywordIndexParams(is_tenant=True)}
    wanted |= dict.fromkeys(INDEXED_KEYWORDS, q.PayloadSchemaType.Keyword)
    wanted |= dict.fromkeys(INDEXED_FLOATS, q.PayloadSchemaType.Float)
    wanted["sensitivity"] = q.PayloadSchemaType.Integer
    have = shard.info().payload_schema
    for field, schema in wanted.items():
        if field not in have:
            shard.update(q.UpdateOperation.create_field_index(field, schema))


@dataclass(frozen=True, slots=True)
class BuildPhases:
    """Seconds each step of the last index build took (``EdgeStore.last_build``). ``flush``,
    ``load`` and ``close`` run in the serving process and hold the GIL throughout (Edge's
    binding does not release it): nothing else in the process runs meanwhile, recall included.
    ``copy`` (writes wait, reads go on), ``child`` (the build itself, in a child process),
    ``swap`` (replaying the writes made meanwhile onto the built copy, then switching) and
    ``trim`` (handing the old shard's freed memory back to the system, without the GIL) leave
    reads free.

    Example: ``store.last_build.stalled_s`` is how long recall stood still in the last build"""

    flush: float
    copy: float
    child: float
    load: float
    swap: float
    close: float
    trim: float

    @property
    def stalled_s(self) -> float:
        """The steps that hold the GIL in the serving process, summed."""
        return self.flush + self.load + self.close


class EdgeStore:
    def __init__(self, path: Path, optimize_every: int = 20_000) -> None:
        self._path = Path(path)
        self._optimize_every = optimize_every
        self._shard: Any = None
        self._lock = threading.Lock()
        # the write gate: ``_update`` waits on it while a build copies the shard; reads do not
        self._gate = threading.Condition(self._lock)
        self._paused = False
        self._replay: list[Any] | None = None  # updates since a build's copy, to replay onto it
        self._building = anyio.Lock()
        self._build_scope: anyio.CancelScope | None = None  # the build in flight: close stops it
        self._retry_s, self._retry_at = 0.0, 0.0  # maintain's backoff after a failed build
        self._log = get_logger("membus.store.edge")
        self._lock_fd: int | None = None
        self._dim = 0
        self._lexical = False
        self._blend = relevance.SEMANTIC  # the embedder's, from open()
        self._idf = IdfWeights()  # cleared by every write (``_update``)
        self.writes = 0  # updates so far: the idle loop builds indexes once they stop
        self.points_written = 0  # points upserted so far (``maintain`` bounds its counts by it)
        # ``maintain``'s last count: (points_written then, unindexed); None once a build swaps
        self._counted: tuple[int, int] | None = None
        self.last_build: BuildPhases | None = None  # the steps of the last build that worked

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._shard is None:
                    raise Unavailable("edge store is closed")
                return fn()

        return await anyio.to_thread.run_sync(locked)

    def _update(self, op: Any) -> None:
        """Every change of the shard's points goes through here, under ``_lock``: it changes
        IDF statistics, so the cached weights go with it. While a build copies the shard it
        waits (never on the event loop: ``_now`` sends it to a thread then), and while a build
        runs it is recorded for the built copy."""
        while self._paused:
            self._gate.wait()
        if self._shard is None:
            raise Unavailable("edge store is closed")
        self._idf.clear()
        self._shard.update(op)
        if self._replay is not None:
            self._replay.append(op)
        self.writes += 1

    def _take_file_lock(self) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path / ".membus.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"store {self._path} is open in another process; Qdrant Edge allows one process "
                "per store (run several writer processes against a Qdrant server instead)"
            ) from None
        self._lock_fd = fd

    async def open(self, meta: StoreMeta) -> None:
        self._take_file_lock()
        meta_path = self._path / _META_FILE
        try:
            shard_dir = edge_build.current(self._path)
            gone = edge_build.clean(self._path)  # what a crash during a build left
            if gone:
                self._log.info("edge.build_leftovers_removed", path=str(self._path), gone=gone)
            if meta_path.exists():
                found = sparse.recorded_meta(json.loads(meta_path.read_text()))
                why = sparse.meta_conflict(f"store {self._path}", found, meta)
                if why:
                    raise Conflict(why)
                shard = await anyio.to_thread.run_sync(q.EdgeShard.load, str(shard_dir))
                _ensure_indexes(shard)  # a store from an older version may lack a newer one
            else:
                config = q.EdgeConfig(
                    vectors={
                        _VECTOR: q.EdgeVectorParams(size=meta.dim, distance=q.Distance.Cosine)
                    },
                    sparse_vectors=(
                        {sparse.VECTOR: q.EdgeSparseVectorParams(modifier=q.Modifier.Idf)}
                        if meta.sparse
                        else None
                    ),
                    hnsw_config=q.HnswIndexConfig(
                        m=16, ef_construct=64, full_scan_threshold=10_000
                    ),
                )
                shard = await anyio.to_thread.run_sync(q.EdgeShard.create, str(shard_dir), config)
                _ensure_indexes(shard)
                shard.flush()
                # written last: a crash before this leaves no meta and the next open recreates
                tmp = meta_path.with_suffix(".tmp")
                tmp.write_text(meta.model_dump_json())
                tmp.replace(meta_path)
        except BaseException:
            self._release_file_lock()
            raise
        self._shard, self._dim, self._lexical = shard, meta.dim, meta.sparse is not None
        self._blend = relevance.blend_for(meta.embedder)

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        if not memories:
            return
        check_batch(memories, vectors, self._dim)
        await self.upsert_rows(rows(memories, self._lexical), vectors)

    async def upsert_rows(self, batch: Sequence[Row], vectors: Vectors) -> None:
        """Upsert memories already turned into rows (``edge_query.rows``): what a writer in
        another process sends (``membus.store.remote``)."""
        check_ids([pid for pid, _, _ in batch])
        if vectors.ndim != 2 or vectors.shape != (len(batch), self._dim):
            raise InvalidInput(f"vectors of shape {vectors.shape} do not fit {len(batch)} rows")
        # Point construction holds the GIL (~3 µs per payload value, ~45 of a point's ~100 µs)
        # and so does most of update(): both run on this thread when the shard is free (see
        # ``_now``). Rows are converted one by one: one big ``tolist()`` is ~4x slower per row.
        points = [
            q.Point(pid, self._vectors(vectors[i].tolist(), lex), payload)
            for i, (pid, payload, lex) in enumerate(batch)
        ]
        await self._now(lambda: self._update(q.UpdateOperation.upsert_points(points)))
        self.points_written += len(points)

    def _vectors(self, dense: list[float], lex: sparse.SparseVec | None) -> dict[str, Any]:
        if lex is None:
            return {_VECTOR: dense}
        return {_VECTOR: dense, sparse.VECTOR: q.SparseVector(lex.indices, lex.values)}

    async def search(
        self,
        vector: Vectors,
        flt: RecallFilter,
        k: int,
        *,
        text: str | None = None,
        boost: Boost | None = None,
    ) -> list[Hit]:
        query = check_query(vector, k, self._dim)
        fs = spec(flt)
        if fs.nothing:
            return []
        where = filter_of(fs)
        terms = sparse.query(text) if text and self._lexical else None
        pool = boost.candidates if boost is not None else k  # what the rerank looks at
        dense = q.QueryRequest(
            limit=pool, query=q.Query.Nearest(query, using=_VECTOR), filter=where, with_payload=True
        )
        corpus = corpus_spec(flt) if terms else None  # only a lexical branch needs it

        def find() -> tuple[Any, bool]:  # one locked call: no write between weights and search
            # no terms (no text, a dense-only store, stop words only): the dense ranking alone,
            # scored by cosine; terms no readable point holds: nothing matches, every score is 0
            if corpus is None or not terms:
                return self._shard.query(ranked(dense, boost, where, k) if boost else dense), True
            weighted, asked = self._weigh(corpus, terms)
            if not weighted or asked is None:
                nearest = q.QueryRequest(
                    limit=k, query=dense.query, filter=where, with_payload=True
                )
                return self._shard.query(nearest), False
            req = self._hybrid(query, weighted, asked, where, pool)
            return self._shard.query(ranked(req, boost, where, k) if boost else req), True

        found, scored = await self._now(find)
        # as the caller's clearance sees each key's history (``Memory.seen_by``)
        seen = flt.grant.clearance
        return relevance.ranked(
            [
                Hit(
                    memory=Memory.from_payload(p.payload or {}).seen_by(seen),
                    score=relevance.clip(p.score) if scored else 0.0,
                )
                for p in found
            ],
            None if scored else [p.score for p in found],  # all 0: still nearest first
        )

    async def _now(self, fn: Callable[[], T]) -> T:
        """Searches and upserts take about a millisecond, and a worker thread costs a good part
        of that again: the hop, and a GIL passed back and forth with this thread (each handback
        can wait out the 5 ms switch interval). When nothing else holds the shard, run here. A
        held lock means another write or an index build: wait for it in a worker thread, never
        on the event loop."""
        if not self._lock.acquire(blocking=False):
            return await self._run(fn)
        if self._paused:  # a write would wait out a build's copy: not on the event loop
            self._lock.release()
            return await self._run(fn)
        try:
            if self._shard is None:
                raise Unavailable("edge store is closed")
            return fn()
        finally:
            self._lock.release()

    def _weigh(
        self, corpus: FilterSpec, terms: sparse.SparseVec
    ) -> tuple[sparse.SparseVec, relevance.Asked | None]:
        """Query terms weighted so that the store-wide IDF scores as the corpus IDF would
        (``membus.store.idf``), and what the query asks of the corpus (``relevance.asked``);
        probes the terms not cached yet (``_probe``). Holds ``_lock``."""
        key = corpus_key(corpus)
        missing = self._idf.missing(key, terms.indices)  # may start the cache over: size after
        within = filter_of(corpus)
        size = self._idf.size(key)
        if size is None:
            size = int(self._shard.count(q.CountRequest(filter=within, exact=True)))
            self._idf.learn_size(key, size)
        if missing:
            self._probe(key, missing, within, size)
        known, absent = self._idf.known(key, terms)
        return self._idf.weigh(key, terms), relevance.asked(known, absent, size, self._blend)

    def _probe(self, key: str, terms: Sequence[int], within: q.Filter, size: int) -> None:
        """Learn each term's store-wide and corpus IDF. Asking Edge for a corpus IDF walks the
        whole corpus filter (~0.7 ms a batch at 20k memories, growing with the corpus), so it is
        asked only for common terms: a term few readable memories hold (``_HOLDERS``) gets
        its corpus IDF from that count and the corpus size, by the formula Edge uses
        (``relevance.idf``), from two cheap searches under the corpus filter: its best point
        (the store-wide IDF times that point's term weight) and its holders. Holds ``_lock``."""
        limit = max(_HOLDERS, size // _HOLDERS_SHARE)
        probes: list[Any] = []
        for term in terms:
            lone = q.Query.Nearest(q.SparseVector([term], [1.0]), using=sparse.VECTOR)
            probes += [
                q.QueryRequest(limit=1, query=lone, filter=within, with_vector=[sparse.VECTOR]),
                q.QueryRequest(limit=limit, query=lone, filter=within),
            ]
        found = self._shard.query_batch(q.QueryBatchRequest(probes))
        common: list[tuple[int, float]] = []
        for i, term in enumerate(terms):
            best, holders = found[2 * i], found[2 * i + 1]
            if not best:  # no point of the corpus holds it
                self._idf.learn(key, term, None, None)
                continue
            tf = _term_weight(best[0].vector, term)
            if len(holders) >= limit or not tf:
                common.append((term, best[0].score))
                continue
            idf = relevance.idf(size, len(holders))
            self._idf.learn(key, term, idf * tf, best[0].score, tf)
        if not common:
            return
        corpus_idf = q.SearchParams(idf=q.IdfParams(corpus=within))
        asked = q.QueryBatchRequest(
            [
                q.QueryRequest(
                    limit=1,
                    query=q.Query.Nearest(q.SparseVector([term], [1.0]), using=sparse.VECTOR),
                    filter=within,
                    params=corpus_idf,
                    with_vector=[sparse.VECTOR],  # the term's weight there: its IDF
                )
                for term, _ in common
            ]
        )
        for (term, store_best), by_corpus in zip(
            common, self._shard.query_batch(asked), strict=True
        ):
            self._idf.learn(
                key,
                term,
                by_corpus[0].score if by_corpus else None,
                store_best,
                _term_weight(by_corpus[0].vector, term) if by_corpus else None,
            )

    async def search_batch(
        self, queries: Sequence[tuple[Vectors, RecallFilter]], k: int, min_score: float
    ) -> list[list[Hit]]:
        """Dense top-``k`` per (vector, filter) with score >= ``min_score``, as one planned batch.

        The near-duplicate pass's search: one thread hop and one ``query_batch`` for a whole
        sweep instead of a ``query`` each (~1 ms apiece on an unindexed store), and the engine
        drops hits under the threshold, so their payloads are never converted.
        """
        requests: list[Any] = []
        for vector, flt in queries:
            fs = spec(flt)
            requests.append(
                None
                if fs.nothing
                else q.QueryRequest(
                    limit=k,
                    query=q.Query.Nearest(check_query(vector, k, self._dim), using=_VECTOR),
                    filter=filter_of(fs),
                    with_payload=True,
                    # a hair lower so the engine's own comparison cannot drop a tie; the
                    # caller compares exactly
                    score_threshold=min_score - 1e-6,
                )
            )
        asked = [r for r in requests if r is not None]
        found: list[Any] = []
        if asked:
            batch = q.QueryBatchRequest(asked)
            found = await self._now(lambda: self._shard.query_batch(batch))
        answers = iter(found)
        return [
            []
            if r is None
            else [
                Hit(memory=Memory.from_payload(p.payload or {}).seen_by(seen), score=p.score)
                for p in next(answers)
            ]
            for r, (_, flt) in zip(requests, queries, strict=True)
            for seen in (flt.grant.clearance,)
        ]

    def _hybrid(
        self,
        dense: list[float],
        terms: sparse.SparseVec,
        asked: relevance.Asked,
        where: q.Filter,
        k: int,
    ) -> q.QueryRequest:
        limit = sparse.prefetch_limit(k)
        # the filter goes once, on the request: the engine merges it into every branch before
        # the branch is searched and cut to its limit (``edge_query.ranked``); the dense branch
        # first: the formula reads it as $score[0]
        branches = [
            q.Prefetch(limit=limit, query=q.Query.Nearest(dense, using=_VECTOR)),
            q.Prefetch(
                limit=limit,
                # the store-wide IDF, which ``terms``' weights correct
                query=q.Query.Nearest(
                    q.SparseVector(terms.indices, terms.values), using=sparse.VECTOR
                ),
            ),
        ]
        return q.QueryRequest(
            limit=k,
            prefetches=branches,
            query=formula.evidence_edge(asked, self._blend),
            filter=where,
            with_payload=True,
        )

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        wanted = [uuid.UUID(i) for i in check_ids(ids)]
        if not wanted:
            return []
        recs = await self._now(lambda: self._shard.retrieve(wanted, True, False))
        out = [Memory.from_payload(r.payload or {}) for r in recs]
        return [m for m in out if m.tenant == tenant]

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        fs = spec(flt)
        if fs.nothing:
            return []
        req = q.ScrollRequest(
            limit=limit,
            filter=filter_of(fs),
            with_payload=True,
            order_by=q.OrderBy(BROWSE_ORDER, direction=q.Direction.Desc),
        )
        recs, _ = await self._run(lambda: self._shard.scroll(req))
        seen = flt.grant.clearance
        return [Memory.from_payload(r.payload or {}).seen_by(seen) for r in recs]

    async def vectors(self, tenant: str, ids: Sequence[str]) -> dict[str, Vectors]:
        """The dense vectors stored for ``ids`` of ``tenant`` (absent ids are left out): the
        near-duplicate pass reuses them instead of embedding the texts again."""
        wanted = [uuid.UUID(i) for i in check_ids(ids)]
        if not wanted:
            return {}
        recs = await self._now(lambda: self._shard.retrieve(wanted, ["tenant"], [_VECTOR]))
        out: dict[str, Vectors] = {}
        for r in recs:
            # each read of ``vector`` converts the point's vectors to Python lists again
            vectors = r.vector
            if (r.payload or {}).get("tenant") == tenant and vectors and _VECTOR in vectors:
                out[str(r.id)] = np.asarray(vectors[_VECTOR], dtype=np.float32)
        return out

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        wanted = [uuid.UUID(i) for i in check_ids(ids)]
        if not wanted:
            return 0

        def drop() -> int:
            # which exist, by their tenant field alone: a whole payload read and parsed per id
            # cost a merge of the near-duplicate pass more than its delete
            found = self._shard.retrieve(wanted, ["tenant"], False)
            doomed: list[int | uuid.UUID | str] = [
                r.id for r in found if (r.payload or {}).get("tenant") == tenant
            ]
            if doomed:
                self._update(q.UpdateOperation.delete_points(doomed))
            return len(doomed)

        return await self._now(drop)

    async def count(self, tenant: str | None = None) -> int:
        req = q.CountRequest(filter=filter_of(tenant_spec(tenant)) if tenant else None, exact=True)
        return int(await self._run(lambda: self._shard.count(req)))

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        start = uuid.UUID(check_ids([offset])[0]) if offset is not None else None
        req = q.ScrollRequest(
            offset=start,
            limit=limit,
            filter=filter_of(tenant_spec(tenant)),
            with_payload=True,
        )
        recs, nxt = await self._run(lambda: self._shard.scroll(req))
        page = [Memory.from_payload(r.payload or {}) for r in recs]
        return page, (str(nxt) if nxt is not None else None)

    def unindexed(self) -> int:
        """Dense vectors not in an HNSW index yet. Edge's ``indexed_vectors_count`` counts every
        named vector held by an index, and a lexical vector always is: a hybrid store read as
        fully indexed before any build (25,000 of 25,000 for a 25k-point store, 50,000 after
        its build), so ``maintain`` never built. The dense vectors indexed are what the count
        holds beyond the points carrying a lexical vector."""
        info = self._shard.info()
        lexical = 0
        if self._lexical:
            has = q.Filter(must=[q.HasVectorCondition(sparse.VECTOR)])
            lexical = int(self._shard.count(q.CountRequest(filter=has, exact=True)))
        return max(0, int(info.points_count - (info.indexed_vectors_count - lexical)))

    async def maintain(self, *, busy: bool = False) -> None:
        """Build HNSW for what arrived since the last build, once ``optimize_every`` points wait
        unindexed, or twice that when ``busy`` (writers are writing: a build competes with them
        for the cores and pauses their writes while it copies the shard, so under writing that
        never pauses it waits for more, but not without bound). A failed build is logged and
        tried again after a backoff (30 s doubling to 10 min: each try copies the whole shard,
        and a full disk does not empty itself in two seconds); the served shard is untouched by
        it. ``optimize`` (``membus optimize``) ignores the backoff.

        Example: ``await store.maintain(busy=True)``"""
        if self._shard is None or time.monotonic() < self._retry_at:
            return
        due = self._optimize_every * (2 if busy else 1)
        # a count blocks the event loop (16 ms at 100k points, 6.6 ms once built), and a round
        # may come every two seconds: no count while the last one plus every point upserted
        # since (each may have left an index) stays short
        if self._counted is not None:
            at, unindexed = self._counted
            if unindexed + self.points_written - at < due:
                return
        unindexed = self.unindexed()
        self._counted = (self.points_written, unindexed)
        if unindexed < due:
            return
        try:
            await self.optimize()
        except Unavailable as exc:
            self._retry_s = min(max(2 * self._retry_s, _RETRY_FIRST_S), _RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._retry_s
            self._log.warning(
                "edge.build_failed", path=str(self._path), error=str(exc), retry_s=self._retry_s
            )
        else:
            self._retry_s, self._retry_at = 0.0, 0.0

    async def optimize(self) -> None:
        """Build the indexes in a child process on a copy of the shard, then serve the copy
        (``membus.store.edge_build``). ``Unavailable`` if the build fails; the store then goes
        on serving the shard it had."""
        async with self._building:
            if self._shard is None:
                raise Unavailable("edge store is closed")
            with anyio.CancelScope() as scope:
                self._build_scope = scope
                try:
                    await self._build()
                finally:
                    self._build_scope = None
        if scope.cancelled_caught:  # ``close`` stopped it: the served shard is as it was
            raise Unavailable(f"edge store {self._path} was closed during an index build")

    async def _build(self) -> None:
        root = self._path
        target = edge_build.next_generation(root)
        took: dict[str, float] = {}
        clock = time.perf_counter

        def pause() -> Path:
            with self._lock:
                if self._shard is None:
                    raise Unavailable("edge store is closed")
                self._paused = True
                t0 = clock()
                try:
                    # the copy must hold every acknowledged write. A flush holds the GIL (1.5 s
                    # for 100k points written since the last one), but not flushing here only
                    # moves it: closing the old shard at the end flushes it just the same
                    self._shard.flush()
                except BaseException:
                    self._resume_locked()
                    raise
                took["flush"] = clock() - t0
                self._replay = []
                return edge_build.current(root)

        served = await anyio.to_thread.run_sync(pause)
        try:
            t0 = clock()
            try:
                # reads go on meanwhile: they change no file of the shard
                await anyio.to_thread.run_sync(edge_build.copy, served, target)
            finally:
                await anyio.to_thread.run_sync(self._resume)
            t1 = clock()
            await edge_build.build(target)
            t2 = clock()
            # loading a built shard holds the GIL too (~0.3 s at 20k points), but not the lock;
            # reading it into the page cache first did not shorten the bench's stall (README)
            built = await anyio.to_thread.run_sync(q.EdgeShard.load, str(target))
            t3 = clock()
            took |= {"copy": t1 - t0, "child": t2 - t1, "load": t3 - t2}
        except BaseException as exc:
            self._replay = None
            with anyio.CancelScope(shield=True):  # else the next open removes it
                await anyio.to_thread.run_sync(edge_build.discard, target)
            _raise_build_failed(exc, served)
        try:
            t0 = clock()
            old = await anyio.to_thread.run_sync(self._catch_up_and_swap, built, target)
            took["swap"] = clock() - t0
        except BaseException as exc:
            self._replay = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_quietly, built)
                await anyio.to_thread.run_sync(edge_build.discard, target)
            _raise_build_failed(exc, served)
        with anyio.CancelScope(shield=True):  # the new shard is current: tidy up the old one
            t0 = clock()
            if old is not None:
                await anyio.to_thread.run_sync(_close_quietly, old)
            took["close"] = clock() - t0
            await anyio.to_thread.run_sync(edge_build.discard, served)
            # the old shard's structures, freed, would otherwise stay resident until reused
            t0 = clock()
            await anyio.to_thread.run_sync(release_free_memory)
            took["trim"] = clock() - t0
        phases = BuildPhases(**took)
        self.last_build = phases
        self._log.info(
            "edge.index_built",
            path=str(root),
            generation=target.name,
            stalled_s=round(phases.stalled_s, 3),
            **{f"{k}_s": round(v, 3) for k, v in took.items()},
        )

    def _resume(self) -> None:
        with self._lock:
            self._resume_locked()

    def _resume_locked(self) -> None:
        self._paused = False
        self._gate.notify_all()

    def _catch_up_and_swap(self, built: Any, target: Path) -> Any:
        """Replay onto ``built`` the updates made since the copy (most while writes go on, the
        last few with writes paused), switch to it and serve it; reads go on, on the old shard,
        until the swap itself. Returns the shard it replaced, to close (None if the store was
        closed meanwhile)."""
        done = 0
        while True:
            replay = self._replay
            if replay is None:
                raise Unavailable("edge store is closed")
            pending = replay[done:]  # a slice under the GIL: appends are whole
            if len(pending) <= 64:
                break
            for op in pending:
                built.update(op)
            done += len(pending)
        with self._lock:
            if self._shard is None or self._replay is None:
                raise Unavailable("edge store is closed")
            self._paused = True  # no write is in flight: each holds the lock through _update
            rest = self._replay[done:]
        try:
            for op in rest:
                built.update(op)
            # not flushed (a flush costs 0.1-0.3 s of GIL at 100k points however little
            # it writes): ``built`` holds every acknowledged write, the replayed ones in its
            # WAL, which an open after a crash replays
            edge_build.switch(self._path, target)
        except BaseException:
            if edge_build.current(self._path) != target:  # else the switch is made: serve it
                self._resume()
                raise
        with self._lock:
            old = self._shard
            if old is None:  # closed meanwhile: ``built`` is current on disk
                built.close()
            else:
                self._shard = built
                self._idf.clear()  # merging segments may drop deleted points from statistics
                self._counted = None  # the built shard has its own count
            self._replay = None
            self._resume_locked()
        return old

    async def flush(self) -> None:
        await self._run(lambda: self._shard.flush())

    async def close(self) -> None:
        """Stop a build in flight (its child is killed and its copy removed, or, past the
        switch, it finishes), then flush and close the shard and let go of the store. Waiting
        for the build before the file lock goes matters: another process may open the store
        as soon as it is free, and a build still running could switch generations under it."""
        if self._build_scope is not None:
            self._build_scope.cancel()
        async with self._building:
            if self._shard is not None:
                shard = self._shard

                def shut() -> None:
                    with self._lock:
                        shard.flush()
                        shard.close()
                        # under the lock: a write the build's gate held finds the store closed
                        self._shard, self._replay = None, None
                        self._resume_locked()

                await anyio.to_thread.run_sync(shut)
            self._release_file_lock()

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _raise_build_failed(exc: BaseException, served: Path) -> NoReturn:
    """Raise what a failed build tells its caller: ``Unavailable`` (the served shard is intact,
    a later build may work) unless it is ours already or a cancellation."""
    if isinstance(exc, MembusError) or not isinstance(exc, Exception):
        raise exc
    raise Unavailable(
        f"index build of {served} failed ({exc}); the store keeps serving it; check free disk, "
        "then run `membus optimize` again"
    ) from exc


def _close_quietly(shard: Any) -> None:
    try:
        shard.close()
    except Exception:  # a shard no longer served: closing it is tidying, not serving
        get_logger("membus.store.edge").warning("edge.close_failed", exc_info=True)


def _term_weight(vectors: Any, term: int) -> float | None:
    """``term``'s value in a point's lexical vector, as a probe returns it."""
    lex = (vectors or {}).get(sparse.VECTOR)
    if lex is None:
        return None
    for index, value in zip(lex.indices, lex.values, strict=True):
        if index == term:
            return float(value)
    return None


def describe(path: Path) -> dict[str, Any]:
    """What ``membus stats`` shows about an edge store without opening it."""
    meta = Path(path) / _META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}
