"""Working memory: recall(working=True) sees what was just published, before a writer committed
it, through the same permission door as consolidated memories. Real redis-server, Qdrant Edge;
most tests run without writers so the events stay uncommitted as long as the test needs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ulid import ULID

import membus
from membus.access.gate import Gate, ReadGrant
from membus.access.policy import CasbinGate
from membus.access.signing import signed_fields
from membus.access.watch import MemorySource
from membus.bus.api import Bus
from membus.bus.working import admits, calibrate, merge
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.envelope import Event
from membus.core.keys import TenantKeys
from membus.errors import PermissionDenied
from membus.store.filters import RecallFilter
from membus.store.port import Hit, Memory, point_id
from membus.stream.replay import ReplayGuard
from membus.stream.tombstones import tombstones_key

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
POLICY = """\
p, *, acme, team/*, publish|recall, allow
g2, *, internal, acme
g2, carol, restricted, acme
"""


def config(url: str, *, writers: int = 0, **ranking: Any) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=writers,
        # every hit, however weak, unless a test says otherwise: relevance and min_score are
        # tests/test_relevance.py's subject
        ranking=RankingConfig(**{"min_score": 0, **ranking}),
    )


def event(scope: str = "team/a", **fields: Any) -> Event:
    base: dict[str, Any] = {"tenant": "acme", "agent": "alice", "content": "x", "created_at": T0}
    return Event.build(**{**base, "scope": scope, **fields})


def contents(hits: Sequence[Hit]) -> set[str]:
    return {h.memory.content for h in hits}


# -- the filter, in Python ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "ev", "flt", "expected"),
    [
        (ReadGrant(all_scopes=True), event(), {}, True),
        (ReadGrant(include=["team"]), event("team/a/b"), {}, True),
        (ReadGrant(include=["team/b"]), event("team/a"), {}, False),
        (ReadGrant(exact=["team/a"]), event("team/a/b"), {}, False),
        (ReadGrant(include=["team"], exclude=["team/a"]), event("team/a/b"), {}, False),
        (ReadGrant(include=["team"], exclude_exact=["team/a"]), event("team/a"), {}, False),
        # sensitivity: clearance internal reads internal, never confidential
        (ReadGrant(all_scopes=True, clearance=1), event(label="internal"), {}, True),
        (ReadGrant(all_scopes=True, clearance=1), event(label="confidential"), {}, False),
        (ReadGrant(), event(), {}, False),  # nothing granted
        # the caller's own filters narrow
        (ReadGrant(all_scopes=True), event("team/a"), {"scopes": ["team/b"]}, False),
        (ReadGrant(all_scopes=True), event("team/a/b"), {"scopes": ["team/a"]}, True),
        (
            ReadGrant(all_scopes=True),
            event("team/a/b"),
            {"scopes": ["team/a"], "include_subscopes": False},
            False,
        ),
        (ReadGrant(all_scopes=True), event(kind="fact"), {"kinds": ["observation"]}, False),
        (ReadGrant(all_scopes=True), event(subject="s1"), {"subjects": ["s1"]}, True),
        (ReadGrant(all_scopes=True), event(), {"subjects": ["s1"]}, False),
        (ReadGrant(all_scopes=True), event(), {"agents": ["bob"]}, False),
        (ReadGrant(all_scopes=True), event(), {"since": T0 + timedelta(seconds=1)}, False),
        (ReadGrant(all_scopes=True), event(), {"until": T0 - timedelta(seconds=1)}, False),
        (ReadGrant(all_scopes=True), event(), {"as_of": T0 - timedelta(seconds=1)}, False),
        (ReadGrant(all_scopes=True), event(), {"as_of": T0}, True),
        (ReadGrant(all_scopes=True), event(tenant="other"), {}, False),  # forged tenant
        (ReadGrant(all_scopes=True), event(kind="retraction"), {}, False),
    ],
)
def test_admits_mirrors_the_store_filter(
    grant: ReadGrant, ev: Event, flt: dict[str, Any], expected: bool
) -> None:
    assert admits(ev, RecallFilter(tenant="acme", grant=grant, **flt)) is expected


def test_merge_drops_working_hits_already_consolidated() -> None:
    e1, e2, e3 = event(content="one"), event(content="two"), event(content="three")
    w = [Hit(memory=Memory.from_event(e), score=0.5, working=True) for e in (e1, e2, e3)]
    by_id = Hit(memory=Memory.from_event(e1), score=0.4)
    # a consolidated memory under another id (a ledger slot) that carries e2 as a source
    slot = Memory.from_event(e2).model_copy(update={"id": point_id("acme", "slot")})
    merged = merge([by_id, Hit(memory=slot, score=0.3)], w)
    assert [(h.memory.content, h.working) for h in merged] == [
        ("one", False),
        ("two", False),
        ("three", True),
    ]


def test_calibrate_maps_cosine_onto_the_store_scale() -> None:
    w = [
        Hit(memory=Memory.from_event(event(content=f"w{i}")), score=c, working=True)
        for i, c in enumerate((0.9, 0.5, 0.3, 0.1, -0.2))
    ]
    # a store that scores by cosine: every cosine maps to itself, a negative one to 0
    dense = calibrate([0.8, 0.6, 0.2], [0.8, 0.6, 0.2], w)
    assert [h.score for h in dense] == pytest.approx([0.9, 0.5, 0.3, 0.1, 0.0])
    # an evidence scale (membus.store.relevance): placed among stored hits of like cosine,
    # order kept, never above 1
    scored = calibrate([0.9, 0.7, 0.5], [0.8, 0.6, 0.2], w)
    assert [h.score for h in scored] == pytest.approx(
        [min(1.0, 0.9 * 0.9 / 0.8), 0.5 + 0.2 * 0.75, 0.5 + 0.2 * 0.25, 0.5 / 2, 0.0]
    )
    assert 0.7 > scored[1].score > 0.5
    assert calibrate([0.95], [0.5], w[:1])[0].score == 1.0  # extended beyond the end: clipped
    # the envelope is monotone: a stored hit that ranks high with a low cosine lifts the rest
    assert calibrate([0.6, 0.5], [0.2, 0.8], w[:1])[0].score == pytest.approx(0.6 * 0.9 / 0.8)
    # nothing to calibrate on: the cosine, clipped to [0, 1] (what a store without lexical
    # evidence scores)
    assert [h.score for h in calibrate([], [], w)] == pytest.approx([0.9, 0.5, 0.3, 0.1, 0.0])


# -- through the bus ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_fresh_events_are_recallable_before_any_writer_ran(
    redis_url: str, tmp_path: Path
) -> None:
    """Without writers nothing is consolidated: a plain recall finds nothing, a working recall
    finds the event at once, flagged, scored by cosine, under the id its memory will get, and
    the audit trail names the event. Once a writer committed it, the same recall returns the
    consolidated memory, once."""
    text = "the staging database was restarted at 14:00"
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        receipt = await alice.publish(text, scope="team/ops", metadata={"importance": 1.0})
        assert await alice.recall("staging database restart") == []
        [h] = await alice.recall("staging database restart", working=True)
        assert (h.working, h.memory.content, h.memory.agents) == (True, text, ["alice"])
        assert h.memory.id == point_id("acme", receipt.event_id)
        q, v = bus.embedder.embed(["staging database restart"]), bus.embedder.embed([text])
        cosine = float(np.dot(q[0], v[0]))
        # fresh and important: the rerank factor is ~1
        assert h.score == pytest.approx(cosine, rel=1e-3)
        # recall statistics are for memories, not for events still in flight
        assert await alice.access([h.memory.id]) == {}
        await bus.audit.flush()
        records = await bus.audit.query("acme", action="recall")
        assert [r.event_ids for r in records if r.result_count] == [[receipt.event_id]]

    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        await bus.drain(10)
        hits = await bus.agent("alice", "acme").recall("staging database restart", working=True)
        assert [(x.memory.content, x.working) for x in hits] == [(text, False)]


@pytest.mark.slow
async def test_working_hits_compete_with_stored_ones_on_the_stores_scale(
    redis_url: str, tmp_path: Path
) -> None:
    """The store's scores may be fused ranks, not cosines: a working hit that matches the query
    best still comes first, and one that matches worse comes after the stored hit."""
    stored = "the parking garage closes at 8pm"
    fresh = "the bike shed is locked on sundays"
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        await bus.agent("alice", "acme").publish(stored, "team/site")
        await bus.drain(10)
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish(fresh, "team/site")
        hits = await alice.recall("is the bike shed locked on sundays", k=2, working=True)
        assert [(h.memory.content, h.working) for h in hits] == [(fresh, True), (stored, False)]
        hits = await alice.recall("when does the parking garage close", k=2, working=True)
        assert [(h.memory.content, h.working) for h in hits] == [(stored, False), (fresh, True)]


async def test_another_agents_private_working_memory_never_shows(
    redis_url: str, tmp_path: Path
) -> None:
    """The permission door: a working recall applies the caller's read grant to every stream
    entry, scope and sensitivity alike, exactly as the store filter does for memories."""
    gate: Gate = CasbinGate(MemorySource(POLICY))
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        alice, bob = bus.agent("alice", "acme"), bus.agent("bob", "acme")
        carol = bus.agent("carol", "acme")
        await alice.publish("alice private: the vendor contract renews in march", "agent/alice/n")
        await alice.publish("team: the vendor contract renews soon", "team/legal")
        await alice.publish(
            "restricted: the vendor contract price", "team/legal", label="restricted"
        )
        await bob.publish("bob private: vendor contract questions", "agent/bob/todo")
        q = "vendor contract renews"
        assert contents(await bob.recall(q, k=10, working=True)) == {
            "team: the vendor contract renews soon",
            "bob private: vendor contract questions",
        }
        assert contents(await alice.recall(q, k=10, working=True)) == {
            "alice private: the vendor contract renews in march",
            "team: the vendor contract renews soon",
        }
        assert contents(await carol.recall(q, k=10, working=True)) == {
            "team: the vendor contract renews soon",
            "restricted: the vendor contract price",
        }
        # asking for the private scope outright is refused, working or not
        with pytest.raises(PermissionDenied):
            await bob.recall(q, scopes=["agent/alice"], working=True)
        # and a narrower request only narrows
        assert contents(await carol.recall(q, scopes=["agent/carol"], working=True)) == set()


async def test_only_uncommitted_entries_are_read(redis_url: str, tmp_path: Path) -> None:
    """Acknowledged entries are the store's business; delivered-but-pending and undelivered
    ones are working memory."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        for word in ("acked", "pending", "undelivered"):
            await alice.publish(f"deploy note {word}", "team/ops")
        stream, group = TenantKeys("acme").events, bus.config.worker.group
        await bus.redis.xgroup_create(stream, group, id="0")
        got: Any = await bus.redis.xreadgroup(group, "w1", {stream: ">"}, count=2)
        [(first, _), _] = got[0][1]
        await bus.redis.xack(stream, group, first)
        hits = await alice.recall("deploy note", k=10, working=True)
        assert contents(hits) == {"deploy note pending", "deploy note undelivered"}


async def test_erased_and_unsigned_entries_are_not_shown(redis_url: str, tmp_path: Path) -> None:
    """A tombstoned event (by event id or by its memory's id) and entries a writer would park
    (unsigned, signed with another agent's key) are never working memory."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        gone = await alice.publish("budget note erased by event id", "team/fin")
        gone2 = await alice.publish("budget note erased by memory id", "team/fin")
        await alice.publish("budget note kept", "team/fin")
        stamp = datetime.now(UTC).isoformat()
        await bus.redis.hset(
            tombstones_key("acme"),
            mapping={gone.event_id: stamp, point_id("acme", gone2.event_id): stamp},
        )
        stream = TenantKeys("acme").events
        forged = Event.build(
            tenant="acme", agent="alice", scope="team/fin", content="budget note forged, unsigned"
        )
        await bus.redis.xadd(stream, {"e": forged.to_json()})
        mallory = await bus.keys.current("acme", "mallory")
        spoof = Event.build(
            tenant="acme",
            agent="alice",
            scope="team/fin",
            content="budget note signed by mallory as alice",
        )
        raw = spoof.to_json()
        sig = mallory.sign_bytes(raw)
        await bus.redis.xadd(stream, {"e": raw, "kid": mallory.kid, "sig": sig})
        await bus.redis.xadd(stream, {"e": "{not json"})
        hits = await alice.recall("budget note", k=10, working=True)
        assert contents(hits) == {"budget note kept"}


async def test_how_far_back_it_reads_is_bounded(redis_url: str, tmp_path: Path) -> None:
    """``working_tail`` newest entries at most, none older than ``working_max_age_s`` (an entry
    written with an old stream id stands in for one waiting since long ago)."""
    async with membus.open(tmp_path, config(redis_url, working_tail=2)) as bus:
        alice = bus.agent("alice", "acme")
        key = await bus.keys.current("acme", "alice")
        old = Event.build(tenant="acme", agent="alice", scope="team/x", content="sprint note old")
        fields = signed_fields(old, key)
        await bus.redis.xadd(TenantKeys("acme").events, fields, id="1000-0")
        for i in range(3):
            await alice.publish(f"sprint note {i}", "team/x")
        hits = await alice.recall("sprint note", k=10, working=True)
        assert contents(hits) == {"sprint note 1", "sprint note 2"}
        bus.config = config(redis_url, working_tail=100)
        hits = await alice.recall("sprint note", k=10, working=True)
        assert contents(hits) == {"sprint note 0", "sprint note 1", "sprint note 2"}


async def test_working_hits_obey_filters_and_k(redis_url: str, tmp_path: Path) -> None:
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice, bob = bus.agent("alice", "acme"), bus.agent("bob", "acme")
        await alice.publish("lab result: sample A positive", "team/lab", kind="result")
        await bob.publish("lab result: sample B negative", "team/lab", kind="result")
        await bob.publish("lab schedule: samples on monday", "team/lab")
        q = "lab sample result"
        assert len(await alice.recall(q, k=2, working=True)) == 2
        by_kind = await alice.recall(q, k=10, working=True, kinds=["result"])
        assert contents(by_kind) == {
            "lab result: sample A positive",
            "lab result: sample B negative",
        }
        assert contents(await alice.recall(q, k=10, working=True, agents=["alice"])) == {
            "lab result: sample A positive"
        }
        past = datetime.now(UTC) - timedelta(hours=1)
        assert await alice.recall(q, k=10, working=True, as_of=past) == []


async def test_stream_without_events_or_group(redis_url: str, tmp_path: Path) -> None:
    async with membus.open(tmp_path, config(redis_url)) as bus:
        assert await bus.agent("alice", "nobody").recall("anything", working=True) == []
        assert isinstance(bus, Bus)


@pytest.mark.slow
async def test_a_pending_retraction_hides_what_it_withdraws(redis_url: str, tmp_path: Path) -> None:
    """A retraction in the tail is no hit of its own, and what it withdraws is hidden before a
    writer applies it: the stored memory and the uncommitted events of its slot observed up to
    its cut-off. What is observed after it, and other slots, still show; a plain recall shows
    the store as the writers left it; once writers ran, the store agrees with what was shown."""
    home, search = {"subject": "wiki", "key": "home"}, {"subject": "wiki", "key": "search"}
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish("the wiki lives in confluence", "team/docs", **home)
        await alice.publish("the wiki search uses elastic", "team/docs", **search)
        await bus.drain(10)
    async with membus.open(tmp_path, config(redis_url)) as bus:  # no writers: all stays pending
        alice = bus.agent("alice", "acme")
        await alice.publish("the wiki moved to notion", "team/docs", **home)
        await alice.retract(scope="team/docs", reason="moved back", **home)
        hits = await alice.recall("where is the wiki", k=10, working=True)
        assert contents(hits) == {"the wiki search uses elastic"}
        assert [h.memory.kind for h in hits] == ["observation"]
        stored = await alice.recall("where is the wiki", k=10)
        assert contents(stored) == {"the wiki lives in confluence", "the wiki search uses elastic"}
        await alice.publish("the wiki is back in confluence", "team/docs", **home)
        hits = await alice.recall("where is the wiki", k=10, working=True)
        shown = {"the wiki search uses elastic", "the wiki is back in confluence"}
        assert contents(hits) == shown
    async with membus.open(tmp_path, config(redis_url, writers=1)) as bus:
        await bus.drain(10)
        hits = await bus.agent("alice", "acme").recall("where is the wiki", k=10, working=True)
        assert contents(hits) == shown and not any(h.working for h in hits)


WRITER_POLICY = """\
p, *, acme, team/*, recall
p, *, acme, org/*, recall
p, alice, acme, team/*, publish
p, dave, acme, team/*, publish
"""


@pytest.mark.slow
async def test_entries_the_writer_will_refuse_are_never_shown(
    redis_url: str, tmp_path: Path
) -> None:
    """Working memory applies the writer's admission (a preview that records nothing), so it
    never shows an entry no writer will commit: a stolen-key event into a scope its author may
    not publish to, an event id outside the replay window or dated ahead, a replayed copy of a
    committed event, an event whose author lost the right before commit. Then writers run: what
    was shown is committed, and every refused entry is parked in the dead-letter stream."""
    gate = CasbinGate(MemorySource(WRITER_POLICY))
    stream = TenantKeys("acme").events
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        alice, bob, dave = (bus.agent(n, "acme") for n in ("alice", "bob", "dave"))
        # committed by a writer (simulated: it read, recorded and acknowledged the entry) ...
        done = await alice.publish("incident note committed once", "team/ops")
        group = bus.config.worker.group
        await bus.redis.xgroup_create(stream, group, id="0")
        read: Any = await bus.redis.xreadgroup(group, "w1", {stream: ">"}, count=1)
        [(entry, done_fields)] = read[0][1]
        guard = ReplayGuard(bus.redis, bus.config.worker.replay_window_s)  # the writer's
        assert await guard.check("acme", done.event_id, entry) == "new"
        await bus.redis.xack(stream, group, entry)
        kept = await alice.publish("incident note kept", "team/ops")
        # ... then captured and re-injected under a new entry: a replay
        await bus.redis.xadd(stream, done_fields)
        # alice's key, stolen: a valid signature into a scope alice may not publish to
        key = await bus.keys.current("acme", "alice")
        stolen = Event.build(
            tenant="acme", agent="alice", scope="org/news", content="incident note stolen key"
        )
        await bus.redis.xadd(stream, signed_fields(stolen, key))
        # validly signed, but with ids no writer accepts: older than the window, or ahead
        now = datetime.now(UTC).timestamp()
        window = bus.config.worker.replay_window_s
        for label, at in (("stale", now - window - 3600), ("future", now + 2 * 3600)):
            odd = Event.build(
                id=str(ULID.from_timestamp(at)),
                tenant="acme",
                agent="alice",
                scope="team/ops",
                content=f"incident note {label} id",
            )
            await bus.redis.xadd(stream, signed_fields(odd, key))
        # dave may publish when he does, and loses the right before any writer ran
        await dave.publish("incident note by dave", "team/ops")
        await gate.remove_policy("p, dave, acme, team/*, publish")
        seen_before = await _seen(bus)
        hits = await bob.recall("incident note", k=20, working=True)
        assert contents(hits) == {"incident note kept"}
        assert [h.memory.source_events[0] for h in hits] == [kept.event_id]
        assert await _seen(bus) == seen_before  # the preview remembered no event id
    async with membus.open(tmp_path, config(redis_url, writers=1), gate=gate) as bus:
        await bus.drain(timeout_s=20)
        bob = bus.agent("bob", "acme")
        assert contents(await bob.recall("incident note", k=20)) == {"incident note kept"}
        parked: Any = await bus.redis.xrange(TenantKeys("acme").dlq)
        reasons = sorted(f["reason"] for _, f in parked)
        assert reasons == ["denied", "denied", "replay", "stale", "stale"]


async def _seen(bus: Bus) -> dict[str, dict[str, str]]:
    """Every replay record (which stream entry first carried each event id)."""
    keys = [k async for k in bus.redis.scan_iter(match="membus:{acme}:seen:*")]
    return {k: await bus.redis.hgetall(k) for k in keys}
