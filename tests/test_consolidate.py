"""Unit tests of the consolidation rules (membus/writer/consolidate.py): pure functions of a slot's
events, so each rule is checked without Redis or a store."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membus.core.config import ConsolidationConfig
from membus.core.envelope import Event
from membus.errors import InvalidInput
from membus.store.port import POINT_NAMESPACE, point_id
from membus.writer.commit import changes_for, expires
from membus.writer.consolidate import (
    RETRACTION,
    SlotState,
    Variant,
    keyed_slot,
    materialize,
    normalise,
    parse_state,
    retraction_target,
    slot_of,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CFG = ConsolidationConfig()


def ev(n: int, content: str, *, agent: str = "a", at: float = 0, **kw: object) -> Event:
    return Event.build(
        id=f"01J{n:023d}",
        tenant="acme",
        agent=agent,
        scope=kw.pop("scope", "team/s"),
        content=content,
        created_at=T0 + timedelta(seconds=at),
        **kw,
    )


def state(*events: Event, ret: datetime | None = None) -> SlotState:
    slots = {slot_of(e) for e in events}
    assert len(slots) == 1, "these events do not share a slot"
    return SlotState(slots.pop(), [Variant.of(e) for e in events], retracted_at=ret)


def test_exact_repeats_share_a_slot_and_fold_with_the_union_of_provenance() -> None:
    """Case, spacing and closing punctuation do not make a new memory; the newest wording
    wins; provenance lists every event and agent; the id is the earliest event's."""
    a = ev(1, "The customer prefers email", agent="x", at=0)
    b = ev(2, "the customer  prefers EMAIL.", agent="y", at=5)
    assert normalise(a.content) == normalise(b.content)
    plan = materialize("acme", state(b, a), CFG)
    [m] = plan.upserts
    assert m.id == point_id("acme", a.id) and m.content == b.content
    assert m.agents == ["x", "y"] and m.source_events == [a.id, b.id]
    assert plan.deletes == [point_id("acme", b.id)]  # its own point, if ever written, goes


def test_slots_never_cross_scope_kind_subject_or_label() -> None:
    """The same text in another scope (private vs shared), kind, subject or label is another
    memory: a merge can never move private text into a shared memory."""
    base = ev(1, "likes tea")
    others = [
        ev(2, "likes tea", scope="agent/a"),
        ev(3, "likes tea", kind="fact"),
        ev(4, "likes tea", subject="c1"),
        ev(5, "likes tea", label="restricted"),
    ]
    slots = {slot_of(e) for e in [base, *others]}
    assert len(slots) == 5
    assert all(
        s.startswith(e.scope + ":") for s, e in zip(map(slot_of, others), others, strict=True)
    )


def test_keyed_versions_keep_history_with_validity_intervals() -> None:
    """One current memory per (scope, subject, key); earlier values are history, each valid
    until the next one; a repeated value folds into its version."""
    v1 = ev(1, "email", subject="c1", key="contact", at=0)
    v1b = ev(2, "Email.", subject="c1", key="contact", agent="b", at=10)
    v2 = ev(3, "phone", subject="c1", key="contact", at=100)
    plan = materialize("acme", state(v2, v1b, v1), CFG)
    old, cur = plan.upserts
    assert (old.content, old.history, old.valid_to) == ("Email.", True, v2.created_at)
    assert old.source_events == [v1.id, v1b.id] and old.valid_from == v1.created_at
    assert (cur.content, cur.history, cur.valid_to) == ("phone", False, None)
    # the current value says when the key was first recorded and when it last changed
    assert cur.created_at == v1.created_at and cur.updated_at == v2.created_at
    assert plan.conflicts == []  # far apart in time: a change of mind, not a conflict


