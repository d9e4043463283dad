"""Erasure: ``forget`` memories and everything that carries their content, following provenance.

A memory is matched by id, subject, agent and/or scope subtree (every criterion given must hold).
From the matched memories we follow ``source_events`` to the events that made them, and match
events that no writer has consumed yet (or that sit in the dead-letter stream) by the same
criteria; then every place holding their content is cleaned: the store, the events stream
(pending and undelivered entries included, with their PEL ids acknowledged away in every group),
the dead-letter stream, the writer's error notes, and the change feed. A change entry goes if any
memory it carries is erased or matches: the memory it is about, and for a ``conflict`` the
superseded one named in ``detail`` (its content, agents and events); a writer's own ``delete``
changes name subject, key and agents, and go too.

``within(scope, sensitivity)`` fences what a caller may erase (``Bus.forget``: its read grant
and clearance inside its forget grant, or its erase right); nothing outside the fence is touched
or counted. A forget that finds nothing stops after one pass: no second scan, no delete
notices, no AOF rewrite.

Order matters because writers keep running: tombstones are written first (the writer checks them,
see ``membus/writer/commit.py``), then stream entries and memories are deleted, then the change feed
is scanned; the whole pass runs twice, the second only over what arrived since the first, so
anything a writer committed while the first pass ran is caught.

Tombstones (``membus:{tenant}:tombstones``, id -> erased-at) are kept forever: a redelivered or
replayed event with an erased id is dropped rather than written again.

On disk: XDEL frees an entry's bytes only when its stream node holds no other entry, so membus's
Redis runs with ``stream-node-max-entries 1`` (the report says what the server has); the AOF
still holds deleted entries until it is rewritten, so ``forget`` asks for ``BGREWRITEAOF`` (best
effort; skipped when AOF is off). The store cannot be trusted to drop bytes (Qdrant keeps deleted
payloads in its WAL and segments), so what it persists is sealed under per-memory data keys
(``membus.store.sealed``) and ``forget`` destroys them once the ids are tombstoned: every copy of
the payload, backups included, becomes unreadable. RDB snapshots and replicas follow their own
schedules. Entries that are not valid JSON cannot be attributed to a subject or agent and are
left to ``membus dlq drop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from membus.core.envelope import LABELS, validate_name, validate_scope
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, decode_fields, node_of, rewrite_aof, unavailable
from membus.errors import InvalidInput
from membus.recall.heat import forget_access
from membus.store.port import Memory, Store, check_ids, point_id
from membus.store.sealed import Shredder
from membus.stream.feed import Change
from membus.stream.tombstones import erased as erased
from membus.stream.tombstones import is_tombstoned as is_tombstoned
from membus.stream.tombstones import tombstoned as tombstoned
from membus.stream.tombstones import tombstones_key
from membus.writer.advice import writes_key
from membus.writer.ledger import drop_variants, find_variants, slot_prefix

_PAGE = 500
_PASSES = 2
MOST_SENSITIVE = max(LABELS.values())
# the caller's fence: may this forget touch an item of this scope and sensitivity?
Within = Callable[[str, int], bool]


def errors_key(tenant: str) -> str:
    """The writer's per-entry error notes (``Writer._note_error``)."""
    return TenantKeys(tenant).dlq + ":errors"


