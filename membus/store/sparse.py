"""The lexical side of hybrid recall: text -> a BM25-weighted sparse vector, shared by every engine.

A memory's content becomes a sparse vector of hashed term ids whose values are BM25's saturated
term frequency, ``tf (k1 + 1) / (tf + k1 (1 - b + b len / avg_len))``. The IDF factor is not in
the vector: both engines declare the vector with Qdrant's IDF modifier and take it over the
caller's corpus, what its grant lets it read in its tenant (``filters.corpus_spec``; Edge through
a cache, ``membus.store.idf``), so one tenant's memories never shift another's scores, and scores
reveal nothing about memories outside the grant. A query vector holds each
distinct query term once with weight 1, so a hit's score is the Okapi BM25 sum over shared terms.

Tokens are split exactly as ``membus.store.bm25.tokenize`` does (lowercase ``\\w+``); the result is
then analysed by Qdrant's own BM25 analyser (``qdrant_edge.Bm25``: English stop words, Snowball
stemmer, stable 32-bit term hashes), which is a core dependency either way and runs in Rust.
Stop words and stemming matter: on LoCoMo they add about 4 and 5 points of recall@10 over plain
tokens. k1 = 0.9, b = 0.4 are Lucene's defaults, which suit short chat turns better than the
textbook 1.2-1.5 / 0.75. ``avg_len`` is fixed because the collection grows one event at a time;
20 analysed terms is a chat message with its speaker and date.

Anything that changes the ids or the weights must change ``NAME``: it is recorded with the store
(``StoreMeta.sparse``), and a store built with another encoder is refused, not silently mixed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import qdrant_edge as q

from membus.store.bm25 import tokenize
from membus.store.port import StoreMeta

NAME = "bm25-en-snowball-v1"
VECTOR = "lexical"  # the sparse vector's name in both engines, beside the dense one

K1 = 0.9
B = 0.4
AVG_LEN = 20.0

# each branch hands this many candidates to the scoring (``membus.store.relevance``): enough that
# a memory ranked modestly by both branches can still surface, few enough to stay cheap
PREFETCH_MIN = 50
PREFETCH_FACTOR = 4


@dataclass(frozen=True, slots=True)
class SparseVec:
    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


_local = threading.local()


def _model() -> q.Bm25:
    # one analyser per thread: it is cheap to build, and this needs no claim about its thread
    # safety (engines encode on the event loop thread, tests and tools on others)
    model: q.Bm25 | None = getattr(_local, "model", None)
    if model is None:
        model = q.Bm25(q.Bm25Config(language="english", k=K1, b=B, avg_len=AVG_LEN))
        _local.model = model
    return model


def _normalised(text: str) -> str:
    return " ".join(tokenize(text))


def document(text: str) -> SparseVec:
    """A memory's content as BM25 term weights (no IDF: the engine applies it)."""
    v = _model().embed_document(_normalised(text))
    return SparseVec(list(v.indices), list(v.values))


def query(text: str) -> SparseVec:
    """A query's distinct analysed terms, weight 1 each; empty when nothing is left to match."""
    v = _model().embed_query(_normalised(text))
    return SparseVec(list(v.indices), list(v.values))


def prefetch_limit(k: int) -> int:
    return max(PREFETCH_MIN, PREFETCH_FACTOR * k)


# -- what a store records about its lexical vector -----------------------------------------------


def recorded_meta(raw: Mapping[str, Any]) -> StoreMeta:
    """The ``StoreMeta`` a store recorded. A record older than the ``sparse`` field describes a
    store without lexical vectors, whatever the field's default says today."""
    found = StoreMeta.model_validate(raw)
    return found if "sparse" in raw else found.model_copy(update={"sparse": None})


def meta_conflict(where: str, found: StoreMeta, wanted: StoreMeta) -> str | None:
    """Why a store recorded as ``found`` cannot be opened as ``wanted``, or None if it can."""
    if (found.embedder, found.dim) != (wanted.embedder, wanted.dim):
        return (
            f"{where} holds vectors of embedder {found.embedder!r} (dim {found.dim}); refusing "
            f"embedder {wanted.embedder!r} (dim {wanted.dim})"
        )
    if found.sparse != wanted.sparse:
        # mixing would leave some memories invisible to the lexical branch, or score them with
        # another analyser's term ids: refuse rather than rank wrongly
        return (
            f"{where} was built with lexical vectors {found.sparse or 'none'!r}, this setting "
            f"asks for {wanted.sparse or 'none'!r}; hybrid recall needs every memory encoded "
            "the same way: rebuild the store (replay its events into a fresh one) or open it "
            f"with StoreMeta(sparse={found.sparse!r})"
        )
    if found != wanted:
        return f"{where} has store layout {found.layout}; this membus uses layout {wanted.layout}"
    return None
