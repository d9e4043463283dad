"""Consolidation rules, as pure functions of a slot's ledger: what memories a set of events makes.

Every admitted event lands in one *slot* of the ledger (see ``membus/writer/ledger.py``), and a
slot's memories are recomputed from everything the slot holds. Because the result depends only
on the *set* of events in the slot (never on arrival order, on duplicates or on which writer saw
what), the final memory state is the same whatever the delivery order and the number of writers.

Slots never cross scopes: the scope is part of every slot id, so private text cannot reach a
shared memory through a merge.

- An unkeyed event's slot is (scope, kind, subject, label, normalised text): exact repeats fold
  into one memory whose provenance lists every source event and agent; its wording is the newest.
- A keyed event (``subject`` + ``key``) lands in the (scope, subject, key) slot: versions ordered
  by (created_at, event id); the last one is current, each earlier one is kept as history with
  its validity interval; consecutive versions with the same normalised value fold into one.
  Each clearance sees the key's history as if the versions above it did not exist: a version's
  validity per clearance (``store.port.Levels``) ends at the next version that clearance may
  read, and its first-recorded time comes from versions at or below its own label only.
- A retraction (kind ``retraction``) sets the slot's cut-off: every event created at or before it
  is withdrawn (deleted, and a late or redelivered copy stays withdrawn); later ones re-assert.
- Two agents asserting different values for one key within ``conflict_window_s`` is a conflict:
  version order decides (ties: event id), and the pair is reported for the change feed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from membus.core.config import ConsolidationConfig
from membus.core.envelope import LABELS, Event, scope_ancestors
from membus.errors import InvalidInput
from membus.store.port import LEVELS, Levels, Memory, point_id

RETRACTION = "retraction"
_new, _setattr = object.__new__, object.__setattr__
_LABEL_OF = {v: k for k, v in LABELS.items()}
MAX_LEVEL = max(LABELS.values())  # a clearance that reads every label


def normalise(text: str) -> str:
    """What counts as "the same text": case, spacing and closing punctuation do not."""
    return " ".join(text.casefold().split()).rstrip(".!?;:, ")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def keyed_slot(scope: str, subject: str, key: str) -> str:
    return f"{scope}:k{_digest(subject, key)}"


def slot_scope(slot: str) -> str:
    return slot.rpartition(":")[0]


def slot_of(event: Event) -> str:
    """The slot an event writes to. Retractions name theirs (or a key); see ``target``."""
    if event.kind == RETRACTION:
        return retraction_target(event)
    if event.subject is not None and event.key is not None:
        return keyed_slot(event.scope, event.subject, event.key)
    text = normalise(event.content)
    return f"{event.scope}:t{_digest(event.kind, event.subject or '', event.label, text)}"


def retraction_target(event: Event) -> str:
    """A retraction withdraws a key (``subject`` + ``key``) or one memory's slot
    (``metadata.retracts``, as ``Agent.retract`` fills it), always within its own scope."""
    target = event.metadata.get("retracts")
    if isinstance(target, str):
        if slot_scope(target) != event.scope:
            raise InvalidInput(
                f"retraction in scope {event.scope!r} names a memory of another scope",
                [{"field": "metadata.retracts", "reason": "must be a slot of the event's scope"}],
            )
        return target
    if event.subject is not None and event.key is not None:
        return keyed_slot(event.scope, event.subject, event.key)
    raise InvalidInput(
        "a retraction needs subject and key, or metadata.retracts naming a memory's slot",
        [{"field": "metadata.retracts", "reason": "missing"}],
    )


@dataclass(frozen=True, slots=True)
class Variant:
    """One event as the ledger keeps it: what a memory needs, nothing of the transport."""

    event_id: str
    agent: str
    scope: str
    kind: str
    content: str
    subject: str | None
    key: str | None
    label: str
    metadata: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, e: Event) -> Variant:
        return cls(
            e.id,
            e.agent,
            e.scope,
            e.kind,
            e.content,
            e.subject,
            e.key,
            e.label,
            e.metadata,
            e.created_at,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            [
                self.agent,
                self.scope,
                self.kind,
                self.content,
                self.subject,
                self.key,
                self.label,
                self.metadata,
                self.created_at,
            ],
            option=orjson.OPT_UTC_Z,
        )

    @classmethod
    def from_json(cls, event_id: str, raw: str | bytes) -> Variant:
        a, s, k, c, subj, key, label, meta, at = orjson.loads(raw)
        return cls(event_id, a, s, k, c, subj, key, label, meta, datetime.fromisoformat(at))

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.created_at, self.event_id)


@dataclass(frozen=True, slots=True)
class SlotState:
    slot: str
    variants: list[Variant]
    retracted_at: datetime | None = None  # reaches every label (a retraction before levels)
    merged_into: str | None = None
    erased: list[str] = field(default_factory=list)  # tombstoned event ids still in the hash
    # level -> the latest cut-off of a retraction whose author could read labels up to it
    retracted_up_to: dict[int, datetime] = field(default_factory=dict)

    def cut_for(self, label: str) -> datetime | None:
        """The cut-off that reaches a version of ``label``: only retractions whose author could
        read that label withdraw it (a retraction reaches no further than a forget would)."""
        level = LABELS[label]
        cuts = [at for lv, at in self.retracted_up_to.items() if lv >= level]
        if self.retracted_at is not None:
            cuts.append(self.retracted_at)
        return max(cuts, default=None)

    @property
    def keyed(self) -> bool:
        return self.slot.rpartition(":")[2].startswith("k")


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two agents' values for one key, close in time; ``winner`` is current after the rule."""

    winner: Memory
    loser: Memory