class ErasureReport(BaseModel):
    """What ``forget`` removed, per place, and the ids it erased (ids only, never content)."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    memories: int = 0  # store points deleted
    events: int = 0  # events-stream entries deleted
    pending: int = 0  # of those, PEL entries acknowledged away (summed over groups)
    dlq: int = 0  # dead-letter entries deleted
    changes: int = 0  # change-feed entries deleted
    errors: int = 0  # writer error notes deleted
    ledger: int = 0  # consolidation ledger entries deleted
    tombstones: int = 0  # new tombstones written
    notices: int = 0  # "delete" changes published for subscribers
    keys: int = 0  # data keys destroyed (``membus.store.sealed``): store copies unreadable
    memory_ids: list[str] = Field(default_factory=list)
    event_ids: list[str] = Field(default_factory=list)
    aof_rewrite: str = "off"  # started | in_progress | off | failed | skipped (nothing erased)
    # the server's stream-node-max-entries: 1 frees deleted entries' bytes; anything else keeps
    # them in their node (memory, DUMP, AOF base) until its last entry goes; None: CONFIG refused
    stream_node_entries: int | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Criteria:
    """Every criterion given must hold."""

    tenant: str
    memory_ids: frozenset[str] | None
    subject: str | None
    agent: str | None
    scope: str | None
    within: Within | None

    def holds(
        self,
        memory_id: str | None,
        scope: Any,
        subject: Any,
        agents: Iterable[Any],
        sensitivity: int,
    ) -> bool:
        # cheapest tests first: erasure runs this over every slot and stream entry of a tenant
        return (
            (self.subject is None or subject == self.subject)
            and (self.agent is None or self.agent in agents)
            and (
                self.scope is None
                or (isinstance(scope, str) and (scope + "/").startswith(self.scope + "/"))
            )
            and (self.memory_ids is None or memory_id in self.memory_ids)
            and self.fenced_in(scope, sensitivity)
        )

    def fenced_in(self, scope: Any, sensitivity: int) -> bool:
        """Inside the caller's fence (its read grant and clearance, or its erase right)."""
        return self.within is None or (isinstance(scope, str) and self.within(scope, sensitivity))

    def id_of(self, event_id: Any) -> str | None:
        """The memory id an event would get, when a criterion needs it (a uuid5 is not free)."""
        if self.memory_ids is None or not isinstance(event_id, str):
            return None
        return point_id(self.tenant, event_id)

    def memory(self, m: Memory) -> bool:
        return self.holds(m.id, m.scope, m.subject, m.agents, m.sensitivity)

    def event(self, d: Mapping[str, Any]) -> bool:
        return self.holds(
            self.id_of(d.get("id")),
            d.get("scope"),
            d.get("subject"),
            [d.get("agent")],
            label_level(d.get("label", "public")),
        )


def _level(value: Any) -> int:
    return value if isinstance(value, int) else MOST_SENSITIVE


def label_level(label: Any) -> int:
    """An event's sensitivity; a label we cannot read counts as the highest (fail closed)."""
    return LABELS.get(label, MOST_SENSITIVE) if isinstance(label, str) else MOST_SENSITIVE


@dataclass(frozen=True)
class _Carried:
    """One memory's worth of content a change entry carries, with what names it."""

    memory_id: Any
    event_ids: list[str]
    agents: list[str]
    sensitivity: int


def carried(c: Mapping[str, Any]) -> list[_Carried]:
    """Every memory whose content a change carries, whichever field carries it: the memory it
    is about, and for a ``conflict`` the superseded one in ``detail`` (its content and agents).
    Entries written before ``superseded_events`` existed are still found by the superseded id
    and agents."""
    sens = _level(c.get("sensitivity"))
    out = [_Carried(c.get("memory_id"), _strs(c.get("event_ids")), _strs(c.get("agents")), sens)]
    detail = c.get("detail")
    if isinstance(detail, dict) and (
        "superseded" in detail or "superseded_content" in detail or "superseded_agents" in detail
    ):
        out.append(
            _Carried(
                detail.get("superseded"),
                _strs(detail.get("superseded_events")),
                _strs(detail.get("superseded_agents")),
                _level(detail.get("superseded_sensitivity", sens)),
            )
        )
    return out


@dataclass
class _State:
    """What one forget has found so far; carried from pass to pass."""

    memories: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    deleted: dict[str, Memory] = field(default_factory=dict)  # for the delete notices
    cursors: dict[str, str] = field(default_factory=dict)  # stream -> last id examined
    counts: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # change entries deleted, counted or not
    slots: set[str] = field(default_factory=set)  # ledger slots that lost events

    @property
    def found(self) -> bool:
        return bool(self.memories or self.events or self.dropped or any(self.counts.values()))

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def _json(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        got = orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeError):
        return None
    return got if isinstance(got, dict) else None


