"""Qdrant Edge requests from membus's engine-neutral specs: filters (``membus.store.filters``), the
rerank formula (``membus.store.formula``) placed over a search's candidates, and the rows a point is
built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import qdrant_edge as q

from membus.store import formula, sparse
from membus.store.filters import Cond, FilterSpec
from membus.store.formula import Boost
from membus.store.port import Memory

# a memory as the shard needs it: point id, payload, BM25 vector (None: a dense-only store)
Row = tuple[str, dict[str, Any], sparse.SparseVec | None]


def rows(memories: Sequence[Memory], lexical: bool) -> list[Row]:
    return [
        (m.id, m.to_payload(), sparse.document(m.content) if lexical else None) for m in memories
    ]


def condition(c: Cond) -> Any:
    """``c`` as an Edge condition. A one-value ``any`` becomes a plain match, which selects the
    same points (on a list field too: a match holds when any element equals): the Python
    binding builds a ``MatchAny`` condition about ten times slower (~8 against ~0.7 µs, a
    filter has several, the near-duplicate pass builds one per slot), and Edge evaluates it
    about twice as slowly where it walks a filter (1.5 against 0.7 ms for the corpus count of
    the IDF probes at 20k memories)."""
    if c.value is not None:
        return q.FieldCondition(c.field, match=q.MatchValue(c.value))
    if c.any is not None:
        if len(c.any) == 1:
            return q.FieldCondition(c.field, match=q.MatchValue(c.any[0]))
        return q.FieldCondition(c.field, match=q.MatchAny(list(c.any)))
    return q.FieldCondition(c.field, range=q.RangeFloat(gte=c.gte, lte=c.lte))


def filter_of(fs: FilterSpec) -> q.Filter:
    """``fs`` as an Edge filter."""
    must = [condition(c) for c in fs.must]
    if fs.should:
        must.append(q.Filter(should=[condition(c) for c in fs.should]))
    must += [q.Filter(should=[condition(c) for c in group]) for group in fs.either]
    return q.Filter(must=must, must_not=[condition(c) for c in fs.must_not] or None)


def ranked(req: q.QueryRequest, boost: Boost, where: q.Filter, k: int) -> q.QueryRequest:
    """``req``'s hits (its limit: the rerank's candidates) rescored by the rerank formula.

    ``where`` goes on the outermost request only. Qdrant filters at the leaves: a request's
    filter is merged into every prefetch under it, down to the searches that are cut to their
    limits (``recurse_prefetches`` in Qdrant's ``lib/shard/src/query/planned_query.rs``). A
    filter repeated on each level reaches a leaf two or three times over and is checked that
    often per candidate: at 10k memories that was a third of the engine's time per recall, for
    the same points (``membus bench --workload semantic``)."""
    below = q.Prefetch(limit=req.limit, query=req.query, prefetches=req.prefetches or None)
    return q.QueryRequest(
        limit=k, query=formula.edge(boost), prefetches=[below], filter=where, with_payload=True
    )
