"""Recall scores as evidence: in [0, 1], on one scale for every query, shared by every engine.

A rank fusion orders well but cannot say that nothing matched: its top hit scores the same on
any query. So a hybrid search scores each candidate by what the query and the memory share,
measured against what the query asks, and orders by that score::

    score    = sqrt(coverage * match)
    coverage = known / asked          how much of the query the caller's memories know at all
    match    = (lexical + w * max(0, cosine)) / (1 + w)
    lexical  = min(1, bm25 / asked)   the query's BM25 weight this memory carries

``bm25`` is the lexical branch's Okapi score with IDF over the caller's corpus (a term once in a
memory of average length scores its IDF). ``asked`` sums the IDF of every distinct query term;
a term no memory of the corpus holds counts ``absent_weight`` times the IDF it would have in one
memory, and ``known`` is the part of ``asked`` the corpus holds. A memory holding every query
term scores ``lexical`` 1; a query about things the memories never mention has a small
``coverage``, so every hit scores low however well it matches the query's common words (a name,
"say", "when"). ``cosine`` is the dense branch's similarity; its weight ``w`` is the embedder's
(``blend_for``). Both factors lie in [0, 1], so does the score; the square root keeps a weak
match of a well-covered query apart from a query the store knows nothing about.

Without lexical evidence (no text, a dense-only store, a query of stop words only) the score is
the cosine clipped to [0, 1]. A query whose terms no readable memory holds scores 0 throughout,
with a semantic model too: its cosine alone does not tell a paraphrase that shares no word with
a memory from a question about a topic never discussed (with MiniLM on LoCoMo, scoring such
queries by their cosine made some of the no-answer set return hits at the default
``min_score``, while the paraphrase of ``tests/test_semantic.py`` scored barely above them).
Its hits come nearest first all the same (``ranked``), so ranking alone (``min_score=0``) still
orders them by meaning.

Weights and the default ``min_score`` (``RankingConfig``) were chosen on LoCoMo with its
no-answer set (``membus.evaluation.noanswer``): ordering by this score kept evidence recall@10
at least where the rank fusion it replaces had it, in both protocols.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from membus.store.port import Hit

# a query term no readable memory holds weighs this many times a term held once: the topic of a
# question about something never discussed is usually such a term
ABSENT_WEIGHT = 3.0


@dataclass(frozen=True, slots=True)
class Blend:
    """How much the dense cosine counts beside the lexical evidence (``match``)."""

    cosine_weight: float
    absent_weight: float = ABSENT_WEIGHT

    def __post_init__(self) -> None:
        if self.cosine_weight < 0 or self.absent_weight < 1:
            raise ValueError(f"a blend needs cosine_weight >= 0 and absent_weight >= 1: {self}")


# The hashing embedder is itself lexical (hashed words, bigrams, character trigrams): its cosine
# orders what BM25 barely tells apart and catches misspellings. On LoCoMo (hashing, evidence
# recall@10 at min_score 0, reply context / bare) weight 0.2 gives 72.5 / 66.4, the rank fusion
# this replaces gave 72.1 / 66.4; with an earlier absent-term weight (against IDF's limit for a
# term no memory holds) 0.2, 0.3 and 0.5 gave 72.5 / 66.4, 72.6 / 66.3 and 72.4 / 65.9.
HASHING = Blend(cosine_weight=0.2)
# A semantic model knows what BM25 cannot (a paraphrase, a topic named in other words). Not
# measured here (no semantic model in the test environment): half the lexical evidence's weight,
# as the rank fusion had it (lexical rank 2 counted as dense rank 1), so an exact rare term
# still outweighs a merely similar memory.
SEMANTIC = Blend(cosine_weight=0.5)


def blend_for(embedder: str) -> Blend:
    """The blend for the embedder a store records (``StoreMeta.embedder``: ``hashing-v1-384``)."""
    return HASHING if embedder.startswith("hashing-") else SEMANTIC


def idf(corpus_size: int, holding: int) -> float:
    """BM25's IDF as Qdrant computes it: ``ln(1 + (N - n + 0.5) / (n + 0.5))``."""
    return math.log(1.0 + (corpus_size - holding + 0.5) / (holding + 0.5))


@dataclass(frozen=True, slots=True)
class Asked:
    """What a query asks of the caller's corpus: ``scale`` turns a BM25 score into ``lexical``
    (1 / asked), ``coverage`` is known / asked."""

    scale: float
    coverage: float


def asked(known: Sequence[float], absent: int, corpus_size: int, blend: Blend) -> Asked | None:
    """From the corpus IDF of the query terms some readable memory holds (``known``) and how
    many terms none holds; None when the query has no terms at all."""
    held = sum(known)
    # weighed against a term one memory holds, not against IDF's limit for none: in a small
    # corpus every held term has a tiny IDF and the limit would drown any query with one new word
    missing = blend.absent_weight * absent * max(idf(corpus_size, 1), 0.0) if absent else 0.0
    total = held + missing
    if total <= 0:
        return None
    return Asked(scale=1.0 / total, coverage=held / total)


def score(asked: Asked, bm25: float, cosine: float, blend: Blend) -> float:
    """A candidate's score (module docstring); what the engines compute as a formula."""
    lexical = min(1.0, max(0.0, bm25) * asked.scale)
    w = blend.cosine_weight
    match = (lexical + w * max(0.0, cosine)) / (1.0 + w)
    return clip(math.sqrt(asked.coverage * match))


def dense(cosine: float) -> float:
    """The score without lexical evidence."""
    return clip(cosine)


def clip(value: float) -> float:
    """Into [0, 1]: engines compute in 32-bit floats, so 1 may come back as 1.0000001."""
    return min(1.0, max(0.0, value))


def ranked(hits: Sequence[Hit], cosines: Sequence[float] | None = None) -> list[Hit]:
    """Best first, equal scores by memory id: an engine orders ties as it likes, and two equal
    recalls must answer alike. ``cosines`` (one per hit) break ties before the id: the hits of
    a query no memory knows all score 0, and ``min_score=0`` still wants them by meaning."""
    ties = [0.0] * len(hits) if cosines is None else cosines
    keyed = sorted(zip(hits, ties, strict=True), key=lambda x: (-x[0].score, -x[1], x[0].memory.id))
    return [h for h, _ in keyed]
