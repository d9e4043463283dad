"""Recall scores as evidence (membus/store/relevance.py): in [0, 1], on one scale for every query,
the same from every engine, and the threshold recall filters on (``min_score``)."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import AsyncQdrantClient

import membus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.errors import InvalidInput
from membus.store import relevance, sparse
from membus.store.edge import EdgeStore
from membus.store.port import Memory, Store, StoreMeta
from membus.store.qdrant import QdrantStore
from tests.conformance import DIM, flt, mem, rows

unit_float = st.floats(0.0, 1.0)
weights = st.floats(0.0, 5.0)


# -- the score itself --------------------------------------------------------------------------


@given(
    known=st.lists(st.floats(0.0, 20.0), max_size=6),
    absent=st.integers(0, 6),
    size=st.integers(0, 10_000),
    bm25=st.floats(-5.0, 200.0),
    cosine=st.floats(-1.0, 1.0),
    w=weights,
    gamma=st.floats(1.0, 10.0),
)
def test_every_score_lies_in_0_1(
    known: list[float], absent: int, size: int, bm25: float, cosine: float, w: float, gamma: float
) -> None:
    blend = relevance.Blend(cosine_weight=w, absent_weight=gamma)
    asked = relevance.asked(known, absent, size, blend)
    if asked is None:  # no terms, or only absent ones in an empty corpus
        assert sum(known) == 0 and (absent == 0 or size == 0)
        return
    assert 0.0 <= asked.coverage <= 1.0
    assert 0.0 <= relevance.score(asked, bm25, cosine, blend) <= 1.0
    assert 0.0 <= relevance.dense(cosine) <= 1.0


def test_a_memory_holding_every_term_of_a_known_query_scores_high_and_unknown_topics_low() -> None:
    blend = relevance.HASHING
    idf = [relevance.idf(100, 3), relevance.idf(100, 40)]  # a rare and a common term
    full = relevance.asked(idf, 0, 100, blend)
    assert full is not None and full.coverage == 1.0
    # the memory holds both terms once: lexical 1; a cosine of 0.5 beside it
    assert relevance.score(full, sum(idf), 0.5, blend) == pytest.approx(
        math.sqrt((1 + 0.2 * 0.5) / 1.2)
    )
    # the same memory for a query that also names two things no memory mentions
    unknown = relevance.asked(idf, 2, 100, blend)
    assert unknown is not None and unknown.coverage < 0.3
    assert relevance.score(unknown, sum(idf), 0.5, blend) < 0.2 <= RankingConfig().min_score
    # nothing held at all: 0 whatever the cosine
    none = relevance.asked([], 3, 100, blend)
    assert none is not None and relevance.score(none, 0.0, 1.0, blend) == 0.0
    assert relevance.asked([], 0, 100, blend) is None  # no terms: the dense score applies


@given(asked=st.builds(relevance.Asked, scale=st.floats(0.0, 1.0), coverage=unit_float))
def test_more_evidence_never_lowers_a_score(asked: relevance.Asked) -> None:
    blend = relevance.SEMANTIC
    lows = [relevance.score(asked, b, c, blend) for b, c in ((0.5, 0.1), (0.5, 0.6), (2.0, 0.1))]
    assert lows[0] <= lows[1] and lows[0] <= lows[2]


def test_the_blend_is_the_embedders() -> None:
    assert relevance.blend_for("hashing-v1-384") is relevance.HASHING
    for name in ("minilm-l6-v2", "some-other-model"):  # any model but the hashing one
        assert relevance.blend_for(name) is relevance.SEMANTIC
    assert relevance.HASHING.cosine_weight < relevance.SEMANTIC.cosine_weight
    for bad in ({"cosine_weight": -0.1}, {"cosine_weight": 1.0, "absent_weight": 0.5}):
        with pytest.raises(ValueError):
            relevance.Blend(**bad)


# -- engines compute it as the Python mirror does ------------------------------------------------

CONTENTS = [
    "the zanzibar gateway rejected card payments overnight",
    "card payments recovered after the gateway restart",
    "weekly sync moved to thursday",
    "zanzibar office opens in june",
    "refunds over 100 EUR need a second approver",
    "the staging database was restarted at noon",
]


def vectors(n: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray[Any, Any] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def expected(
    memories: list[Memory],
    vecs: np.ndarray[Any, Any],
    query: np.ndarray[Any, Any],
    text: str,
    blend: relevance.Blend,
) -> dict[str, float]:
    """Each memory's score by the module's formula, with Qdrant's IDF counted here."""
    docs = [sparse.document(m.content) for m in memories]
    terms = sparse.query(text).indices
    holding = {t: sum(1 for d in docs if t in d.indices) for t in terms}
    n = len(memories)
    idf = {t: relevance.idf(n, holding[t]) for t in terms if holding[t]}
    asked = relevance.asked(list(idf.values()), len(terms) - len(idf), n, blend)
    assert asked is not None
    out = {}
    for m, d, v in zip(memories, docs, vecs, strict=True):
        tf = dict(zip(d.indices, d.values, strict=True))
        bm25 = sum(idf[t] * tf.get(t, 0.0) for t in idf)
        out[m.id] = relevance.score(asked, bm25, float(v @ query), blend)
    return out


