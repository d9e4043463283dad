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

The same probes give what recall's scores need (``membus.store.relevance``): each term's corpus
IDF (the corpus probe's best score over that point's term weight, which it returns), and the
corpus size, for the IDF of a term no readable memory holds.

Asking Edge for a corpus IDF walks the whole corpus filter once per batch, however few terms it
asks about, and a fresh cache meets a new term on most queries. So only a common term is asked
that way: a term fewer than a hundred-odd readable memories hold is found in all of them (a cheap
search under the corpus filter) and its corpus IDF computed from that count and the corpus size
by the engine's own formula (``relevance.idf``); the two agree to float rounding.

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
        # (corpus, term) -> (weight under the store-wide IDF, corpus IDF); (0, 0): absent
        self._weights: dict[tuple[str, int], tuple[float, float]] = {}
        self._sizes: dict[str, int] = {}  # corpus -> how many points it holds
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._weights)

    def clear(self) -> None:
        """The store's points changed: every weight may have."""
        self._weights.clear()
        self._sizes.clear()

    def missing(self, corpus: str, terms: Sequence[int]) -> list[int]:
        """The terms to probe before ``weigh``; a full cache starts over here, never between
        ``learn`` and ``weigh``."""
        out = [t for t in terms if (corpus, t) not in self._weights]
        if len(self._weights) + len(out) > self._max:
            self.clear()
            return list(terms)
        return out

    def size(self, corpus: str) -> int | None:
        """How many points ``corpus`` holds, if learnt since the last write."""
        return self._sizes.get(corpus)

    def learn_size(self, corpus: str, points: int) -> None:
        self._sizes[corpus] = points

    def learn(
        self,
        corpus: str,
        term: int,
        corpus_best: float | None,
        store_best: float | None,
        corpus_tf: float | None = None,
    ) -> None:
        """Record a term from the best scores of its lone-term probes (None: no hit) and the
        term's weight in the corpus probe's best point (its IDF is the score over that)."""
        weight = idf = 0.0
        if corpus_best is not None and store_best:
            weight = max(0.0, corpus_best / store_best)
        if corpus_best is not None and corpus_tf:
            idf = max(0.0, corpus_best / corpus_tf)
        self._weights[(corpus, term)] = (weight, idf)

    def known(self, corpus: str, terms: SparseVec) -> tuple[list[float], int]:
        """The corpus IDF of each query term the corpus holds, and how many it does not."""
        idfs = [self._weights.get((corpus, t), (0.0, 0.0))[1] for t in terms.indices]
        held = [i for i in idfs if i > 0]
        return held, len(idfs) - len(held)

    def weigh(self, corpus: str, terms: SparseVec) -> SparseVec:
        """The query's terms with their learnt weights; terms the corpus lacks are left out."""
        out = SparseVec([], [])
        for t, v in zip(terms.indices, terms.values, strict=True):
            w = self._weights.get((corpus, t), (0.0, 0.0))[0]
            if w > 0:
                out.indices.append(t)
                out.values.append(v * w)
        return out