def _bare(c: Mapping[str, Any]) -> bool:
    """A delete notice as erasure writes it: ids, scope and kind, nothing to erase. A writer's
    delete change (a superseded, merged or retracted memory) names subject, key and agents."""
    return (
        c.get("content") is None
        and c.get("subject") is None
        and c.get("key") is None
        and (not c.get("agents"))
    )


def _strs(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


async def _scan(redis: Redis, key: str, st: _State) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Entries of ``key`` after the cursor of the previous pass (all of them on the first), read
    a page at a time so a long stream is never held in memory whole."""
    start = st.cursors.get(key, "-")
    while True:
        raw: Any = await redis.xrange(key, min=start, max="+", count=_PAGE)
        for eid, f in raw:
            yield str(eid), decode_fields(f or {})
        if raw:
            start = st.cursors[key] = "(" + str(raw[-1][0])
        if len(raw) < _PAGE:
            return


async def _groups(redis: Redis, stream: str) -> list[str]:
    try:
        return [str(g["name"]) for g in await redis.xinfo_groups(stream)]
    except ResponseError:  # no such stream
        return []


async def _delete_entries(
    redis: Redis, stream: str, ids: Sequence[str], groups: Sequence[str]
) -> tuple[int, int]:
    """XDEL ``ids`` and XACK them in ``groups`` (XDEL leaves PEL ids behind); (deleted, acked)."""
    deleted = acked = 0
    for n in range(0, len(ids), _PAGE):
        chunk = ids[n : n + _PAGE]
        async with redis.pipeline(transaction=True) as pipe:
            for g in groups:
                pipe.xack(stream, g, *chunk)
            pipe.xdel(stream, *chunk)
            res = await pipe.execute()
        acked += sum(int(x) for x in res[:-1])
        deleted += int(res[-1])
    return deleted, acked


async def _memories(store: Store, crit: _Criteria) -> list[Memory]:
    if crit.memory_ids is not None:
        return [m for m in await store.get(crit.tenant, sorted(crit.memory_ids)) if crit.memory(m)]
    found: list[Memory] = []
    offset: str | None = None
    while True:
        page, offset = await store.scroll(crit.tenant, 256, offset)
        found.extend(m for m in page if crit.memory(m))
        if offset is None:
            return found


async def _tombstone(redis: Redis, tenant: str, st: _State) -> None:
    ids = st.events | st.memories
    if ids:
        now = datetime.now(UTC).isoformat()
        added = await redis.hset(tombstones_key(tenant), mapping=dict.fromkeys(sorted(ids), now))
        st.add("tombstones", int(added))


async def _delete_memories(store: Store, tenant: str, st: _State) -> None:
    """Delete every known memory still stored (fetched first: notices need scope and kind)."""
    if st.memories:
        gone = await store.get(tenant, sorted(st.memories))
        st.deleted.update((m.id, m) for m in gone)
        st.add("memories", await store.delete(tenant, [m.id for m in gone]))


async def _pass(redis: Redis, store: Store, crit: _Criteria, st: _State, group: str | None) -> None:
    tenant, keys = crit.tenant, TenantKeys(crit.tenant)
    # 1. find: memories, then events (unconsumed and dead-lettered ones too) by criteria or
    #    provenance; read-only so far
    for m in await _memories(store, crit):
        st.memories.add(m.id)
        st.events.update(m.source_events)

    def event_hit(d: dict[str, Any] | None) -> bool:
        if d is None or not (crit.event(d) or d.get("id") in st.events):
            return False
        if isinstance(d.get("id"), str):
            st.events.add(d["id"])
            st.memories.add(point_id(tenant, d["id"]))
        return True

    doomed_events = [
        eid async for eid, f in _scan(redis, keys.events, st) if event_hit(_json(f.get("e")))
    ]
    in_ledger = await find_variants(
        redis,
        tenant,
        lambda v: (
            v.event_id in st.events
            or crit.holds(
                crit.id_of(v.event_id), v.scope, v.subject, [v.agent], label_level(v.label)
            )
        ),
    )
    st.events.update(eid for _, eid in in_ledger)
    cut = len(slot_prefix(tenant))
    st.slots.update(key[cut:] for key, _ in in_ledger)
    doomed_dlq, origins = [], []
    async for eid, f in _scan(redis, keys.dlq, st):
        if event_hit(_json(f.get("f:e"))):
            doomed_dlq.append(eid)
            origins.append(f.get("origin_id", ""))
    known_events, known_memories = len(st.events), len(st.memories)
    # 2. tombstones first: from here on a writer's guarded commit refuses these ids
    await _tombstone(redis, tenant, st)
    # 3. stream entries, their PEL ids and error notes
    groups = [g for g in await _groups(redis, keys.events) if group is None or g == group]
    deleted, acked = await _delete_entries(redis, keys.events, doomed_events, groups)
    st.add("events", deleted)
    st.add("pending", acked)
    st.add("dlq", (await _delete_entries(redis, keys.dlq, doomed_dlq, []))[0])
    st.add("ledger", await drop_variants(redis, in_ledger))
    if st.events:  # the LLM consolidator's records (its reason may quote the event)
        await redis.hdel(writes_key(tenant), *sorted(st.events))
    notes = [i for i in [*doomed_events, *origins] if i]
    if notes:
        st.add("errors", int(await redis.hdel(errors_key(tenant), *notes)))
    # 4. memories
    await _delete_memories(store, tenant, st)
    # 5. the change feed, last: a writer that committed during this pass is already visible.
    #    A change goes if any memory it carries is erased or matches; only the memories that
    #    match join the erasure (a conflict naming an erased loser must not take its winner).
    doomed_changes: list[str] = []
    for eid, f in [x async for x in _scan(redis, keys.changes, st)]:
        c = _json(f.get("c"))
        if c is None or (c.get("op") == "delete" and _bare(c)):  # erasure's own notices
            continue
        scope, subject, sens = c.get("scope"), c.get("subject"), _level(c.get("sensitivity"))
        hit = False
        for part in carried(c):
            if (
                part.memory_id in st.memories
                or not st.events.isdisjoint(part.event_ids)
                or crit.holds(part.memory_id, scope, subject, part.agents, part.sensitivity)
            ):
                hit = True
                if c.get("op") == "delete":  # names only what it deleted and what caused it
                    continue
                st.events.update(part.event_ids)
                if isinstance(part.memory_id, str):
                    st.memories.add(part.memory_id)
        if hit:
            doomed_changes.append(eid)
            if crit.fenced_in(scope, sens):
                st.add("changes_seen", 1)
    if len(st.events) > known_events or len(st.memories) > known_memories:
        # provenance found only in the feed: bury it now, and let a next pass read the event
        # streams from the start
        await _tombstone(redis, tenant, st)
        await _delete_memories(store, tenant, st)
        st.cursors.pop(keys.events, None)
        st.cursors.pop(keys.dlq, None)
    changes_groups = await _groups(redis, keys.changes)
    st.dropped += (await _delete_entries(redis, keys.changes, doomed_changes, changes_groups))[0]
    # the report counts the entries the caller could read; one carrying erased content beside
    # content the caller may not read (a conflict) goes too, uncounted
    st.add("changes", st.counts.pop("changes_seen", 0))


async def _notify(redis: Redis, tenant: str, memories: Iterable[Memory]) -> int:
    """One ``delete`` change per erased memory: ids, scope and kind only (no content, subject)."""
    rows = [
        Change(
            op="delete",
            memory_id=m.id,
            tenant=tenant,
            scope=m.scope,
            kind=m.kind,
            sensitivity=m.sensitivity,
        ).to_fields()
        for m in memories
    ]
    if rows:
        async with redis.pipeline(transaction=False) as pipe:
            for r in rows:
                pipe.xadd(TenantKeys(tenant).changes, r)  # type: ignore[arg-type]
            await pipe.execute()
    return len(rows)


async def _rewrite_aof(redis: Redis, tenant: str) -> str:
    return await rewrite_aof(redis, tombstones_key(tenant))


async def _stream_node_entries(redis: Redis, tenant: str) -> int | None:
    try:
        conf = await redis.config_get(
            "stream-node-max-entries", **node_of(redis, tombstones_key(tenant))
        )
        value: Any = conf.get("stream-node-max-entries")
        return int(value) if value is not None else None
    except (ResponseError, ValueError):
        return None  # CONFIG refused (the compose ACL users, managed Redis): unknown


async def forget(
    redis: Redis,
    store: Store,
    tenant: str,
    *,
    memory_ids: Sequence[str] | None = None,
    subject: str | None = None,
    agent: str | None = None,
    scope: str | None = None,
    within: Within | None = None,
    group: str | None = None,
    notify: bool = True,
    rewrite: Callable[[str, list[str]], Awaitable[int]] | None = None,
) -> ErasureReport:
    """Erase what matches every criterion given (``scope``: that scope and below).

    ``within(scope, sensitivity)``: only what it accepts is touched (``Bus.forget`` passes the
    caller's read grant and clearance, or its erase right, so a forget cannot reach what the
    caller may not read). A change entry carrying erased content goes whatever ``within`` says,
    but the report counts only those ``within`` accepts.
    ``group``: the consumer group whose PEL to clear (None: every group on the stream).
    ``notify``: publish a content-free ``delete`` change per erased memory so subscribers can
    drop cached copies.
    ``rewrite(tenant, slots)``: materialise again the ledger slots that lost events and kept
    others (``Consolidator.rewrite``), so a surviving version of a key carries no time or agent
    of an erased one.
    """
    validate_name(tenant, "tenant")
    if memory_ids is None and subject is None and agent is None and scope is None:
        raise InvalidInput(
            "forget needs at least one criterion: memory_ids, subject, agent or scope"
        )
    crit = _Criteria(
        tenant=tenant,
        memory_ids=frozenset(check_ids(memory_ids)) if memory_ids is not None else None,
        subject=subject,
        agent=validate_name(agent, "agent") if agent is not None else None,
        scope=validate_scope(scope) if scope is not None else None,
        within=within,
    )
    log = get_logger("membus.erasure").bind(tenant=tenant)
    st = _State()
    try:
        for _ in range(_PASSES):
            await _pass(redis, store, crit, st, group)
            if not st.found:
                break  # nothing matched: no second scan, and nothing for the AOF to drop
        if st.found:
            if rewrite is not None and st.slots:
                await rewrite(tenant, sorted(st.slots))
            await forget_access(redis, tenant, sorted(st.memories))  # recall statistics too
            if isinstance(store, Shredder):  # after the tombstones: no key can be minted again
                st.add("keys", await store.shred(tenant, sorted(st.memories)))
            notices = await _notify(redis, tenant, st.deleted.values()) if notify else 0
            aof = await _rewrite_aof(redis, tenant)
        else:
            notices, aof = 0, "skipped"
        node_entries = await _stream_node_entries(redis, tenant)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    report = ErasureReport(
        tenant=tenant,
        **st.counts,
        notices=notices,
        memory_ids=sorted(st.memories),
        event_ids=sorted(st.events),
        aof_rewrite=aof,
        stream_node_entries=node_entries,
    )
    if node_entries is not None and node_entries != 1:
        log.warning(
            "erasure.stream_nodes_shared",
            stream_node_entries=node_entries,
            hint="set stream-node-max-entries 1: deleted entries keep their bytes until then",
        )
    log.info(
        "erasure.done",
        **report.model_dump(
            include={"memories", "events", "pending", "dlq", "changes", "errors", "keys"}
        ),
    )
    return report


# -- the writer's side --------------------------------------------------------------------------