@pytest.fixture(params=["edge", "qdrant-local"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Store]]:
    client = AsyncQdrantClient(location=":memory:")
    make: dict[str, Callable[[], Store]] = {
        "edge": lambda: EdgeStore(tmp_path / "store"),
        "qdrant-local": lambda: QdrantStore(":memory:", client=client),
    }
    yield make[request.param]
    await client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("embedder", ["hashing-v1-8", "a-semantic-model"])
async def test_engines_score_as_the_formula_says(
    engine: Callable[[], Store], embedder: str
) -> None:
    store = engine()
    await store.open(StoreMeta(embedder=embedder, dim=DIM))
    try:
        memories = [mem(i, content=c) for i, c in enumerate(CONTENTS)]
        vecs = vectors(len(memories), 1)
        await store.upsert(memories, rows(list(vecs)))
        blend = relevance.blend_for(embedder)
        for i, text in enumerate(
            [
                "zanzibar gateway",
                "what did the gateway reject?",
                "card payments in zanzibar",
                "when was the staging database restarted",
                "zanzibar quantum telescope",
            ]
        ):
            query = vectors(1, 100 + i)[0]
            hits = await store.search(query, flt(), len(memories), text=text)
            want = expected(memories, vecs, query, text, blend)
            got = {h.memory.id: h.score for h in hits}
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), text
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)  # ordered by the score itself
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_query_no_memory_knows_scores_0_and_no_terms_score_the_cosine(
    engine: Callable[[], Store],
) -> None:
    store = engine()
    await store.open(StoreMeta(embedder="hashing-v1-8", dim=DIM))
    try:
        memories = [mem(i, content=c) for i, c in enumerate(CONTENTS)]
        vecs = vectors(len(memories), 2)
        await store.upsert(memories, rows(list(vecs)))
        hits = await store.search(vecs[0], flt(), 3, text="quantum telescope budget")
        assert len(hits) == 3 and {h.score for h in hits} == {0.0}
        # all 0, yet nearest first: min_score=0 still ranks such a query by meaning
        nearest = sorted(range(len(memories)), key=lambda i: -float(vecs[i] @ vecs[0]))[:3]
        assert [h.memory.id for h in hits] == [memories[i].id for i in nearest]
        hits = await store.search(vecs[0], flt(), 3, text="what is it?")  # stop words only
        assert hits[0].memory.id == memories[0].id and hits[0].score == pytest.approx(1.0)
        assert all(0.0 <= h.score <= 1.0 for h in hits)
    finally:
        await store.close()


@pytest.mark.slow
def test_random_stores_and_queries_score_in_0_1() -> None:
    """Random contents, vectors and queries (seeded): every hit of either engine in [0, 1],
    best first, and both engines agree."""
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "refund", "gateway", "zanzibar", "note"]
    words += ["sync", "card", "the", "of", "a"]

    async def run(tmp: Path) -> None:
        client = AsyncQdrantClient(location=":memory:")
        stores: list[Store] = [EdgeStore(tmp / "edge"), QdrantStore(":memory:", client=client)]
        memories = [
            mem(i, content=" ".join(rng.choices(words, k=rng.randint(1, 12)))) for i in range(30)
        ]
        vecs = vectors(len(memories), 3)
        for s in stores:
            await s.open(StoreMeta(embedder="hashing-v1-8", dim=DIM))
            await s.upsert(memories, rows(list(vecs)))
        for i in range(25):
            text = " ".join(rng.choices([*words, "unheard", "absent"], k=rng.randint(1, 6)))
            query = vectors(1, 200 + i)[0]
            found = [await s.search(query, flt(), 10, text=text) for s in stores]
            for hits in found:
                scores = [h.score for h in hits]
                assert all(0.0 <= x <= 1.0 for x in scores), (text, scores)
                assert scores == sorted(scores, reverse=True)
            edge, server = ({h.memory.id: h.score for h in hits} for hits in found)
            common = edge.keys() & server.keys()
            assert len(common) >= 8  # ties at the cut may pick different members
            assert {k: edge[k] for k in common} == pytest.approx(
                {k: server[k] for k in common}, rel=1e-4, abs=1e-6
            )
        for s in stores:
            await s.close()
        await client.close()

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp))