@dataclass(slots=True)
class Plan:
    upserts: list[Memory] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)  # point ids that must not exist
    withdrawn: list[str] = field(default_factory=list)  # retracted event ids: prune from ledger
    conflicts: list[Conflict] = field(default_factory=list)


def expiry(v: Variant, config: ConsolidationConfig) -> datetime | None:
    """The shortest TTL among the event's kind and its scope's ancestors, from its creation."""
    ttls = [config.ttl_by_kind[v.kind]] if v.kind in config.ttl_by_kind else []
    if config.ttl_by_scope:
        ttls += [
            config.ttl_by_scope[a] for a in scope_ancestors(v.scope) if a in config.ttl_by_scope
        ]
    return v.created_at + timedelta(seconds=min(ttls)) if ttls else None


def _memory(
    tenant: str,
    slot: str,
    group: Sequence[Variant],
    valid_to: datetime | None,
    history: bool,
    since: datetime | None = None,
    ids: Mapping[str, str] | None = None,
) -> Memory:
    """One memory from a group of variants that say the same thing: id from the earliest event
    id (stable once written), wording and metadata from the newest, provenance from all.
    ``since``: when the fact was first recorded (a key's version: its first readable version).
    ``ids``: point ids already derived, by event id (uuid5 is a few µs each)."""
    if len(group) == 1:  # the common case: one event, one memory
        first = newest = group[0]
        began, agents, sources = first.created_at, [first.agent], [first.event_id]
    else:
        first = min(group, key=lambda v: v.event_id)
        newest = max(group, key=lambda v: v.order)
        began = min(v.created_at for v in group)
        agents, sources = sorted({v.agent for v in group}), sorted(v.event_id for v in group)
    pid = ids[first.event_id] if ids is not None else point_id(tenant, first.event_id)
    return _trusted(
        {
            "id": pid,
            "tenant": tenant,
            "scope": newest.scope,
            "kind": newest.kind,
            "content": newest.content,
            "subject": newest.subject,
            "key": newest.key,
            "agents": agents,
            "source_events": sources,
            "created_at": since or began,
            "updated_at": newest.created_at,
            "metadata": newest.metadata,
            "sensitivity": LABELS[newest.label],
            "slot": slot,
            "valid_from": began,
            "valid_to": valid_to,
            "history": history,
        }
    )


def _trusted(fields: dict[str, Any]) -> Memory:
    """``Memory.model_construct`` given every field, minus its per-field default handling
    (~10 µs a memory on the writer's hot path). Same instance state: ``__dict__``, the fields
    set, no extra, the private attributes at their defaults (nothing sealed)."""
    m = _new(Memory)
    _setattr(m, "__dict__", fields)
    _setattr(m, "__pydantic_fields_set__", set(fields))
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", {"_seal": None, "_sealed": None, "_levels": None})
    return m