def test_a_current_version_reveals_nothing_of_versions_above_its_label() -> None:
    """Issue 15.11: a key's current version says when the key was first recorded, but only
    from versions every reader of it may read: a restricted first version leaves no trace (its
    time) in a public current one; a folded version never mixes labels."""
    secret = ev(1, "gold", subject="c1", key="tier", label="restricted", at=0)
    public = ev(2, "silver", subject="c1", key="tier", at=100)
    *_, cur = materialize("acme", state(secret, public), CFG).upserts
    assert (cur.content, cur.sensitivity) == ("silver", 0)
    assert cur.created_at == cur.valid_from == public.created_at  # not secret's time
    # readable first versions still count, below or equal to the current label
    first = ev(3, "bronze", subject="c1", key="tier", at=-50)
    *_, cur = materialize("acme", state(first, secret, public), CFG).upserts
    assert cur.created_at == first.created_at
    high = ev(4, "platinum", subject="c1", key="tier", label="restricted", at=200)
    *_, cur = materialize("acme", state(first, secret, public, high), CFG).upserts
    assert (cur.content, cur.created_at) == ("platinum", first.created_at)
    # the same value relabelled is a new version, not a fold (or a conflict)
    again = ev(5, "Gold.", subject="c1", key="tier", agent="b", at=1)
    plan = materialize("acme", state(secret, again), CFG)
    old, cur = plan.upserts
    assert (old.sensitivity, old.source_events) == (3, [secret.id])
    assert (cur.sensitivity, cur.created_at, cur.agents) == (0, again.created_at, ["b"])
    assert plan.conflicts == []


def test_a_predecessors_change_goes_only_to_readers_of_its_successor() -> None:
    """When a restricted version supersedes a public one, the change re-announcing the public
    one (its validity ended) is labelled restricted: a public subscriber learns nothing."""
    old = ev(1, "silver", subject="c1", key="tier", at=0)
    new = ev(2, "gold", subject="c1", key="tier", label="restricted", at=100)
    plan = materialize("acme", state(old, new), CFG)
    entries = [orjson.loads(f["c"]) for f in changes_for([plan], {new.id})]
    assert [(c["memory_id"], c["sensitivity"]) for c in entries] == [
        (point_id("acme", old.id), 3),
        (point_id("acme", new.id), 3),
    ]
    # the public version's own arrival stays public
    first = [orjson.loads(f["c"]) for f in changes_for([plan], {old.id})]
    assert [(c["memory_id"], c["sensitivity"]) for c in first] == [(point_id("acme", old.id), 0)]


def test_a_versions_end_is_told_to_each_clearance_that_sees_it_end() -> None:
    """Issue 15.11, the feed: a public version followed by a restricted one, then an internal
    one. For internal readers the internal version ends the public one (the restricted one does
    not exist for them): they hear of it, labelled internal; the restricted version's end goes
    to restricted readers only; public readers, for whom nothing ended, hear nothing."""
    bronze = ev(1, "bronze", subject="c1", key="tier", at=0)
    gold = ev(2, "gold", subject="c1", key="tier", label="restricted", at=100)
    silver = ev(3, "silver", subject="c1", key="tier", label="internal", at=200)
    plan = materialize("acme", state(bronze, gold, silver), CFG)
    entries = [orjson.loads(f["c"]) for f in changes_for([plan], {silver.id})]
    assert [(c["memory_id"], c["sensitivity"]) for c in entries] == [
        (point_id("acme", bronze.id), 1),
        (point_id("acme", gold.id), 3),
        (point_id("acme", silver.id), 1),
    ]
    # and the store's view per clearance agrees: bronze ends at silver for internal readers,
    # at gold for restricted ones, never for public ones
    first = plan.upserts[0]
    assert first.seen_by(0).valid_to is None and not first.seen_by(0).history
    assert first.seen_by(1).valid_to == first.seen_by(2).valid_to == silver.created_at
    assert first.seen_by(3).valid_to == first.valid_to == gold.created_at


