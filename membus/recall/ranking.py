"""Recall's rerank: similarity, tempered by recency, importance and heat.

The formula and why its defaults are gentle are documented on ``RankingConfig``
(membus/core/config.py)::

    final = sim * (1 - wr - wi - wh + wr*R + wi*I + wh*H)     (sim <= 0 is left as is)

The store returns a somewhat larger candidate set (``candidates``), this module rescores it and
keeps the top k. ``Hit.score`` becomes the final score; the factor lies in (0, 1], so a final
score stays in [0, 1] (the engines' scale, ``membus.store.relevance``) and never rises above the
score the engine reported. Recall hands the same rerank to the
engine when it can (``boost``: recency and importance are payload fields, ``membus.store.formula``),
so only the top k travel; heat and working memory need this module's own pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from membus.core.config import RankingConfig
from membus.recall.heat import Access, AccessLog
from membus.store.formula import Boost
from membus.store.port import Hit, Memory, importance_of


def active(cfg: RankingConfig) -> bool:
    """Whether the rerank can change anything (else recall skips it and the over-fetch)."""
    return cfg.enabled and (cfg.recency_weight + cfg.importance_weight + cfg.heat_weight) > 0


def uses_heat(cfg: RankingConfig) -> bool:
    return active(cfg) and cfg.heat_weight > 0


def candidates(k: int, cfg: RankingConfig) -> int:
    """How many hits to ask the store for: ``factor * k``, capped, and never fewer than k."""
    if not active(cfg):
        return k
    return max(k, min(k * cfg.candidate_factor, cfg.max_candidates))


def boost(k: int, cfg: RankingConfig, as_of: datetime | None = None) -> Boost | None:
    """The rerank for the engine to apply over ``candidates(k)``, or None: nothing to rerank,
    or heat on (access counts live in Redis, out of the engine's sight)."""
    if not active(cfg) or uses_heat(cfg):
        return None
    return Boost(
        candidates=candidates(k, cfg),
        now=(as_of or datetime.now(UTC)).timestamp(),
        recency_weight=cfg.recency_weight,
        half_life_s=cfg.recency_half_life_s,
        importance_weight=cfg.importance_weight,
        importance_default=cfg.importance_default,
    )


def recency(created_at: datetime, now: datetime, half_life_s: float) -> float:
    """1 for a memory observed now, halving every ``half_life_s``; a future time counts as now."""
    age = max(0.0, (now - created_at).total_seconds())
    return math.pow(0.5, age / half_life_s)


def importance(metadata: Mapping[str, Any], default: float) -> float:
    """``metadata["importance"]`` clamped to [0, 1]; ``default`` when absent or not a number."""
    value = importance_of(metadata)
    return default if value is None else value


def heat(count: int, saturation: float) -> float:
    """0 for a memory never recalled, 0.5 at ``saturation`` recalls, approaching 1."""
    return count / (count + saturation) if count > 0 else 0.0


def factor(
    memory: Memory, cfg: RankingConfig, now: datetime, access: Access | None = None
) -> float:
    """The multiplier in [1 - sum(weights), 1] for one memory."""
    wr, wi, wh = cfg.recency_weight, cfg.importance_weight, cfg.heat_weight
    out = 1.0 - wr - wi - wh
    if wr:
        out += wr * recency(memory.created_at, now, cfg.recency_half_life_s)
    if wi:
        out += wi * importance(memory.metadata, cfg.importance_default)
    if wh and access is not None:
        out += wh * heat(access.count, cfg.heat_saturation)
    return out


def rerank(
    hits: Sequence[Hit],
    k: int,
    cfg: RankingConfig,
    now: datetime,
    access: Mapping[str, Access] | None = None,
) -> list[Hit]:
    """The top ``k`` of ``hits`` by final score (ties keep the engine's order); without an
    active config, the top k by the scores as given."""
    if not active(cfg):
        ranked = sorted(hits, key=lambda h: -h.score)
        return ranked[:k]
    stats = access or {}
    scored = []
    for h in hits:
        if h.score <= 0:  # 0 stays 0 (and a factor below 1 would raise a negative score)
            scored.append(h)
            continue
        f = factor(h.memory, cfg, now, stats.get(h.memory.id))
        scored.append(h.model_copy(update={"score": h.score * f}))
    scored.sort(key=lambda h: -h.score)  # stable: equal scores keep the engine's order
    return scored[:k]


async def rank(
    access: AccessLog,
    tenant: str,
    hits: Sequence[Hit],
    k: int,
    cfg: RankingConfig,
    as_of: datetime | None = None,
) -> list[Hit]:
    """Recall's last step: read heat when it counts (best effort), then ``rerank``. Recency is
    measured from ``as_of`` when given: what was recent then, not now."""
    stats = None
    if uses_heat(cfg):
        ids = [h.memory.id for h in hits if not h.working]  # working hits have no statistics
        stats = await access.read_best_effort(tenant, ids)
    return rerank(hits, k, cfg, as_of or datetime.now(UTC), stats)