def _groups(live: Sequence[Variant]) -> list[list[Variant]]:
    """Consecutive versions (in version order) with the same normalised value and the same
    label fold together (a folded version has one label: no reader sees a time or an agent
    of a version above its clearance through it)."""
    out: list[list[Variant]] = []
    for v in sorted(live, key=lambda v: v.order):
        last = out[-1][-1] if out else None
        if last and last.label == v.label and normalise(last.content) == normalise(v.content):
            out[-1].append(v)
        else:
            out.append([v])
    return out


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _views(groups: Sequence[Sequence[Variant]], config: ConsolidationConfig) -> list[Levels]:
    """Each version's validity as each clearance below the highest sees the key: as if the
    versions above that clearance did not exist, so a version ends for a reader only when a
    version the reader may read replaces it (or it expires). One pass from the newest."""
    out: list[Levels] = []
    nxt: list[datetime | None] = [None] * LEVELS  # the next version at or below each clearance
    successor: int | None = None
    for g in reversed(groups):
        level = LABELS[g[0].label]
        until = expiry(max(g, key=lambda v: v.order), config)
        # a clearance that cannot read the version never sees it: it keeps the full view
        ends = (nxt[c if level <= c else LEVELS - 1] for c in range(LEVELS - 1))
        out.append(Levels(tuple(_earliest(t, until) for t in ends), successor))
        for c in range(level, LEVELS):
            nxt[c] = g[0].created_at
        successor = level if successor is None else min(successor, level)
    out.reverse()
    return out


def materialize(tenant: str, state: SlotState, config: ConsolidationConfig) -> Plan:
    """The memories ``state`` makes, and the point ids of its events that must not exist."""
    plan = Plan()
    variants = list({v.event_id: v for v in state.variants}.values())  # a set, whatever came in
    ids = {v.event_id: point_id(tenant, v.event_id) for v in variants}
    every = {point_id(tenant, e) for e in state.erased}
    every.update(ids.values())
    cuts = {label: state.cut_for(label) for label in {v.label for v in variants}}

    def withdrawn(v: Variant) -> bool:
        cut = cuts[v.label]
        return cut is not None and v.created_at <= cut

    live = [v for v in variants if not withdrawn(v)]
    plan.withdrawn = sorted(v.event_id for v in variants if withdrawn(v))
    if state.merged_into is not None or not live:  # merged away, withdrawn or erased
        plan.deletes = sorted(every)
        return plan
    if state.keyed:
        groups = _groups(live)
        views = _views(groups, config)
        first: list[datetime | None] = [None] * LEVELS  # the earliest version at or below c
        for i, g in enumerate(groups):
            last = i == len(groups) - 1
            until = expiry(max(g, key=lambda v: v.order), config)
            valid_to = until if last else groups[i + 1][0].created_at
            if until is not None and valid_to is not None:
                valid_to = min(valid_to, until)
            # first recorded: the earliest version up to this one that every reader of this one
            # may read too, so created_at never reveals that a version above the reader's
            # clearance exists; the same for a superseded version as for the current one, since
            # a superseded version is current to the readers who cannot read its successors
            level = LABELS[g[0].label]
            for c in range(level, LEVELS):
                first[c] = first[c] or g[0].created_at
            m = _memory(tenant, state.slot, g, valid_to, not last, first[level], ids)
            # only when a clearance sees it otherwise (the store reads back the same)
            plan.upserts.append(m.with_levels(views[i]) if views[i].matters(valid_to) else m)
        for i in range(1, len(groups)):
            a, b = groups[i - 1][-1], groups[i][0]
            close = (b.created_at - a.created_at).total_seconds() <= config.conflict_window_s
            differ = normalise(a.content) != normalise(b.content)  # not just a relabel
            if close and a.agent != b.agent and differ:
                plan.conflicts.append(Conflict(plan.upserts[i], plan.upserts[i - 1]))
    else:
        until = expiry(max(live, key=lambda v: v.order), config)
        plan.upserts.append(_memory(tenant, state.slot, live, until, False, None, ids))
    plan.deletes = sorted(every - {m.id for m in plan.upserts})
    return plan


def parse_state(slot: str, fields: Mapping[str, str], dead: Iterable[str] = ()) -> SlotState:
    """A slot hash as the ledger stores it: ``e:<event id>`` -> variant, ``ret`` -> cut-off
    (ISO time), ``into`` -> the slot it was merged into. Tombstoned event ids are left out."""
    gone = set(dead)
    ids = [f[2:] for f in fields if f.startswith("e:")]
    variants = [Variant.from_json(i, fields["e:" + i]) for i in ids if i not in gone]
    ret = fields.get("ret")
    levels = {
        int(f[4:]): datetime.fromisoformat(at)
        for f, at in fields.items()
        if f.startswith("ret:") and f[4:].isdigit()
    }
    return SlotState(
        slot,
        variants,
        retracted_at=datetime.fromisoformat(ret) if ret else None,
        merged_into=fields.get("into"),
        erased=sorted(gone.intersection(ids)),
        retracted_up_to=levels,
    )


def label_of(sensitivity: int) -> str:
    return _LABEL_OF[sensitivity]