def test_a_hidden_versions_expiry_does_not_withdraw_a_key_still_current_below_it() -> None:
    """Issue 15.11, the TTL sweep: it withdraws a whole slot once the slot ``expires``. A
    restricted version with a TTL on top of a public one without: when the restricted one runs
    out, the public one is still current to public readers (it never ended for them), so the
    slot must not be withdrawn (that would delete it under them, and tell them when). With both
    expiring, the slot goes when the last clearance's current version has."""
    ttl = ConsolidationConfig(ttl_by_kind={"status": 3600})
    public = ev(1, "silver", subject="c1", key="tier", at=0)
    hidden = ev(2, "gold", subject="c1", key="tier", label="restricted", kind="status", at=100)
    plan = materialize("acme", state(public, hidden), ttl)
    assert plan.upserts[-1].valid_to == hidden.created_at + timedelta(hours=1)
    assert plan.upserts[0].seen_by(0).valid_to is None
    assert expires(plan) is None
    brief = ev(3, "bronze", subject="c1", key="tier", kind="status", at=-1000)
    plan = materialize("acme", state(brief, hidden), ttl)
    ends = {m.seen_by(c).valid_to for c in range(4) for m in plan.upserts if m.sensitivity <= c}
    assert ends == {
        hidden.created_at,
        brief.created_at + timedelta(hours=1),
        plan.upserts[-1].valid_to,
    }
    assert expires(plan) == (hidden.created_at + timedelta(hours=1)).timestamp()


def test_a_tie_in_time_is_broken_by_event_id_and_reported_as_a_conflict() -> None:
    """Two agents, different values, within the window: version order (created_at, then event
    id) picks the winner, whichever order they are given in; the pair is a conflict."""
    x = ev(1, "email", subject="c1", key="contact", agent="x", at=0)
    y = ev(2, "phone", subject="c1", key="contact", agent="y", at=0)
    for order in ([x, y], [y, x]):
        plan = materialize("acme", state(*order), CFG)
        [c] = plan.conflicts
        assert (c.winner.content, c.loser.content) == ("phone", "email")
    same_agent = ev(3, "sms", subject="c1", key="contact", agent="x", at=1)
    assert len(materialize("acme", state(x, same_agent), CFG).conflicts) == 0


def test_a_retraction_withdraws_what_came_before_it_and_not_after() -> None:
    """The cut-off deletes every version created at or before it (late copies included) and
    lets a later assertion stand."""
    v1 = ev(1, "email", subject="c1", key="contact", at=0)
    v2 = ev(2, "phone", subject="c1", key="contact", at=10)
    cut = T0 + timedelta(seconds=10)
    gone = materialize("acme", state(v1, v2, ret=cut), CFG)
    assert gone.upserts == [] and set(gone.deletes) == {point_id("acme", e.id) for e in (v1, v2)}
    assert gone.withdrawn == sorted([v1.id, v2.id])
    v3 = ev(3, "post", subject="c1", key="contact", at=20)
    back = materialize("acme", state(v1, v2, v3, ret=cut), CFG)
    assert [m.content for m in back.upserts] == ["post"]


def test_a_retraction_withdraws_only_versions_its_author_could_read() -> None:
    """A retraction's cut-off reaches versions labelled at most what its author may read there
    (ledger ``ret:<level>``); a bare ``ret`` (from before levels) reaches every label."""
    public = ev(1, "lobby 5678", subject="c1", key="code", at=0)
    secret = ev(2, "vault 1234", subject="c1", key="code", at=5, label="restricted")
    cut = T0 + timedelta(seconds=10)
    slot = slot_of(public)
    variants = [Variant.of(e) for e in (public, secret)]
    low = SlotState(slot, variants, retracted_up_to={0: cut})
    plan = materialize("acme", low, CFG)
    assert [m.content for m in plan.upserts] == ["vault 1234"]
    assert plan.withdrawn == [public.id]
    every = materialize("acme", SlotState(slot, variants, retracted_at=cut), CFG)
    assert every.upserts == [] and every.withdrawn == sorted([public.id, secret.id])
    fields = {f"e:{e.id}": Variant.of(e).to_json().decode() for e in (public, secret)}
    parsed = parse_state(slot, {**fields, "ret:0": cut.isoformat(), "ret:-1": cut.isoformat()})
    assert parsed.retracted_up_to == {0: cut} and parsed.retracted_at is None


