"""The one behaviour every ``Store`` engine must show, written once and run on each engine.

Subclass ``StoreConformance`` and override the ``make`` fixture: it returns a callable that builds
a new, unopened store handle over the *same* backing data on every call (so reopen can be tested).
Set ``persists = False`` if a closed store cannot be reopened with its data.

Vectors are small hand-made unit vectors so rankings are exact, not approximate.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from membus.access.gate import ReadGrant
from membus.core.config import ConsolidationConfig, RankingConfig
from membus.core.envelope import LABELS
from membus.embed.port import Vectors
from membus.errors import Conflict, InvalidInput, Unavailable
from membus.recall import ranking
from membus.store.port import Memory, RecallFilter, Store, StoreMeta, numbers_key, point_id
from membus.writer.consolidate import SlotState, Variant, keyed_slot, materialize

DIM = 8
META = StoreMeta(embedder="conformance-v1", dim=DIM)
T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
TENANT = "acme"

StoreFactory = Callable[[], Store]


def unit(i: int) -> Vectors:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def ray(i: int) -> Vectors:
    """Unit vectors whose cosine to ``unit(0)`` strictly falls as ``i`` grows: a known ranking."""
    v = unit(0) + unit(1) * (0.25 * i)
    out: Vectors = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def rows(vectors: Sequence[Vectors]) -> Vectors:
    if not vectors:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)


def mem(
    n: int,
    *,
    tenant: str = TENANT,
    scope: str = "team/support",
    kind: str = "fact",
    subject: str | None = None,
    agents: Sequence[str] = ("alice",),
    content: str | None = None,
    at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> Memory:
    created = at or T0 + timedelta(hours=n)
    return Memory(
        id=point_id(tenant, f"ev-{n}"),
        tenant=tenant,
        scope=scope,
        kind=kind,
        content=content or f"memory {n}",
        subject=subject,
        agents=list(agents),
        source_events=[f"ev-{n}"],
        created_at=created,
        updated_at=created,
        metadata=metadata or {},
    )


def flt(**kw: Any) -> RecallFilter:
    return RecallFilter(tenant=kw.pop("tenant", TENANT), **kw)


async def ids_of(store: Store, vector: Vectors, f: RecallFilter, k: int = 50) -> set[str]:
    return {h.memory.id for h in await store.search(vector, f, k)}


async def fill(store: Store, memories: Sequence[Memory]) -> list[Memory]:
    await store.upsert(memories, rows([ray(i % 6) for i in range(len(memories))]))
    return list(memories)


# a key's versions, oldest first: (label, value, hours after T0). The restricted and the
# confidential ones sit between versions lower clearances may read, so each clearance has its
# own history of the key; no two versions a clearance reads have one value (they would fold).
KEY_HISTORY = (
    ("public", "tier bronze", 0),
    ("restricted", "tier gold", 1),
    ("internal", "tier silver", 2),
    ("confidential", "tier platinum", 3),
    ("public", "tier copper", 4),
    ("restricted", "tier diamond", 5),
)
# every instant the answers could differ around: before, at and between the versions, and now
KEY_TIMES = (None, *(T0 + timedelta(minutes=30 * i) for i in range(-1, 13)))


def key_versions(clearance: int) -> list[Memory]:
    """The memories consolidation makes of ``KEY_HISTORY`` as if the versions above
    ``clearance`` had never been written."""
    variants = [
        Variant(
            f"ev-key-{n}",
            "alice",
            "team/support",
            "fact",
            value,
            "c1",
            "tier",
            label,
            {},
            T0 + timedelta(hours=h),
        )
        for n, (label, value, h) in enumerate(KEY_HISTORY)
        if LABELS[label] <= clearance
    ]
    state = SlotState(keyed_slot("team/support", "c1", "tier"), variants)
    return materialize(TENANT, state, ConsolidationConfig()).upserts


def as_seen(m: Memory) -> tuple[Any, ...]:
    """Everything a reader learns of a version's place in the key's history."""
    return (m.id, m.content, m.created_at, m.valid_from, m.valid_to, m.history, m.sensitivity)


def holds(m: Memory, at: datetime | None) -> bool:
    when = at or datetime.now(UTC)
    return (m.valid_from or m.created_at) <= when and (m.valid_to is None or when < m.valid_to)


class StoreConformance:
    persists = True

    @pytest.fixture
    def make(self) -> StoreFactory:
        raise NotImplementedError("each engine's test class overrides the `make` fixture")

    @pytest.fixture
    async def store(self, make: StoreFactory, anyio_backend: str) -> AsyncIterator[Store]:
        s = make()
        await s.open(META)
        yield s
        await s.close()

    # --- lifecycle -------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_implements_the_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)

    @pytest.mark.anyio
    async def test_open_creates_an_empty_store(self, store: Store) -> None:
        assert await store.count() == 0
        assert await store.count(TENANT) == 0
        assert await store.scroll(TENANT) == ([], None)
        assert await store.search(unit(0), flt(), 5) == []
        await store.maintain()  # harmless on an empty store

    @pytest.mark.anyio
    async def test_reopen_finds_the_data(self, store: Store, make: StoreFactory) -> None:
        if not self.persists:
            pytest.skip("engine does not persist across close")
        saved = await fill(store, [mem(i) for i in range(3)])
        await store.close()
        again = make()
        await again.open(META)
        try:
            assert await again.count(TENANT) == 3
            got = await again.get(TENANT, [m.id for m in saved])
            assert sorted(got, key=lambda m: m.id) == sorted(saved, key=lambda m: m.id)
        finally:
            await again.close()

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "other",
        [StoreMeta(embedder="another-model", dim=DIM), StoreMeta(embedder=META.embedder, dim=16)],
        ids=["other-embedder", "other-dim"],
    )
    async def test_reopen_with_another_embedder_is_refused(
        self, store: Store, make: StoreFactory, other: StoreMeta
    ) -> None:
        await fill(store, [mem(0)])
        await store.close()
        wrong = make()
        with pytest.raises(Conflict, match="refusing embedder"):
            await wrong.open(other)
        await wrong.close()
        # a refused open leaves nothing held: the right embedder still opens and sees the data
        right = make()
        await right.open(META)
        try:
            assert await right.count(TENANT) == 1
        finally:
            await right.close()

    @pytest.mark.anyio
    async def test_closed_store_is_unavailable(self, store: Store) -> None:
        await store.close()
        with pytest.raises(Unavailable):
            await store.count()
        await store.close()  # closing twice is fine

    # --- writes ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_upsert_is_idempotent_and_overwrites(self, store: Store) -> None:
        batch = [mem(i) for i in range(3)]
        await fill(store, batch)
        await fill(store, batch)
        assert await store.count(TENANT) == 3
        changed = batch[1].model_copy(update={"content": "rewritten", "agents": ["alice", "bob"]})
        await store.upsert([changed], rows([ray(1)]))
        assert await store.count(TENANT) == 3
        (got,) = await store.get(TENANT, [changed.id])
        assert got.content == "rewritten"
        assert got.agents == ["alice", "bob"]

    @pytest.mark.anyio
    async def test_empty_upsert_is_a_no_op(self, store: Store) -> None:
        await store.upsert([], rows([]))
        assert await store.count() == 0

    @pytest.mark.anyio
    async def test_upsert_refuses_vectors_that_do_not_fit(self, store: Store) -> None:
        with pytest.raises(InvalidInput):
            await store.upsert([mem(0)], np.ones((1, DIM + 1), dtype=np.float32))
        with pytest.raises(InvalidInput):
            await store.upsert([mem(0), mem(1)], rows([ray(0)]))
        with pytest.raises(InvalidInput):
            await store.upsert([mem(0).model_copy(update={"id": "not-a-uuid"})], rows([ray(0)]))
        assert await store.count() == 0

    # --- search ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_search_ranks_the_nearest_first(self, store: Store) -> None:
        batch = [mem(i) for i in range(5)]
        await store.upsert(batch[::-1], rows([ray(i) for i in range(5)][::-1]))
        hits = await store.search(unit(0), flt(), 3)
        assert [h.memory.id for h in hits] == [m.id for m in batch[:3]]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert math.isclose(scores[0], 1.0, abs_tol=1e-4)
        assert math.isclose(scores[1], float(ray(1) @ unit(0)), abs_tol=1e-4)

    @pytest.mark.anyio
    async def test_hits_and_gets_carry_full_provenance(self, store: Store) -> None:
        original = Memory(
            id=point_id(TENANT, "ev-full"),
            tenant=TENANT,
            scope="team/support/t1",
            kind="decision",
            content="refunds over 100 EUR need a second approver",
            subject="refunds",
            key="policy/refund-limit",
            agents=["alice", "bob"],
            source_events=["ev-full", "ev-earlier"],
            created_at=datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
            updated_at=datetime(2025, 3, 2, 8, 0, tzinfo=UTC),
            metadata={"ticket": 4711, "tags": ["billing", "vip"], "nested": {"ok": True, "x": 1.5}},
        )
        await store.upsert([original], rows([unit(3)]))
        (hit,) = await store.search(unit(3), flt(), 5)
        (got,) = await store.get(TENANT, [original.id])
        for found in (hit.memory, got):
            assert found == original
            assert found.created_at.tzinfo is not None
            assert found.created_at.utcoffset() is not None
            assert found.metadata == original.metadata

    @pytest.mark.anyio
    async def test_k_larger_than_the_data_returns_everything(self, store: Store) -> None:
        await fill(store, [mem(i) for i in range(4)])
        assert len(await store.search(unit(0), flt(), 100)) == 4

    @pytest.mark.anyio
    async def test_bad_queries_are_invalid_input(self, store: Store) -> None:
        with pytest.raises(InvalidInput):
            await store.search(unit(0), flt(), 0)
        with pytest.raises(InvalidInput):
            await store.search(np.ones(DIM + 2, dtype=np.float32), flt(), 3)

    # --- isolation and filters -------------------------------------------------------------

    @pytest.mark.anyio
    async def test_tenants_never_see_each_other(self, store: Store) -> None:
        mine = await fill(store, [mem(i, tenant="a") for i in range(3)])
        theirs = await fill(store, [mem(i, tenant="b") for i in range(2)])
        their_ids = [m.id for m in theirs]
        assert await ids_of(store, unit(0), flt(tenant="a")) == {m.id for m in mine}
        assert await ids_of(store, unit(0), flt(tenant="b")) == set(their_ids)
        assert await store.get("a", their_ids) == []
        assert await store.delete("a", their_ids) == 0
        assert (await store.count("a"), await store.count("b"), await store.count()) == (3, 2, 5)
        page, _ = await store.scroll("a", limit=100)
        assert {m.id for m in page} == {m.id for m in mine}
        assert await ids_of(store, unit(0), flt(tenant="nobody")) == set()

    @pytest.mark.anyio
    async def test_scope_filter_exact_vs_subtree(self, store: Store) -> None:
        scopes = ["team/support", "team/support/t1", "team/supportive", "team/sales", "other"]
        batch = await fill(store, [mem(i, scope=s) for i, s in enumerate(scopes)])
        by_scope = {m.scope: m.id for m in batch}

        async def seen(scope_list: list[str] | None, sub: bool = True) -> set[str]:
            f = flt(scopes=scope_list, include_subscopes=sub)
            return {s for s, i in by_scope.items() if i in await ids_of(store, unit(0), f)}

        assert await seen(["team/support"], sub=False) == {"team/support"}
        assert await seen(["team/support"]) == {"team/support", "team/support/t1"}
        assert await seen(["team"]) == set(scopes) - {"other"}
        assert await seen(["team"], sub=False) == set()
        assert await seen(["team/sales", "other"], sub=False) == {"team/sales", "other"}
        assert await seen(None) == set(scopes)  # None: the whole tenant
        assert await seen([]) == set()  # an empty grant sees nothing, never everything

    @pytest.mark.anyio
    async def test_read_grant_includes_excludes_and_caps_sensitivity(self, store: Store) -> None:
        """The permission gate's grant is enforced by the store: roots, holes, exact, clearance."""
        layout = [
            ("team/support", 0),
            ("team/support/secret", 0),
            ("team/support/t1", 2),
            ("team/sales", 0),
            ("org", 1),
            ("agent/bob", 0),
        ]
        batch = await fill(
            store,
            [
                mem(i, scope=s).model_copy(update={"sensitivity": lvl})
                for i, (s, lvl) in enumerate(layout)
            ],
        )
        by_scope = {m.scope: m.id for m in batch}

        async def seen(grant: ReadGrant, scopes: list[str] | None = None) -> set[str]:
            f = flt(grant=grant, scopes=scopes)
            return {s for s, i in by_scope.items() if i in await ids_of(store, unit(0), f)}

        g = ReadGrant(include=["team/support"], exact=["org"], exclude=["team/support/secret"])
        assert await seen(g) == {"team/support", "team/support/t1", "org"}
        capped = g.model_copy(update={"clearance": 1})
        assert await seen(capped) == {"team/support", "org"}  # t1 is confidential (2)
        assert await seen(capped.model_copy(update={"clearance": 0})) == {"team/support"}
        hole = ReadGrant(include=["team"], exclude_exact=["team/sales"])
        assert await seen(hole) == {"team/support", "team/support/secret", "team/support/t1"}
        # a caller's own scopes only narrow what the grant allows
        assert await seen(g, scopes=["team"]) == {"team/support", "team/support/t1"}
        assert await seen(g, scopes=["agent/bob"]) == set()
        assert await seen(ReadGrant()) == set()  # an empty grant sees nothing
        assert await seen(ReadGrant(all_scopes=True, clearance=0)) == {
            "team/support",
            "team/support/secret",
            "team/sales",
            "agent/bob",
        }
        for hit in await store.search(unit(0), flt(), 50):
            assert hit.memory.sensitivity == dict(layout)[hit.memory.scope]  # round-trips

    @pytest.mark.anyio
    async def test_kind_subject_and_agent_filters_narrow(self, store: Store) -> None:
        batch = await fill(
            store,
            [
                mem(0, kind="fact", subject="refunds", agents=["alice"]),
                mem(1, kind="decision", subject="refunds", agents=["bob", "carol"]),
                mem(2, kind="fact", subject="shipping", agents=["carol"]),
                mem(3, kind="note", agents=["dave"]),
            ],
        )
        ids = [m.id for m in batch]
        assert await ids_of(store, unit(0), flt(kinds=["fact"])) == {ids[0], ids[2]}
        assert await ids_of(store, unit(0), flt(kinds=["fact", "note"])) == {ids[0], ids[2], ids[3]}
        assert await ids_of(store, unit(0), flt(subjects=["refunds"])) == {ids[0], ids[1]}
        assert await ids_of(store, unit(0), flt(agents=["carol"])) == {ids[1], ids[2]}
        narrowed = flt(kinds=["fact"], subjects=["refunds"], agents=["alice", "bob"])
        assert await ids_of(store, unit(0), narrowed) == {ids[0]}

    @pytest.mark.anyio
    async def test_since_and_until_bound_created_at_inclusively(self, store: Store) -> None:
        batch = await fill(store, [mem(i) for i in range(5)])  # created at T0 + i hours
        ids = [m.id for m in batch]
        hour = timedelta(hours=1)
        assert await ids_of(store, unit(0), flt(since=T0 + 2 * hour)) == set(ids[2:])
        assert await ids_of(store, unit(0), flt(until=T0 + hour)) == set(ids[:2])
        window = flt(since=T0 + hour, until=T0 + 3 * hour)
        assert await ids_of(store, unit(0), window) == set(ids[1:4])
        # the bound is an instant, whatever zone it is written in
        cet = timezone(timedelta(hours=1))
        assert await ids_of(store, unit(0), flt(since=(T0 + 4 * hour).astimezone(cet))) == {ids[4]}

    # --- get / delete / scroll -------------------------------------------------------------

    @pytest.mark.anyio
    async def test_delete_counts_what_existed(self, store: Store) -> None:
        batch = await fill(store, [mem(i) for i in range(4)])
        missing = point_id(TENANT, "never-written")
        assert await store.delete(TENANT, [batch[0].id, batch[1].id, batch[1].id, missing]) == 2
        assert await store.delete(TENANT, [batch[0].id]) == 0
        assert await store.delete(TENANT, []) == 0
        assert await store.count(TENANT) == 2
        assert await store.get(TENANT, [batch[0].id, batch[1].id]) == []
        assert {m.id for m in await store.get(TENANT, [m.id for m in batch])} == {
            batch[2].id,
            batch[3].id,
        }

    @pytest.mark.anyio
    async def test_malformed_ids_are_invalid_input(self, store: Store) -> None:
        await fill(store, [mem(0)])
        with pytest.raises(InvalidInput):
            await store.get(TENANT, ["not-a-uuid"])
        with pytest.raises(InvalidInput):
            await store.delete(TENANT, [mem(0).id, "42; drop"])
        with pytest.raises(InvalidInput):
            await store.scroll(TENANT, offset="nope")
        assert await store.count(TENANT) == 1
        assert await store.get(TENANT, []) == []

    @pytest.mark.anyio
    async def test_scroll_pages_through_everything_exactly_once(self, store: Store) -> None:
        batch = await fill(store, [mem(i) for i in range(23)])
        await fill(store, [mem(i, tenant="other") for i in range(4)])
        seen: list[str] = []
        offset: str | None = None
        pages = 0
        while True:
            page, offset = await store.scroll(TENANT, limit=5, offset=offset)
            assert len(page) <= 5
            seen += [m.id for m in page]
            pages += 1
            if offset is None:
                break
            assert pages < 20, "scroll does not terminate"
        assert sorted(seen) == sorted(m.id for m in batch)
        assert len(seen) == len(set(seen)) == 23
        assert seen == sorted(seen)  # id order, as the protocol promises
        with pytest.raises(InvalidInput):
            await store.scroll(TENANT, limit=0)

    @pytest.mark.anyio
    async def test_browse_lists_newest_first_within_the_filter(self, store: Store) -> None:
        batch = await fill(store, [mem(i, kind="fact" if i % 2 else "note") for i in range(9)])
        await fill(store, [mem(i, tenant="other") for i in range(3)])
        got = await store.browse(flt(), 50)
        assert [m.id for m in got] == [m.id for m in reversed(batch)]
        assert got[0] == batch[-1]  # whole memories, provenance included
        assert [m.id for m in await store.browse(flt(), 3)] == [m.id for m in batch[:5:-1]]
        facts = await store.browse(flt(kinds=["fact"], until=T0 + timedelta(hours=5)), 50)
        assert [m.id for m in facts] == [batch[5].id, batch[3].id, batch[1].id]
        began = await store.browse(flt(began_by=T0 + timedelta(hours=2)), 50)
        assert [m.id for m in began] == [batch[2].id, batch[1].id, batch[0].id]
        nothing = ReadGrant(all_scopes=False)
        assert await store.browse(flt(grant=nothing), 50) == []
        with pytest.raises(InvalidInput):
            await store.browse(flt(), 0)

    @pytest.mark.anyio
    async def test_browse_versions_gives_a_keys_whole_history_per_clearance(
        self, store: Store
    ) -> None:
        written = key_versions(3)
        await store.upsert(written, rows([unit(0)] * len(written)))
        slot = keyed_slot("team/support", "c1", "tier")
        for clearance in range(4):
            grant = ReadGrant(all_scopes=True, clearance=clearance)
            want = sorted(as_seen(m) for m in key_versions(clearance))
            for narrowing in ({"slots": [slot]}, {"subjects": ["c1"], "keys": ["tier"]}):
                got = await store.browse(flt(grant=grant, versions=True, **narrowing), 50)
                assert sorted(as_seen(m) for m in got) == want, (clearance, narrowing)
                began = [m.valid_from or m.created_at for m in got]
                assert began == sorted(began, reverse=True)
            current = await store.browse(flt(grant=grant, slots=[slot]), 50)
            assert [m.history for m in current] == [False]
        assert await store.browse(flt(versions=True, keys=["other"]), 50) == []

    @pytest.mark.anyio
    async def test_numbers_narrow_to_texts_with_exactly_those_numbers(self, store: Store) -> None:
        """The near-duplicate search's narrowing: the same numbers, in order, or none."""
        texts = ["floor 3 printer", "floor 3, room 12", "floor 4 printer", "no digits", "3 on 3"]
        batch = await fill(store, [mem(i, content=t) for i, t in enumerate(texts)])
        for i, t in enumerate(texts):
            assert await ids_of(store, unit(0), flt(numbers=numbers_key(t))) == {batch[i].id}

    @pytest.mark.anyio
    async def test_exclude_slots_leaves_those_slots_out(self, store: Store) -> None:
        """The near-duplicate search's own slot is left out by the filter; memories of other
        slots, or of none, stay found."""
        slotted = [mem(i).model_copy(update={"slot": f"slot-{i}"}) for i in range(3)]
        batch = await fill(store, [*slotted, mem(3)])
        found = await ids_of(store, unit(0), flt(exclude_slots=["slot-0", "slot-2"]))
        assert found == {batch[1].id, batch[3].id}

    # --- hybrid recall (dense + lexical, fused in the engine) --------------------------------

    @pytest.mark.anyio
    async def test_hybrid_finds_a_rare_term_that_dense_misses(self, store: Store) -> None:
        near = [mem(i, content=f"routine note number {i} about the weekly sync") for i in range(5)]
        rare = mem(9, content="the zanzibar gateway rejected card payments overnight")
        await store.upsert([*near, rare], rows([*(ray(i) for i in range(5)), unit(5)]))
        dense = await store.search(unit(0), flt(), 3)
        assert rare.id not in {h.memory.id for h in dense}  # its vector points elsewhere
        # every query term is known to the store: a term no memory holds would lower every
        # score alike (``membus.store.relevance``), and leave near-identical vectors ahead
        hybrid = await store.search(unit(0), flt(), 3, text="what did Zanzibar reject?")
        assert hybrid[0].memory.id == rare.id
        assert hybrid[0].memory == rare  # full provenance through the fused path too
        assert len(hybrid) == 3
        assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)

    @pytest.mark.anyio
    async def test_hybrid_never_returns_a_lexical_match_outside_the_grant(
        self, store: Store
    ) -> None:
        """The filter carries the read grant: the lexical branch honours it like the dense one."""
        word = "quetzalcoatl"
        visible = mem(0, scope="team/support", content="an ordinary support note")
        hidden = [
            mem(1, scope="team/secret", content=f"{word} {word} launch codes"),
            mem(2, scope="team/support/vault", content=f"{word} private"),
            mem(3, scope="team/support", content=f"{word} confidential").model_copy(
                update={"sensitivity": 3}
            ),
            mem(4, tenant="other", scope="team/support", content=f"{word} other tenant"),
            mem(5, scope="team/support", kind="decision", content=f"{word} wrong kind"),
        ]
        # every hidden memory is also the dense branch's best match
        await store.upsert([visible, *hidden], rows([unit(7), *(unit(0) for _ in hidden)]))
        grant = ReadGrant(include=["team/support"], exclude=["team/support/vault"], clearance=2)
        f = flt(grant=grant, kinds=["fact"])
        for text in (word, f"tell me about {word}", None):
            hits = await store.search(unit(0), f, 10, text=text)
            assert [h.memory.id for h in hits] == [visible.id], text

    # --- the rerank in the engine (membus.store.formula) ------------------------------------------

    @pytest.mark.anyio
    async def test_boosted_search_ranks_as_the_python_rerank(self, store: Store) -> None:
        """Recall hands its rerank to the engine: over the same candidates, the engine's formula
        must give the order and the scores ``ranking.rerank`` gives, whatever the metadata holds
        (numbers out of range, strings, booleans, nothing) and for future timestamps too."""
        cfg = RankingConfig(recency_weight=0.3, importance_weight=0.4, recency_half_life_s=86400)
        odd: list[Any] = [None, 1.0, 0.0, "high", True, 7, -1, 0.25, float("inf"), [0.5]]
        now = T0 + timedelta(days=2)
        batch = [
            mem(
                i,
                content=f"release train note {i}",
                at=T0 + timedelta(hours=5 * i),
                metadata=None if odd[i % len(odd)] is None else {"importance": odd[i % len(odd)]},
            )
            for i in range(14)
        ]
        await store.upsert(batch, rows([ray(i) for i in range(len(batch))]))
        for text in (None, "release train note 3"):
            pool = await store.search(unit(0), flt(), ranking.candidates(4, cfg), text=text)
            expected = ranking.rerank(pool, 4, cfg, now)
            boost = ranking.boost(4, cfg, now)
            got = await store.search(unit(0), flt(), 4, text=text, boost=boost)
            assert [h.memory.id for h in got] == [h.memory.id for h in expected], text
            assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-5)
            assert got[0].memory == expected[0].memory  # full memories, as without a boost

    @pytest.mark.anyio
    async def test_no_text_or_no_terms_ranks_by_the_dense_vector_alone(self, store: Store) -> None:
        batch = [mem(i, content=f"alpha {i}") for i in range(5)]
        lexical = mem(9, content="beta gamma")
        await store.upsert([*batch, lexical], rows([*(ray(i) for i in range(5)), unit(5)]))
        expected = [m.id for m in batch[:3]]
        for text in (None, "", "the of and is"):  # stop words only leave no terms to match
            hits = await store.search(unit(0), flt(), 3, text=text)
            assert [h.memory.id for h in hits] == expected, text
            assert math.isclose(hits[0].score, 1.0, abs_tol=1e-4)  # cosine, not a fused score

    @pytest.mark.anyio
    async def test_a_dense_only_store_ignores_text(self, make: StoreFactory) -> None:
        dense_only = META.model_copy(update={"sparse": None})
        store = make()
        await store.open(dense_only)
        try:
            rare = mem(9, content="zanzibar")
            await store.upsert([mem(0), rare], rows([unit(0), unit(5)]))
            hits = await store.search(unit(0), flt(), 1, text="zanzibar")
            assert [h.memory.id for h in hits] == [mem(0).id]
        finally:
            await store.close()

    @pytest.mark.anyio
    async def test_reopen_with_another_lexical_setting_is_refused(self, make: StoreFactory) -> None:
        if not self.persists:
            pytest.skip("engine does not persist across close")
        store = make()
        await store.open(META.model_copy(update={"sparse": None}))
        await fill(store, [mem(0)])
        await store.close()
        hybrid = make()
        with pytest.raises(Conflict, match="lexical vectors"):
            await hybrid.open(META)
        await hybrid.close()

    @pytest.mark.anyio
    async def test_lexical_statistics_come_from_what_the_caller_may_read(
        self, store: Store
    ) -> None:
        """BM25's IDF is taken over the caller's corpus: memories of another tenant or outside
        the grant must not move a visible memory's rank or score (a side channel on what they
        say), while a new memory the caller may read does at once (no stale statistics)."""
        # the dense branch ranks the fillers first, then a, b, c (no ties anywhere, so the ranks
        # are exact): between a, b and c only the lexical branch makes a real difference
        fillers = [mem(i, content=f"filler {i}") for i in range(20)]
        texts = ["alpha report", "omega report", "omega summary"]
        a, b, c = (mem(20 + i, content=t) for i, t in enumerate(texts))
        late = [unit(7) * 4 + unit(0) * (0.1 - 0.01 * j) for j in range(3)]
        vectors = [*(ray(i) for i in range(20)), *(v / np.linalg.norm(v) for v in late)]
        await store.upsert([*fillers, a, b, c], rows(vectors))
        f, query = flt(grant=ReadGrant(include=["team/support"])), "alpha omega"
        before = await store.search(unit(0), f, 3, text=query)
        assert before[0].memory.id == a.id  # "alpha" is the rarer term in the caller's corpus
        hidden = [
            *(mem(100 + i, tenant="other", content="alpha alpha") for i in range(30)),
            *(mem(200 + i, scope="team/secret", content="alpha alpha") for i in range(30)),
        ]
        await store.upsert(hidden, rows([unit(7) for _ in hidden]))
        after = await store.search(unit(0), f, 3, text=query)
        assert [h.memory.id for h in after] == [h.memory.id for h in before]
        # equal up to float rounding: Edge scores the corpus IDF as a store-wide IDF times a
        # learnt ratio (membus.store.idf), exact to the last few bits only
        assert [h.score for h in after] == pytest.approx([h.score for h in before], rel=1e-5)
        readable = [mem(300 + i, content=f"alpha note {i}") for i in range(30)]
        await store.upsert(readable, rows([unit(7) for _ in readable]))
        now = await store.search(unit(0), f, 3, text=query)
        assert now[0].memory.id in {b.id, c.id}  # now "omega" is the rarer one

    @pytest.mark.anyio
    async def test_hidden_lexical_matches_do_not_crowd_out_visible_ones(self, store: Store) -> None:
        """Each branch is filtered before it is cut to its prefetch limit: many strong matches
        outside the grant must not fill the lexical branch and push the visible match out."""
        word = "ouroboros"
        filler = [mem(i, content=f"filler {i}") for i in range(60)]  # dense favourites
        target = mem(100, content=f"a long note that mentions {word} once among many words")
        hidden = [mem(200 + i, scope="team/secret", content=f"{word} {word}") for i in range(60)]
        batch = [*filler, target, *hidden]
        vectors = [*(ray(1) for _ in filler), unit(5), *(unit(5) for _ in hidden)]
        await store.upsert(batch, rows(vectors))
        f = flt(grant=ReadGrant(include=["team/support"]))
        hits = await store.search(unit(0), f, 5, text=word)
        assert target.id in {h.memory.id for h in hits}
        assert all(h.memory.scope == "team/support" for h in hits)

    @pytest.mark.anyio
    async def test_hidden_exact_copies_of_the_query_never_surface_on_any_path(
        self, store: Store
    ) -> None:
        """The attack: flood a scope the reader cannot see with exact copies of the query, its
        vector and its words, far more than any branch keeps, then recall from a scope it may
        read. Every request the engine builds (dense alone, hybrid, either with the rerank on
        top) must filter each branch before cutting it to its limit: only the readable memories
        come back, all of them, however weak. Edge gets the filter once, on the request, and
        merges it into every branch; this pins that behaviour."""
        hidden = [mem(200 + i, scope="team/secret", content="basilisk ledger") for i in range(300)]
        readable = [mem(i, content=f"basilisk note {i}") for i in range(3)]
        vectors = [*(unit(0) for _ in hidden), *(ray(2 + i) for i in range(3))]
        await store.upsert([*hidden, *readable], rows(vectors))
        f = flt(grant=ReadGrant(include=["team/support"]))
        cfg = RankingConfig(recency_weight=0.3, importance_weight=0.2)
        for text in (None, "basilisk ledger"):
            for boost in (None, ranking.boost(3, cfg, T0)):
                hits = await store.search(unit(0), f, 3, text=text, boost=boost)
                assert {h.memory.id for h in hits} == {m.id for m in readable}, (text, boost)

    # --- a key's history per clearance (issue 15, item 11) ------------------------------------

    @pytest.mark.anyio
    async def test_each_clearance_sees_a_keys_history_as_if_hidden_versions_never_existed(
        self, store: Store
    ) -> None:
        """A reader below a version's label must learn nothing of it: not in a plain recall (the
        version it may read stays current, not superseded by one it cannot see), not through
        ``as_of`` at any instant (no version of its view ends when a hidden one came), not in
        ``valid_to`` or ``history``. Every clearance gets exactly what the store would answer
        had the versions above it never been written; full clearance gets the real history."""
        written = key_versions(3)
        await store.upsert(written, rows([unit(0)] * len(written)))
        for clearance in range(4):
            grant = ReadGrant(all_scopes=True, clearance=clearance)
            view = key_versions(clearance)
            for at in KEY_TIMES:
                want = sorted(as_seen(m) for m in view if holds(m, at))
                for text in (None, "tier"):  # dense, and hybrid where the engine has it
                    hits = await store.search(unit(0), flt(grant=grant, as_of=at), 50, text=text)
                    got = sorted(as_seen(h.memory) for h in hits)
                    assert got == want, (clearance, at, text)
        # the attack, spelled out: the public reader's current value is the one it may read,
        # open-ended, although two newer versions exist above its clearance
        [now] = await store.search(unit(0), flt(grant=ReadGrant(all_scopes=True, clearance=0)), 50)
        assert (now.memory.content, now.memory.valid_to, now.memory.history) == (
            "tier copper",
            None,
            False,
        )

    @pytest.mark.anyio
    async def test_points_written_before_per_clearance_validity_stay_found(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A store filled by a membus without per-clearance validity holds points with only
        ``valid_to_ts``: a reader below full clearance must still find the current ones and the
        ones an ``as_of`` asks for, and never get a superseded one back as current."""
        old = key_versions(3)
        with monkeypatch.context() as patch:  # the old code wrote no per-clearance fields
            patch.setattr(Memory, "_levels_payload", lambda self: {})
            await store.upsert(old, rows([unit(0)] * len(old)))
        for clearance in range(4):
            grant = ReadGrant(all_scopes=True, clearance=clearance)
            for at in KEY_TIMES:
                hits = await store.search(unit(0), flt(grant=grant, as_of=at), 50)
                got = sorted(as_seen(h.memory) for h in hits)
                # what the old code answered: the full history, capped by the label
                want = sorted(
                    as_seen(m) for m in old if holds(m, at) and m.sensitivity <= clearance
                )
                assert got == want, (clearance, at)
