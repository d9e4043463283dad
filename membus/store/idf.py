"""Cached IDF weights for the lexical branch of hybrid recall, on an engine that sees every write.

Hybrid recall weighs query terms by BM25's IDF over the caller's corpus: what its grant lets it
read in its tenant (``filters.corpus_spec``), never the whole store, so a score says nothing about
memories outside the grant. Qdrant computes a corpus IDF per query by walking each term's posting
list under the corpus filter: ~3 ms a query at 100k memories here, three times the rest of the
search. The store-wide IDF, which the engine keeps as it indexes, costs nothing extra.

So the engine learns, once per (corpus, term), the ratio ``w = IDF_corpus / IDF_store``: the best
score of the lone term under the corpus filter with each IDF. Both searches rank the same points
by ``IDF x the point's term weight``, so their best points carry the same term weight and it
cancels. A query then sends ``w`` as the term's weight under the store-wide IDF, and the engine
scores ``w x IDF_store x tf = IDF_corpus x tf``: what asking for the corpus IDF gives, up to
float rounding. A term that no point of the corpus holds gets no weight and is left out.

Both IDFs change only when the store's set of points changes, so the cache is exact while nothing
is written: the engine clears it on every write, under the lock its searches hold, so a search
never combines weights from before a write with the store after it. Only an engine that sees
every write of its store may keep this cache. Edge does: one process per shard, under membus's
file lock. A Qdrant server's writers are other processes, so that engine asks for the corpus IDF
each time.
"""

from __future__ import annotations

from collections.abc import Sequence

from membus.store.filters import FilterSpec
from membus.store.sparse import SparseVec

MAX_ENTRIES = 200_000  # (corpus, term) pairs; a full cache starts over rather than track recency


def corpus_key(corpus: FilterSpec) -> str:
    """A stable key for a corpus: its conditions, which are plain values in a fixed order."""
    return repr(corpus)


class IdfWeights:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._weights: dict[tuple[str, int], float] = {}
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._weights)

    def clear(self) -> None:
        """The store's points changed: every weight may have."""
        self._weights.clear()

    def missing(self, corpus: str, terms: Sequence[int]) -> list[int]:
        """The terms to probe before ``weigh``; a full cache starts over here, never between
        ``learn`` and ``weigh``."""
        out = [t for t in terms if (corpus, t) not in self._weights]
        if len(self._weights) + len(out) > self._max:
            self._weights.clear()
            return list(terms)
        return out

    def learn(
        self, corpus: str, term: int, corpus_best: float | None, store_best: float | None
    ) -> None:
        """Record a term's weight from the best scores of its lone-term probes (None: no hit)."""
        weight = 0.0
        if corpus_best is not None and store_best:
            weight = max(0.0, corpus_best / store_best)
        self._weights[(corpus, term)] = weight

    def weigh(self, corpus: str, terms: SparseVec) -> SparseVec:
        """The query's terms with their learnt weights; terms the corpus lacks are left out."""
        out = SparseVec([], [])
        for t, v in zip(terms.indices, terms.values, strict=True):
            w = self._weights.get((corpus, t), 0.0)
            if w > 0:
                out.indices.append(t)
                out.values.append(v * w)
        return out
