"""Recall's rerank as a Qdrant scoring formula, so that the engine applies it.

``ranking.rerank`` scales a hit's similarity by recency and importance over a candidate set
three times k; done in Python that means fetching and converting every candidate's payload. As a
formula query over the fused (or dense) candidates the engine does the same arithmetic and only
the top k come back. The formula is ``ranking.factor`` term for term::

    final  = min(score * factor, score)       (a score <= 0 is left as it is)
    factor = 1 - wr - wi + wr * 0.5 ** (max(0, now - created_ts) / half_life) + wi * importance

``min`` keeps a non-positive similarity as is, as ``rerank`` does: the factor is at most 1, so
for a positive score the product is the smaller one and for a negative score the score is.
``importance`` is the clamped ``metadata["importance"]`` that ``Memory.to_payload`` writes
top-level; a memory without one gets ``importance_default`` from the formula's defaults.
Heat (access counts) lives in Redis, where no engine can see it: with heat on, recall keeps the
Python rerank (``ranking.boost`` returns None).

The candidates' own score comes from a formula too (``evidence_edge``, ``evidence_server``): a
hybrid search scores the union of its dense and lexical branches by ``relevance.score``,
reading each branch's score as ``$score[0]`` (cosine) and ``$score[1]`` (BM25); a candidate found
by one branch only counts 0 for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import qdrant_edge as q

from membus.store.port import IMPORTANCE
from membus.store.relevance import Asked, Blend

if TYPE_CHECKING:
    from qdrant_client import models as m

CREATED = "created_ts"
SCORE = "$score"  # the candidate's score from the prefetch below the formula
# a hybrid search's branches, in the order both engines prefetch them
DENSE_SCORE, LEXICAL_SCORE = "$score[0]", "$score[1]"


@dataclass(frozen=True, slots=True)
class Boost:
    """The engine-side rerank: ``factor`` over the top ``candidates``, then the top k."""

    candidates: int
    now: float  # unix seconds: ages are measured from here (``as_of`` when recalling the past)
    recency_weight: float
    half_life_s: float
    importance_weight: float
    importance_default: float


def _exactly(t: float) -> tuple[float, float]:
    """``t`` as two constants that survive the engines' 32-bit constants: a float32 near ``t``
    and the small rest. A timestamp as one float32 is off by up to a minute, which a short
    half-life turns into a visibly different score; payload values and the arithmetic are 64-bit.
    """
    hi = float(np.float32(t))
    return hi, t - hi


def edge(b: Boost) -> q.Formula:
    e = q.Expression
    terms = [e.Constant(1.0 - b.recency_weight - b.importance_weight)]
    if b.recency_weight:
        hi, lo = _exactly(b.now)
        now = [e.Constant(hi), e.Constant(lo)]
        age = e.Max([e.Constant(0.0), e.Sum([*now, e.Neg(e.Variable(CREATED))])])
        halvings = e.Mult([age, e.Constant(1.0 / b.half_life_s)])
        terms.append(e.Mult([e.Constant(b.recency_weight), e.Pow(e.Constant(0.5), halvings)]))
    if b.importance_weight:
        terms.append(e.Mult([e.Constant(b.importance_weight), e.Variable(IMPORTANCE)]))
    score = e.Variable(SCORE)
    final = e.Min([e.Mult([score, e.Sum(terms)]), score])
    return q.Formula(final, defaults={IMPORTANCE: b.importance_default})


def server(b: Boost) -> m.FormulaQuery:
    # qdrant-client takes most of a second to import: only the server engine pays for it
    from qdrant_client import models as m

    # Qdrant servers before 1.20 have no max/min operators (Edge has): the same values through
    # abs, max(0, x) = (x + |x|) / 2 and min(a, b) = (a + b - |a - b|) / 2
    terms: list[m.Expression] = [1.0 - b.recency_weight - b.importance_weight]
    if b.recency_weight:
        now: list[m.Expression] = list(_exactly(b.now))
        x = m.SumExpression(sum=[*now, m.NegExpression(neg=CREATED)])
        age = m.MultExpression(mult=[0.5, m.SumExpression(sum=[x, m.AbsExpression(abs=x)])])
        halvings = m.MultExpression(mult=[age, 1.0 / b.half_life_s])
        decay = m.PowExpression(pow=m.PowParams(base=0.5, exponent=halvings))
        terms.append(m.MultExpression(mult=[b.recency_weight, decay]))
    if b.importance_weight:
        terms.append(m.MultExpression(mult=[b.importance_weight, IMPORTANCE]))
    scaled = m.MultExpression(mult=[SCORE, m.SumExpression(sum=terms)])
    gap = m.AbsExpression(abs=m.SumExpression(sum=[scaled, m.NegExpression(neg=SCORE)]))
    final = m.MultExpression(
        mult=[0.5, m.SumExpression(sum=[scaled, SCORE, m.NegExpression(neg=gap)])]
    )
    return m.FormulaQuery(formula=final, defaults={IMPORTANCE: b.importance_default})


def evidence_edge(a: Asked, blend: Blend) -> q.Formula:
    """``relevance.score`` over a hybrid search's two branches, for Qdrant Edge."""
    e = q.Expression
    w = blend.cosine_weight
    cosine = e.Max([e.Constant(0.0), e.Variable(DENSE_SCORE)])
    lexical = e.Min([e.Constant(1.0), e.Mult([e.Variable(LEXICAL_SCORE), e.Constant(a.scale)])])
    match = e.Sum([lexical, e.Mult([e.Constant(w), cosine])])
    final = e.Sqrt(e.Mult([e.Constant(a.coverage / (1.0 + w)), match]))
    return q.Formula(final, defaults={DENSE_SCORE: 0.0, LEXICAL_SCORE: 0.0})


def evidence_server(a: Asked, blend: Blend) -> m.FormulaQuery:
    """``evidence_edge`` for a Qdrant server, max and min through abs as in ``server``."""
    from qdrant_client import models as m

    w = blend.cosine_weight
    cos: m.Expression = DENSE_SCORE
    cosine = m.MultExpression(mult=[0.5, m.SumExpression(sum=[cos, m.AbsExpression(abs=cos)])])
    scaled = m.MultExpression(mult=[LEXICAL_SCORE, a.scale])
    gap = m.AbsExpression(abs=m.SumExpression(sum=[1.0, m.NegExpression(neg=scaled)]))
    lexical = m.MultExpression(
        mult=[0.5, m.SumExpression(sum=[1.0, scaled, m.NegExpression(neg=gap)])]
    )
    match = m.SumExpression(sum=[lexical, m.MultExpression(mult=[w, cosine])])
    final = m.SqrtExpression(sqrt=m.MultExpression(mult=[a.coverage / (1.0 + w), match]))
    return m.FormulaQuery(formula=final, defaults={DENSE_SCORE: 0.0, LEXICAL_SCORE: 0.0})
