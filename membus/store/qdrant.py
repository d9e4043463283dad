"""Qdrant server engine: the same layout as the Edge store, behind ``AsyncQdrantClient``.

Use it when several writer processes share one store (Edge allows one process per shard).
``url=":memory:"`` runs qdrant-client's local mode, which is what the tests use. The store's
``StoreMeta`` lives in the collection's own ``metadata`` (Qdrant >= 1.16), so it cannot drift
from the vectors it describes.

Hybrid recall (``membus.store.sparse``): each point also carries a BM25 sparse vector declared with
the IDF modifier; a search with ``text`` prefetches a dense and a lexical branch, each under the
full filter (it carries the read grant), with IDF computed over that same filter (per-tenant IDF
needs Qdrant >= 1.19), and the server scores their union by the evidence each candidate carries
(``membus.store.relevance``), a formula over both branches' scores. What those scores need of the
corpus (each query term's IDF, the corpus size) is probed per search, in one batch beside a
count: the server's other writers are not ours to watch, so there is no cache to keep exact.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from membus.core.logs import get_logger
from membus.embed.port import Vectors
from membus.errors import Conflict, InvalidInput, Unavailable
from membus.store import formula, relevance, sparse
from membus.store.filters import Cond, FilterSpec, corpus_spec, spec
from membus.store.formula import Boost
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

_VECTOR = "dense"
_META_KEY = "membus"

log = get_logger(__name__)


def _cond(c: Cond) -> m.FieldCondition:
    if c.value is not None:
        return m.FieldCondition(key=c.field, match=m.MatchValue(value=c.value))
    if c.any is not None:
        return m.FieldCondition(key=c.field, match=m.MatchAny(any=list(c.any)))
    return m.FieldCondition(key=c.field, range=m.Range(gte=c.gte, lte=c.lte))


def _filter(fs: FilterSpec) -> m.Filter:
    must: list[m.Condition] = [_cond(c) for c in fs.must]
    if fs.should:
        must.append(m.Filter(should=[_cond(c) for c in fs.should]))
    must += [m.Filter(should=[_cond(c) for c in group]) for group in fs.either]
    must_not: list[m.Condition] = [_cond(c) for c in fs.must_not]
    return m.Filter(must=must, must_not=must_not or None)


def _tenant(tenant: str) -> m.Filter:
    return m.Filter(must=[m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant))])


def _ids_in_tenant(tenant: str, ids: Sequence[str]) -> m.Filter:
    # one server-side condition: ids of another tenant are simply not there
    return m.Filter(
        must=[
            m.HasIdCondition(has_id=list(ids)),
            m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant)),
        ]
    )


def _branches(
    dense: list[float], terms: sparse.SparseVec, where: m.Filter, corpus: m.Filter, limit: int
) -> list[m.Prefetch]:
    """The dense and lexical branches of a hybrid search, every one under the full filter."""
    lexical = m.SparseVector(indices=terms.indices, values=terms.values)
    return [
        m.Prefetch(query=dense, using=_VECTOR, filter=where, limit=limit),
        m.Prefetch(
            query=lexical,
            using=sparse.VECTOR,
            filter=where,
            limit=limit,
            # IDF over what the caller may read (membus.store.idf): per tenant, blind to memories
            # outside the grant. Asked for every time: the server's other writers are not ours
            # to watch, so there is no cache to keep exact
            params=m.SearchParams(idf=m.IdfCorpusParams(corpus=corpus)),
        ),
    ]


def _term_weight(vectors: object, term: int) -> float | None:
    """``term``'s value in a point's lexical vector, as a probe returns it."""
    lex = vectors.get(sparse.VECTOR) if isinstance(vectors, dict) else None
    if not isinstance(lex, m.SparseVector):
        return None
    for index, value in zip(lex.indices, lex.values, strict=True):
        if index == term:
            return float(value)
    return None


class QdrantStore:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        collection: str = "membus_memories",
        client: AsyncQdrantClient | None = None,
        timeout: int = 10,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._collection = collection
        self._timeout = timeout
        # a client handed to us belongs to the caller: we never close it
        self._given = client
        self._client: AsyncQdrantClient | None = None
        self._dim = 0
        self._lexical = False
        self._blend = relevance.SEMANTIC  # the embedder's, from open()
        self._log = log.bind(collection=collection, url=url if url == ":memory:" else "server")

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Turn transport failures into ``Unavailable`` so callers know to retry."""
        try:
            yield
        except (ResponseHandlingException, httpx.TransportError, OSError, TimeoutError) as e:
            raise Unavailable(f"qdrant at {self._url} unreachable during {what}: {e}") from e
        except UnexpectedResponse as e:
            status = e.status_code or 0
            detail = e.content.decode("utf-8", "replace")[:300]
            if status in (401, 403):
                raise Unavailable(
                    f"qdrant at {self._url} rejected our credentials during {what} (check api_key)"
                ) from e
            if status == 400 or status == 422:
                raise InvalidInput(f"qdrant rejected {what}: {detail}") from e
            if status == 404:
                raise Unavailable(
                    f"collection {self._collection!r} vanished during {what}; reopen the store"
                ) from e
            raise Unavailable(f"qdrant answered {status} during {what}: {detail}") from e

    @property
    def _c(self) -> AsyncQdrantClient:
        if self._client is None:
            raise Unavailable("qdrant store is closed")
        return self._client

    async def open(self, meta: StoreMeta) -> None:
        if self._given is not None:
            client = self._given
        elif self._url == ":memory:":
            client = AsyncQdrantClient(location=":memory:")
        else:
            # no compatibility probe: it is a blocking request made from the constructor
            client = AsyncQdrantClient(
                url=self._url,
                api_key=self._api_key,
                timeout=self._timeout,
                check_compatibility=False,
            )
        try:
            async with self._guard("open"):
                if await client.collection_exists(self._collection):
                    await self._check(client, meta)
                else:
                    await self._create(client, meta)
                # idempotent, and on every open: a crash between create and index heals here
                await self._ensure_indexes(client)
        except BaseException:
            if self._given is None:
                await client.close()
            raise
        self._client, self._dim, self._lexical = client, meta.dim, meta.sparse is not None
        self._blend = relevance.blend_for(meta.embedder)

    async def _check(self, client: AsyncQdrantClient, meta: StoreMeta) -> None:
        info = await client.get_collection(self._collection)
        raw = (info.config.metadata or {}).get(_META_KEY)
        if raw is None:
            raise Conflict(
                f"collection {self._collection!r} has no membus metadata: it was made by something "
                "else, or by a Qdrant server older than 1.16 (which drops collection metadata); "
                "use another collection name or upgrade the server"
            )
        found = sparse.recorded_meta(raw)
        vectors = info.config.params.vectors
        size = vectors[_VECTOR].size if isinstance(vectors, dict) and _VECTOR in vectors else None
        lexical = sparse.VECTOR in (info.config.params.sparse_vectors or {})
        where = f"collection {self._collection!r}"
        # the collection's own schema outranks its metadata: trust what the vectors really are
        actual = found.model_copy(
            update={"dim": size or 0, "sparse": found.sparse if lexical else None}
        )
        why = sparse.meta_conflict(where, actual, meta)
        if why:
            raise Conflict(why)

    async def _create(self, client: AsyncQdrantClient, meta: StoreMeta) -> None:
        try:
            await client.create_collection(
                self._collection,
                vectors_config={_VECTOR: m.VectorParams(size=meta.dim, distance=m.Distance.COSINE)},
                sparse_vectors_config=(
                    {sparse.VECTOR: m.SparseVectorParams(modifier=m.Modifier.IDF)}
                    if meta.sparse
                    else None
                ),
                hnsw_config=m.HnswConfigDiff(m=16, ef_construct=64, full_scan_threshold=10_000),
                metadata={_META_KEY: meta.model_dump(mode="json")},
            )
        except UnexpectedResponse:
            if not await client.collection_exists(self._collection):
                raise
            # another process created it between our check and create: adopt theirs
            await self._check(client, meta)
            return
        info = await client.get_collection(self._collection)
        if not (info.config.metadata or {}).get(_META_KEY):
            # without metadata a reopen could not check the embedder; refuse now, not later
            await client.delete_collection(self._collection)
            raise Conflict(
                "this Qdrant server drops collection metadata (needs Qdrant >= 1.16); membus "
                "records its embedder there"
            )
        self._log.info("store.created", embedder=meta.embedder, dim=meta.dim)

    async def _ensure_indexes(self, client: AsyncQdrantClient) -> None:
        with warnings.catch_warnings():
            # local mode ignores payload indexes and says so on every call; the server uses them
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            await client.create_payload_index(
                self._collection,
                "tenant",
                m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
            )
            for field in INDEXED_KEYWORDS:
                await client.create_payload_index(
                    self._collection, field, m.PayloadSchemaType.KEYWORD
                )
            for field in INDEXED_FLOATS:
                await client.create_payload_index(
                    self._collection, field, m.PayloadSchemaType.FLOAT
                )
            await client.create_payload_index(
                self._collection, "sensitivity", m.PayloadSchemaType.INTEGER
            )

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        if not memories:
            return
        check_batch(memories, vectors, self._dim)
        points = [
            m.PointStruct(id=mem.id, vector=self._vectors(mem, row), payload=mem.to_payload())
            for mem, row in zip(memories, vectors.tolist(), strict=True)
        ]
        async with self._guard("upsert"):
            await self._c.upsert(self._collection, points, wait=True)

    def _vectors(self, mem: Memory, dense: list[float]) -> dict[str, m.Vector]:
        if not self._lexical:
            return {_VECTOR: dense}
        lex = sparse.document(mem.content)
        return {
            _VECTOR: dense,
            sparse.VECTOR: m.SparseVector(indices=lex.indices, values=lex.values),
        }

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
        where = _filter(fs)
        terms = sparse.query(text) if text and self._lexical else None
        pool = boost.candidates if boost is not None else k  # what the rerank looks at
        asked = None
        if terms:
            corpus = _filter(corpus_spec(flt))
            asked = await self._asked(terms, corpus)
        if terms and asked is not None and asked.coverage > 0:
            scoring = formula.evidence_server(asked, self._blend)
            branches = _branches(query, terms, where, corpus, sparse.prefetch_limit(pool))
            below = m.Prefetch(prefetch=branches, query=scoring, filter=where, limit=pool)
        elif terms:  # terms no readable point holds: nothing matches, every score is 0
            below = m.Prefetch(query=query, using=_VECTOR, filter=where, limit=k)
            boost = None
        else:  # no text, a dense-only store, or a query of stop words only: dense, by cosine
            below = m.Prefetch(query=query, using=_VECTOR, filter=where, limit=pool)
        if boost is not None:  # the rerank formula over the candidates (membus.store.formula)
            below = m.Prefetch(prefetch=[below], query=formula.server(boost), limit=k)
        async with self._guard("search"):
            found = await self._c.query_points(
                self._collection,
                prefetch=below.prefetch,
                query=below.query,
                using=below.using,
                query_filter=where,
                limit=k,
                with_payload=True,
            )
        # as the caller's clearance sees each key's history (``Memory.seen_by``)
        seen = flt.grant.clearance
        nothing = terms and (asked is None or asked.coverage <= 0)
        return relevance.ranked(
            [
                Hit(
                    memory=Memory.from_payload(p.payload or {}).seen_by(seen),
                    score=0.0 if nothing else relevance.clip(p.score),
                )
                for p in found.points
            ],
            [p.score for p in found.points] if nothing else None,  # all 0: still nearest first
        )

    async def _asked(self, terms: sparse.SparseVec, corpus: m.Filter) -> relevance.Asked | None:
        """What the query asks of the caller's corpus (``relevance.asked``): each term's corpus
        IDF from a lone-term probe (its best score over that point's weight for the term)."""
        probes = [
            m.QueryRequest(
                query=m.SparseVector(indices=[t], values=[1.0]),
                using=sparse.VECTOR,
                filter=corpus,
                limit=1,
                params=m.SearchParams(idf=m.IdfCorpusParams(corpus=corpus)),
                with_vector=[sparse.VECTOR],
            )
            for t in terms.indices
        ]
        async with self._guard("search"):
            found = await self._c.query_batch_points(self._collection, probes)
            size = (await self._c.count(self._collection, count_filter=corpus, exact=True)).count
        known: list[float] = []
        for term, res in zip(terms.indices, found, strict=True):
            weight = _term_weight(res.points[0].vector, term) if res.points else None
            if weight:
                known.append(max(0.0, res.points[0].score / weight))
        return relevance.asked(known, len(terms.indices) - len(known), size, self._blend)

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        wanted = check_ids(ids)
        if not wanted:
            return []
        async with self._guard("get"):
            recs, _ = await self._c.scroll(
                self._collection,
                scroll_filter=_ids_in_tenant(tenant, wanted),
                limit=len(wanted),
                with_payload=True,
            )
        return [Memory.from_payload(r.payload or {}) for r in recs]

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        fs = spec(flt)
        if fs.nothing:
            return []
        async with self._guard("browse"):
            recs, _ = await self._c.scroll(
                self._collection,
                scroll_filter=_filter(fs),
                limit=limit,
                with_payload=True,
                order_by=m.OrderBy(key=BROWSE_ORDER, direction=m.Direction.DESC),
            )
        seen = flt.grant.clearance
        return [Memory.from_payload(r.payload or {}).seen_by(seen) for r in recs]

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        wanted = check_ids(ids)
        if not wanted:
            return 0
        flt = _ids_in_tenant(tenant, wanted)
        async with self._guard("delete"):
            existed = (await self._c.count(self._collection, count_filter=flt, exact=True)).count
            if existed:
                await self._c.delete(
                    self._collection, points_selector=m.FilterSelector(filter=flt), wait=True
                )
        return existed

    async def count(self, tenant: str | None = None) -> int:
        async with self._guard("count"):
            res = await self._c.count(
                self._collection,
                count_filter=_tenant(tenant) if tenant else None,
                exact=True,
            )
        return res.count

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        start = check_ids([offset])[0] if offset is not None else None
        async with self._guard("scroll"):
            recs, nxt = await self._c.scroll(
                self._collection,
                scroll_filter=_tenant(tenant),
                limit=limit,
                offset=start,
                with_payload=True,
            )
        page = [Memory.from_payload(r.payload or {}) for r in recs]
        return page, (str(nxt) if nxt is not None else None)

    async def maintain(self, *, busy: bool = False) -> None:
        """Nothing to do: the server's optimizers build indexes on their own schedule."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._given is None:
            await client.close()
