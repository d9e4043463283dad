"""The IDF weight cache behind Edge's hybrid recall (membus/store/idf.py): what it learns, forgets
and leaves out. The end-to-end property (scores blind to memories outside the grant, never stale
after a write) is in the store conformance suite."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest
import qdrant_edge as q

from membus.access.gate import ReadGrant
from membus.store import edge, sparse
from membus.store.edge import EdgeStore
from membus.store.edge_query import condition, filter_of
from membus.store.filters import Cond, FilterSpec, RecallFilter, corpus_spec, spec
from membus.store.idf import IdfWeights, corpus_key
from membus.store.sparse import SparseVec
from tests.conformance import META, fill, flt, mem


def test_weights_are_the_ratio_of_the_best_scores_and_absent_terms_drop_out() -> None:
    w = IdfWeights()
    assert w.missing("c", [1, 2, 3]) == [1, 2, 3]
    w.learn("c", 1, corpus_best=3.0, store_best=2.0)
    w.learn("c", 2, corpus_best=None, store_best=1.5)  # no point of the corpus holds it
    w.learn("c", 3, corpus_best=1.0, store_best=None)  # cannot happen, must not divide by zero
    assert w.missing("c", [1, 2, 3, 4]) == [4]
    out = w.weigh("c", SparseVec([1, 2, 3], [1.0, 1.0, 1.0]))
    assert out.indices == [1] and math.isclose(out.values[0], 1.5)


def test_the_corpus_idf_and_size_are_learnt_for_the_scores() -> None:
    """Recall's scores (membus.store.relevance) need each term's corpus IDF, whether the corpus
    holds it at all, and the corpus size; a write forgets them with the weights."""
    w = IdfWeights()
    w.learn("c", 1, corpus_best=3.0, store_best=2.0, corpus_tf=1.5)
    w.learn("c", 2, corpus_best=None, store_best=1.5)  # no point of the corpus holds it
    w.learn_size("c", 40)
    known, absent = w.known("c", SparseVec([1, 2, 5], [1.0] * 3))  # 5: never probed
    assert known == [2.0] and absent == 2
    assert w.size("c") == 40 and w.size("other") is None
    w.clear()
    assert w.size("c") is None and w.known("c", SparseVec([1], [1.0])) == ([], 1)


def test_corpora_do_not_share_weights_and_clear_forgets_all() -> None:
    w = IdfWeights()
    w.learn("mine", 1, 2.0, 1.0)
    assert w.missing("theirs", [1]) == [1]
    assert not w.weigh("theirs", SparseVec([1], [1.0]))
    w.clear()
    assert len(w) == 0 and w.missing("mine", [1]) == [1]


def test_a_full_cache_starts_over_before_learning_never_in_between() -> None:
    w = IdfWeights(max_entries=3)
    for t in (1, 2):
        w.learn("c", t, 1.0, 1.0)
    assert w.missing("c", [1, 3, 4]) == [1, 3, 4]  # 2 + 2 new > 3: start over, probe them all
    assert len(w) == 0
    for t in (1, 3, 4):
        w.learn("c", t, 1.0, 1.0)
    assert w.weigh("c", SparseVec([1, 3, 4], [1.0] * 3)).indices == [1, 3, 4]


def test_the_corpus_is_the_grant_not_the_request() -> None:
    """Narrowing by scope, kind or time, and the clock, leave the corpus (and its key) alone;
    a different grant is a different corpus."""
    grant = ReadGrant(all_scopes=False, include=["team/a"], exclude=["team/a/x"], clearance=1)
    plain = corpus_spec(RecallFilter(tenant="t", grant=grant))
    narrowed = corpus_spec(
        RecallFilter(tenant="t", grant=grant, scopes=["team/a/b"], kinds=["fact"])
    )
    assert corpus_key(plain) == corpus_key(narrowed)
    assert Cond("tenant", value="t") in plain.must
    assert all(c.field != "valid_to_ts" for c in plain.must)
    other = corpus_spec(RecallFilter(tenant="t", grant=ReadGrant(all_scopes=True)))
    assert corpus_key(other) != corpus_key(plain)
    assert corpus_spec(RecallFilter(tenant="t", grant=ReadGrant(all_scopes=False))) == FilterSpec(
        nothing=True
    )


def _match_any_everywhere(fs: FilterSpec) -> q.Filter:
    """``fs`` as Edge filters built before one-value matches: every ``any`` a ``MatchAny``."""

    def cond(c: Cond) -> Any:
        if c.any is not None:
            return q.FieldCondition(c.field, match=q.MatchAny(list(c.any)))
        return condition(c)

    must = [cond(c) for c in fs.must]
    if fs.should:
        must.append(q.Filter(should=[cond(c) for c in fs.should]))
    must += [q.Filter(should=[cond(c) for c in group]) for group in fs.either]
    return q.Filter(must=must, must_not=[cond(c) for c in fs.must_not] or None)


@pytest.mark.slow  # an Edge shard: about 2 s
def test_one_value_matches_select_what_match_any_selects(tmp_path: Path) -> None:
    """Filters turn a one-value ``any`` into a plain match (``edge_query.condition``: ten times
    cheaper to build, twice as fast for Edge to walk); it must select exactly the points the
    ``MatchAny`` did, on keyword and list fields (``scope_path``, ``agents``), in ``must``,
    ``should`` and ``must_not``, or the corpus IDF, every score and every answer would change."""

    async def run() -> None:
        store = EdgeStore(tmp_path / "store")
        await store.open(META)
        scopes = ["team/a", "team/a/x", "team/ab", "team/b", "agent/c"]
        who = [("alice",), ("bob",), ("alice", "bob")]
        mine = [
            mem(i, scope=s, kind=("fact", "event")[i % 2], agents=who[i % 3])
            for i, s in enumerate(scopes * 3)
        ]
        others = [mem(100 + i, scope=s, tenant="other") for i, s in enumerate(scopes)]
        await fill(store, mine + others)
        grants = [
            ReadGrant(include=["team/a"]),
            ReadGrant(include=["team/a", "team/b"]),
            ReadGrant(include=["team"], exclude=["team/a"]),
            ReadGrant(exact=["team/ab"]),
            ReadGrant(include=["team"], exclude_exact=["team/b"], clearance=1),
            ReadGrant(all_scopes=True),
        ]
        specs = [corpus_spec(flt(grant=g)) for g in grants] + [
            spec(flt(scopes=["team/a"], agents=["bob"])),
            spec(flt(scopes=["team/a"], include_subscopes=False, kinds=["fact"])),
            spec(flt(kinds=["event"])),
            spec(flt(grant=grants[2], agents=["alice", "bob"], kinds=["fact"])),
        ]
        shard = store._shard
        for fs in specs:
            got = [
                {str(r.id) for r in shard.scroll(q.ScrollRequest(limit=100, filter=f))[0]}
                for f in (_match_any_everywhere(fs), filter_of(fs))
            ]
            assert got[0] == got[1] and got[0], fs
        one = corpus_spec(flt(grant=grants[0]))
        assert repr(filter_of(one)) != repr(_match_any_everywhere(one))  # the plain form is used
        await store.close()

    anyio.run(run)


@pytest.mark.slow  # an Edge shard: about 2 s
def test_idf_from_holder_counts_equals_the_engines_corpus_idf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edge's own corpus IDF walks the whole corpus filter, so the probes count the holders of
    a rare term instead and apply the engine's formula (``EdgeStore._probe``). Both ways must
    give the same weights and the same ``asked`` (so the same scores), with memories outside the
    grant and in another tenant holding the terms too, and memories of stop words only."""
    words = ["lisbon office", "lisbon tram", "porto office", "the and of", "lisbon port wine"]

    async def run() -> None:
        store = EdgeStore(tmp_path / "store")
        await store.open(META)
        mine = [mem(i, scope="team/a", content=c) for i, c in enumerate(words * 3)]
        outside = [mem(100 + i, scope="team/b", content=c) for i, c in enumerate(words[:2] * 4)]
        other = [mem(200 + i, tenant="other", scope="team/a", content="lisbon") for i in range(9)]
        await fill(store, mine + outside + other)
        corpus = corpus_spec(flt(grant=ReadGrant(include=["team/a"])))
        query = sparse.query("lisbon office wine tram zebra")
        got = []
        for holders in (4, 1):  # 4: rare terms counted, common ones asked; 1: all asked
            monkeypatch.setattr(edge, "_HOLDERS", holders)
            monkeypatch.setattr(edge, "_HOLDERS_SHARE", 10**9)  # the corpus is tiny anyway
            store._idf.clear()
            got.append(store._weigh(corpus, query))
        (counted, asked_counted), (engine, asked_engine) = got
        assert counted.indices == engine.indices and len(counted.indices) == 4  # zebra: absent
        assert counted.values == pytest.approx(engine.values, rel=1e-6)
        assert asked_counted is not None and asked_engine is not None
        assert asked_counted.scale == pytest.approx(asked_engine.scale, rel=1e-6)
        assert asked_counted.coverage == pytest.approx(asked_engine.coverage, rel=1e-6)
        await store.close()

    anyio.run(run)
