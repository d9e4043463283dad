"""Recall's rerank: the formula on its own, then through the bus on a real Redis + Qdrant Edge.

The property that matters most for benchmarks: when every memory is old (or every memory was
ingested at once), the default rerank keeps the similarity order.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import membus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.recall import ranking
from membus.recall.heat import Access
from membus.store.port import Hit, Memory

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DEFAULT = RankingConfig()
FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)


def memory(i: int, created: datetime, **metadata: Any) -> Memory:
    return Memory(
        id=f"00000000-0000-0000-0000-{i:012d}",
        tenant="acme",
        scope="team/a",
        kind="fact",
        content=f"memory {i}",
        created_at=created,
        updated_at=created,
        metadata=metadata,
    )


def hit(i: int, score: float, created: datetime = NOW, **metadata: Any) -> Hit:
    return Hit(memory=memory(i, created, **metadata), score=score)


# -- the signals ----------------------------------------------------------------------------------


def test_recency_halves_every_half_life_and_never_exceeds_one() -> None:
    half = 7 * 24 * 3600.0
    assert ranking.recency(NOW, NOW, half) == 1.0
    assert ranking.recency(NOW - 7 * DAY, NOW, half) == pytest.approx(0.5)
    assert ranking.recency(NOW - 14 * DAY, NOW, half) == pytest.approx(0.25)
    assert ranking.recency(NOW + DAY, NOW, half) == 1.0  # a clock ahead is "now", not a bonus


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"importance": 0.8}, 0.8),
        ({"importance": 1}, 1.0),
        ({"importance": 7}, 1.0),
        ({"importance": -2}, 0.0),
        ({}, 0.5),
        ({"importance": "high"}, 0.5),
        ({"importance": True}, 0.5),  # a bool is not a degree of importance
        ({"importance": None}, 0.5),
        ({"importance": math.nan}, 0.5),
    ],
)
def test_importance_reads_metadata_clamped_else_default(
    metadata: dict[str, Any], expected: float
) -> None:
    assert ranking.importance(metadata, 0.5) == expected


def test_heat_saturates() -> None:
    assert ranking.heat(0, 10) == 0.0
    assert ranking.heat(10, 10) == 0.5
    assert ranking.heat(1, 10) < ranking.heat(5, 10) < ranking.heat(1000, 10) < 1.0


def test_factor_stays_between_one_minus_weights_and_one() -> None:
    cfg = RankingConfig(recency_weight=0.2, importance_weight=0.3, heat_weight=0.1)
    stale = memory(1, NOW - 3650 * DAY, importance=0.0)
    best = memory(2, NOW, importance=1.0)
    assert ranking.factor(stale, cfg, NOW, Access()) == pytest.approx(0.4)
    hot = Access(count=10**9, last_at=NOW)
    assert ranking.factor(best, cfg, NOW, hot) == pytest.approx(1.0, abs=1e-6)


def test_weights_must_leave_similarity_a_share() -> None:
    with pytest.raises(ValidationError):
        RankingConfig(recency_weight=0.5, importance_weight=0.5)
    RankingConfig(recency_weight=0.5, importance_weight=0.4)


def test_candidates_over_fetch_only_when_the_rerank_can_change_something() -> None:
    assert ranking.candidates(5, DEFAULT) == 15
    assert ranking.candidates(200, DEFAULT) == 300  # capped
    assert ranking.candidates(1000, DEFAULT) == 1000  # never fewer than k
    off = RankingConfig(enabled=False)
    assert ranking.candidates(5, off) == 5
    zero = RankingConfig(recency_weight=0, importance_weight=0)
    assert ranking.candidates(5, zero) == 5 and not ranking.active(zero)


def test_the_engine_reranks_only_when_every_signal_is_in_the_payload() -> None:
    """``boost`` hands recency and importance to the engine (membus.store.formula; the conformance
    suite checks each engine against ``rerank``); heat lives in Redis, so it stays here."""
    b = ranking.boost(5, DEFAULT, NOW)
    assert b is not None
    assert (b.candidates, b.now) == (15, NOW.timestamp())  # the candidates rerank looks at
    assert (b.recency_weight, b.importance_weight) == (0.1, 0.1)
    assert ranking.boost(5, RankingConfig(enabled=False)) is None
    assert ranking.boost(5, RankingConfig(recency_weight=0, importance_weight=0)) is None
    assert ranking.boost(5, RankingConfig(heat_weight=0.2)) is None


# -- the rerank -----------------------------------------------------------------------------------


def similarity_order(hits: list[Hit]) -> list[str]:
    return [h.memory.id for h in sorted(hits, key=lambda h: -h.score)]


@pytest.mark.parametrize(
    "ages",
    [
        # a LoCoMo-like history: every memory months to years old
        [timedelta(days=200 + 3 * i) for i in range(60)],
        # a benchmark ingested all at once: seconds apart
        [timedelta(seconds=i) for i in range(60)],
    ],
    ids=["all-old", "all-at-once"],
)
def test_defaults_keep_similarity_order_when_ages_are_uniformly_old_or_new(
    ages: list[timedelta],
) -> None:
    """The defaults must not hurt a retrieval benchmark: with no importance in metadata and ages
    that are all far past the half-life (or all within seconds), the factor is ~uniform, so the
    order is the similarity order even for similarities 0.005 apart."""
    rng = random.Random(7)
    sims = [0.2 + 0.005 * i for i in range(len(ages))]
    rng.shuffle(sims)
    hits = [hit(i, s, NOW - age) for i, (s, age) in enumerate(zip(sims, ages, strict=True))]
    ranked = ranking.rerank(hits, 25, DEFAULT, NOW)
    assert [h.memory.id for h in ranked] == similarity_order(hits)[:25]


def test_recency_reorders_near_ties_but_not_clear_winners() -> None:
    old, fresh = NOW - 365 * DAY, NOW - DAY
    near = ranking.rerank([hit(1, 0.80, old), hit(2, 0.78, fresh)], 2, DEFAULT, NOW)
    assert [h.memory.id[-1] for h in near] == ["2", "1"]
    clear = ranking.rerank([hit(1, 0.90, old), hit(2, 0.50, fresh)], 2, DEFAULT, NOW)
    assert [h.memory.id[-1] for h in clear] == ["1", "2"]


def test_importance_reorders_near_ties() -> None:
    ranked = ranking.rerank(
        [hit(1, 0.70, importance=0.0), hit(2, 0.69, importance=1.0)], 2, DEFAULT, NOW
    )
    assert [h.memory.id[-1] for h in ranked] == ["2", "1"]


def test_heat_counts_only_when_weighted() -> None:
    hits = [hit(1, 0.70), hit(2, 0.69)]
    stats = {hits[1].memory.id: Access(count=50, last_at=NOW)}
    assert [h.memory.id[-1] for h in ranking.rerank(hits, 2, DEFAULT, NOW, stats)] == ["1", "2"]
    hot = RankingConfig(heat_weight=0.2)
    assert [h.memory.id[-1] for h in ranking.rerank(hits, 2, hot, NOW, stats)] == ["2", "1"]


def test_score_is_the_final_score_and_off_means_similarity() -> None:
    h = hit(1, 0.5, NOW - 3650 * DAY)  # stale, no importance: factor 1 - 0.1 - 0.1 + 0.05
    [ranked] = ranking.rerank([h], 1, DEFAULT, NOW)
    assert ranked.score == pytest.approx(0.5 * 0.85)
    for off in (RankingConfig(enabled=False), RankingConfig(recency_weight=0, importance_weight=0)):
        assert ranking.rerank([h], 1, off, NOW)[0].score == 0.5


def test_negative_similarity_is_left_alone() -> None:
    """A factor below 1 would pull a negative score towards 0, i.e. raise it."""
    ranked = ranking.rerank([hit(1, -0.2, NOW - 3650 * DAY), hit(2, 0.01)], 2, DEFAULT, NOW)
    assert [h.score for h in ranked] == [pytest.approx(0.01 * 0.95), -0.2]


# -- through the bus ------------------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


@pytest.mark.slow
@pytest_anyio
async def test_recall_reranks_by_importance_and_reports_the_final_score(
    redis_url: str, tmp_path: Path
) -> None:
    """Two memories with the same text in two scopes: importance puts the important one first,
    and Hit.score is the engine's score times the documented factor, over the same candidate
    set the engine scored (a hybrid engine's fused scores depend on where each hit ranked, so
    a weight strong enough to overturn one rank is used here)."""
    strong = RankingConfig(recency_weight=0, importance_weight=0.6)
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        ranking=strong,
    )
    async with membus.open(tmp_path, cfg) as bus:
        alice = bus.agent("alice", "acme")
        text = "the release train leaves on thursdays"
        await alice.publish(text, scope="team/a", metadata={"importance": 0.0})
        await alice.publish(text, scope="team/b", metadata={"importance": 1.0})
        await bus.drain(10)
        query, pool = "when does the release train leave", ranking.candidates(2, strong)

        bus.config = cfg.model_copy(update={"ranking": RankingConfig(enabled=False)})
        raw = {h.memory.id: h.score for h in await alice.recall(query, k=pool)}

        bus.config = cfg
        ranked = await alice.recall(query, k=2)
        assert [h.memory.scope for h in ranked] == ["team/b", "team/a"]
        for h in ranked:
            expected = raw[h.memory.id] * ranking.factor(h.memory, strong, datetime.now(UTC))
            assert h.score == pytest.approx(expected, rel=1e-6)
        assert not any(h.working for h in ranked)


@pytest.mark.slow
@pytest_anyio
async def test_recency_is_measured_from_as_of(redis_url: str, tmp_path: Path) -> None:
    """Recall as of a past time ranks what was recent then: the memory observed just before
    as_of beats an equally similar one observed a year earlier."""
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        ranking=RankingConfig(
            recency_weight=0.8, importance_weight=0, recency_half_life_s=86400, min_score=0
        ),
    )
    as_of = datetime.now(UTC) - 400 * DAY
    async with membus.open(tmp_path, cfg) as bus:
        alice = bus.agent("alice", "acme")
        text = "the office coffee machine is broken"
        await alice.publish(text, scope="team/a", created_at=as_of - 365 * DAY)
        await alice.publish(text, scope="team/b", created_at=as_of - DAY)
        await bus.drain(10)
        hits = await alice.recall("is the coffee machine broken", k=2, as_of=as_of)
        assert [h.memory.scope for h in hits] == ["team/b", "team/a"]
        assert hits[0].score > hits[1].score
