"""Qdrant Edge requests from membus's engine-neutral specs: filters (``membus.filters``) and the
rerank formula (``membus.formula``) placed over a search's candidates."""

from __future__ import annotations

from typing import Any

import qdrant_edge as q

from membus import formula
from membus.filters import Cond, FilterSpec
from membus.formula import Boost


def condition(c: Cond) -> Any:
    if c.value is not None:
        return q.FieldCondition(c.field, match=q.MatchValue(c.value))
    if c.any is not None:
        return q.FieldCondition(c.field, match=q.MatchAny(list(c.any)))
    return q.FieldCondition(c.field, range=q.RangeFloat(gte=c.gte, lte=c.lte))


def filter_of(fs: FilterSpec) -> q.Filter:
    must = [condition(c) for c in fs.must]
    if fs.should:
        must.append(q.Filter(should=[condition(c) for c in fs.should]))
    return q.Filter(must=must, must_not=[condition(c) for c in fs.must_not] or None)


def ranked(req: q.QueryRequest, boost: Boost, where: q.Filter, k: int) -> q.QueryRequest:
    """``req``'s hits (its limit: the rerank's candidates) rescored by the rerank formula."""
    below = q.Prefetch(
        limit=req.limit, query=req.query, prefetches=req.prefetches or None, filter=where
    )
    return q.QueryRequest(
        limit=k, query=formula.edge(boost), prefetches=[below], filter=where, with_payload=True
    )