def test_retraction_targets_stay_in_their_scope() -> None:
    """A retraction names a key, or a slot of its own scope: never another scope's memory."""
    r = ev(9, "withdraw", kind=RETRACTION, subject="c1", key="contact")
    assert retraction_target(r) == keyed_slot("team/s", "c1", "contact")
    own = slot_of(ev(1, "likes tea"))
    assert retraction_target(ev(9, "x", kind=RETRACTION, metadata={"retracts": own})) == own
    foreign = slot_of(ev(1, "likes tea", scope="agent/boss"))
    with pytest.raises(InvalidInput, match="another scope"):
        retraction_target(ev(9, "x", kind=RETRACTION, metadata={"retracts": foreign}))
    with pytest.raises(InvalidInput, match="needs subject and key"):
        retraction_target(ev(9, "x", kind=RETRACTION))


def test_ttl_by_kind_and_scope_sets_valid_to_from_the_newest_event() -> None:
    """The shortest TTL applies, counted from the newest event, and a repeat refreshes it."""
    cfg = ConsolidationConfig(ttl_by_kind={"observation": 3600}, ttl_by_scope={"team": 60})
    a, b = ev(1, "deploy running", at=0), ev(2, "deploy running", at=30)
    [m] = materialize("acme", state(a, b), cfg).upserts
    assert m.valid_to == b.created_at + timedelta(seconds=60)


def test_the_result_depends_on_the_set_not_the_order() -> None:
    """Shuffled and duplicated variants materialise to the same memories."""
    evs = [
        ev(i, c, subject="c1", key="k", agent=a, at=t)
        for i, (c, a, t) in enumerate(
            [("a", "x", 0), ("b", "y", 1), ("a", "y", 2), ("c", "x", 50), ("c", "y", 51)]
        )
    ]
    want = materialize("acme", state(*evs), CFG)
    rng = random.Random(4)
    for _ in range(20):
        mixed = evs + rng.sample(evs, 2)
        rng.shuffle(mixed)
        got = materialize("acme", state(*mixed), CFG)
        assert got.upserts == want.upserts and got.deletes == want.deletes


def test_ledger_fields_round_trip_and_tombstoned_events_are_left_out() -> None:
    a, b = ev(1, "likes tea"), ev(2, "likes tea", agent="b")
    fields = {f"e:{e.id}": Variant.of(e).to_json().decode() for e in (a, b)}
    parsed = parse_state(slot_of(a), fields, dead=[b.id])
    assert [v.event_id for v in parsed.variants] == [a.id] and parsed.erased == [b.id]
    plan = materialize("acme", parsed, CFG)
    assert plan.upserts[0].source_events == [a.id]
    assert point_id("acme", b.id) in plan.deletes


@pytest.mark.parametrize("n", [1, 3])
def test_materialized_memories_are_what_model_construct_makes(n: int) -> None:
    """The writer builds memories without ``model_construct`` (hot path): same state, same
    serialisations, for a one-event slot and a folded one."""
    from membus.store.port import Memory

    plan = materialize("acme", state(*[ev(i, "Same text", at=i) for i in range(n)]), CFG)
    [m] = plan.upserts
    ref = Memory.model_construct(**m.__dict__)
    assert m == ref and m.model_fields_set == ref.model_fields_set
    assert m.model_dump() == ref.model_dump() and m.to_payload() == ref.to_payload()
    assert m.model_copy(update={"content": "x"}).content == "x"


@settings(max_examples=200, deadline=None)
@given(tenant=st.text(max_size=40), event_id=st.text(max_size=40))
def test_point_ids_are_the_uuid5_every_stored_memory_is_keyed_by(
    tenant: str, event_id: str
) -> None:
    """``point_id`` is built by hand for speed; a different id for the same event would write a
    second copy of every memory already stored, and leave the first undeletable."""
    try:
        expected = str(uuid.uuid5(POINT_NAMESPACE, f"{tenant}/{event_id}"))
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            point_id(tenant, event_id)
        return
    assert point_id(tenant, event_id) == expected