# -- through the bus: min_score -------------------------------------------------------------------

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
NOTES = [
    "the staging database was restarted at noon by the ops team",
    "refunds over 100 EUR need a second approver from finance",
    "the zanzibar payment gateway rejected card payments overnight",
    "alice moved the weekly sync to thursday afternoons",
    "the office in lisbon opens in june with twelve desks",
    "bob is allergic to peanuts, order lunch accordingly",
]


def config(url: str, writers: int = 1) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=url), worker=FAST, writers=writers
    )


@pytest.mark.slow
@pytest.mark.anyio
async def test_min_score_filters_and_no_answer_questions_return_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """On a populated store: a question about what the notes never mention returns nothing at
    the default ``min_score``; a question they answer returns its note first; ``min_score``
    filters on the scores it returns, 0 keeps every hit, outside [0, 1] is refused."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish_many([membus.Draft(content=n, scope="team/ops") for n in NOTES])
        await bus.drain(10)
        for question in (
            "What did Alice say about the quantum computing budget?",
            "Who is responsible for the Kubernetes cluster?",
            "When is the chess tournament?",
        ):
            assert await alice.recall(question) == [], question
            assert len(await alice.recall(question, min_score=0.0)) == 5
        every = await alice.recall("who rejected card payments?", k=6, min_score=0.0)
        assert every[0].memory.content == NOTES[2]
        assert all(0.0 <= h.score <= 1.0 for h in every)
        assert every[0].score >= RankingConfig().min_score
        cut = (every[0].score + every[-1].score) / 2
        kept = await alice.recall("who rejected card payments?", k=6, min_score=cut)
        assert [h.memory.id for h in kept] == [h.memory.id for h in every if h.score >= cut]
        assert 0 < len(kept) < len(every)
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(InvalidInput, match="min_score"):
                await alice.recall("card payments", min_score=bad)


@pytest.mark.slow
@pytest.mark.anyio
async def test_working_hits_score_on_the_same_scale(redis_url: str, tmp_path: Path) -> None:
    """A working hit (published, not consolidated) scores in [0, 1] and passes or fails
    ``min_score`` like a stored one: an unrelated question drops it too."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish_many([membus.Draft(content=n, scope="team/ops") for n in NOTES[:4]])
        await bus.drain(10)
    async with membus.open(tmp_path, config(redis_url, writers=0)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish(NOTES[4], scope="team/ops")
        hits = await alice.recall("when does the lisbon office open?", k=5, working=True)
        assert hits[0].working and hits[0].memory.content == NOTES[4]
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert hits[0].score >= RankingConfig().min_score
        assert await alice.recall("the kubernetes cluster upgrade", working=True) == []
        loose = await alice.recall("the kubernetes cluster upgrade", working=True, min_score=0)
        assert any(h.working for h in loose) and all(0.0 <= h.score <= 1.0 for h in loose)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=st.lists(
        st.text(alphabet="abcdefgh ", min_size=1, max_size=30), min_size=1, max_size=8
    ),
    text=st.text(alphabet="abcdefgh xyz", min_size=1, max_size=20),
)
@pytest.mark.slow
def test_any_store_and_query_scores_in_0_1(contents: list[str], text: str) -> None:
    """Hypothesis over small Edge stores and queries: every score in [0, 1], best first."""

    async def run(tmp: Path) -> None:
        store = EdgeStore(tmp / "s")
        await store.open(StoreMeta(embedder="hashing-v1-8", dim=DIM))
        memories = [mem(i, content=c.strip() or "x") for i, c in enumerate(contents)]
        await store.upsert(memories, rows(list(vectors(len(memories), len(text)))))
        hits = await store.search(vectors(1, 9)[0], flt(), 10, text=text)
        scores = [h.score for h in hits]
        assert all(0.0 <= x <= 1.0 for x in scores) and scores == sorted(scores, reverse=True)
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp))
