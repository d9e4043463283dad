"""See and manage memories: get, list, history, update, delete, export and import.

Every operation here is a read or a write like recall and publish, behind the same gate: reads
ask for the ``recall`` grant (scopes and clearance), so a memory an agent may not read looks
exactly like one that does not exist (``NotFound`` for both); writes go through the event log
(``Bus.publish_many``), never around it, so an update is a new version a writer consolidates and
an import is a batch of events, signed by the importing agent.

Pages come newest first, by when each version began to hold (``valid_from``; a keyed fact's
``created_at`` is when its key was first recorded). A cursor is that instant of the last memory
returned plus the ids returned at that instant, so a page boundary inside a burst of memories
with one timestamp neither skips nor repeats any.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from membus.access.gate import Identity, ReadGrant
from membus.bus.draft import Draft, Receipt
from membus.core.envelope import validate_scope
from membus.core.keys import TenantKeys
from membus.errors import Conflict, InvalidInput, NotFound
from membus.store.port import Memory, RecallFilter, check_ids
from membus.stream.tombstones import tombstoned
from membus.writer.consolidate import RETRACTION, label_of

if TYPE_CHECKING:
    from membus.bus.api import Bus
    from membus.bus.erasure import ErasureReport

MAX_PAGE = 1000
# a page boundary compares created_at as the store's float seconds: ids within this of the last
# one count as "at that instant" (finer than any two memories need, coarser than float rounding)
_SAME_INSTANT_S = 1e-5
# one export page; one import batch (one pipelined XADD, one gate call per scope)
_EXPORT_PAGE = 500
_IMPORT_BATCH = 500


class MemoryPage(BaseModel):
    """One page of ``list``: memories newest first, and the cursor of the next page (None: that
    was the last)."""

    model_config = ConfigDict(frozen=True)
    memories: list[Memory]
    cursor: str | None = None


class ImportReport(BaseModel):
    """What ``import_memories`` did: events published (one per memory new to this tenant) and
    records skipped because an earlier import already brought them in, and records erased here
    since they were exported (a restore never undoes a forget)."""

    model_config = ConfigDict(frozen=True)
    tenant: str
    published: int = 0
    skipped: int = 0
    erased: int = 0  # exported before a forget that erased it here: not brought back
    event_ids: list[str] = Field(default_factory=list)


# -- cursors ----------------------------------------------------------------------------------


def _next(page: Sequence[Memory], after: tuple[float, set[str]] | None) -> tuple[float, set[str]]:
    """The position after ``page``: its last instant and every id returned near that instant,
    on this page and, when the instant barely moved, on the pages before it.

    The next page asks for what began up to ``last + _SAME_INSTANT_S`` (rounded to the
    microsecond by ``datetime``), so "near" here is twice that: every id that bound can let
    back in is in the set, whatever the rounding."""
    last = _began(page[-1])
    near = 2 * _SAME_INSTANT_S
    same = {m.id for m in page if _began(m) - last <= near}
    if after is not None and after[0] - last <= near:
        same |= after[1]
    return last, same


def _began(m: Memory) -> float:
    return (m.valid_from or m.created_at).timestamp()


def _encode_cursor(at: tuple[float, set[str]]) -> str:
    raw = orjson.dumps({"t": at[0], "ids": sorted(at[1])})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, set[str]]:
    bad = InvalidInput(
        "cursor is not one this server returned",
        [{"field": "cursor", "problem": "not a cursor from a previous page"}],
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = orjson.loads(raw)
        at, ids = float(doc["t"]), doc["ids"]
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad
    return at, set(check_ids(ids))


# -- reads ------------------------------------------------------------------------------------


async def _read_grant(bus: Bus, who: Identity, scopes: Sequence[str] | None) -> ReadGrant:
    for s in scopes or ():
        validate_scope(s)
    return await bus.gate.grant(who, "recall", scopes)


async def _visible(bus: Bus, who: Identity, memory_id: str) -> tuple[Memory, ReadGrant]:
    """The memory as ``who`` may see it, or ``NotFound``: the same answer for absent and not
    readable, so an id cannot probe a scope the caller may not read."""
    [wanted] = check_ids([memory_id])
    found = await bus.store.get(who.tenant, [wanted])
    grant = await bus.gate.grant(who, "recall", [found[0].scope] if found else None)
    if not found or not grant.admits(found[0].scope, found[0].sensitivity):
        await bus.audit_read(who, None, grant, [])
        raise NotFound(f"no memory {memory_id!r} that agent {who.agent!r} can see")
    return found[0].seen_by(grant.clearance), grant


async def get(bus: Bus, who: Identity, memory_id: str) -> Memory:
    memory, grant = await _visible(bus, who, memory_id)
    await bus.audit_read(who, [memory.scope], grant, [memory.id])
    return memory


async def list_memories(
    bus: Bus,
    who: Identity,
    *,
    scopes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    subjects: Sequence[str] | None,
    agents: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
    limit: int,
    cursor: str | None,
) -> MemoryPage:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE}",
            [{"field": "limit", "problem": f"between 1 and {MAX_PAGE}"}],
        )
    after = _decode_cursor(cursor) if cursor is not None else None
    grant = await _read_grant(bus, who, scopes)
    if grant.empty:
        await bus.audit_read(who, scopes, grant, [])
        if scopes:
            raise bus.denied(who, "recall", scopes, grant)
        return MemoryPage(memories=[])
    flt = RecallFilter(
        tenant=who.tenant,
        scopes=list(scopes) if scopes is not None else None,
        grant=grant,
        kinds=list(kinds) if kinds is not None else None,
        subjects=list(subjects) if subjects is not None else None,
        agents=list(agents) if agents is not None else None,
        since=since,
        until=until,
        as_of=as_of,
    )
    page = await _page(bus, flt, limit, after)
    await bus.audit_read(who, scopes, grant, [m.id for m in page])
    nxt = _encode_cursor(_next(page, after)) if len(page) == limit else None
    return MemoryPage(memories=page, cursor=nxt)


async def _page(
    bus: Bus, flt: RecallFilter, limit: int, after: tuple[float, set[str]] | None
) -> list[Memory]:
    """Up to ``limit`` memories of ``flt`` older than the cursor ``after``, newest first."""
    if after is None:
        return await bus.store.browse(flt, limit)
    at, seen = after
    # at or before the last instant returned, minus what was returned at that instant
    bound = datetime.fromtimestamp(at + _SAME_INSTANT_S, UTC)
    found = await bus.store.browse(flt.model_copy(update={"began_by": bound}), limit + len(seen))
    return [m for m in found if m.id not in seen][:limit]


async def history(
    bus: Bus,
    who: Identity,
    memory_id: str | None,
    *,
    scope: str | None,
    subject: str | None,
    key: str | None,
    limit: int,
) -> list[Memory]:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    if memory_id is not None:
        if subject is not None or key is not None:
            raise InvalidInput("history of memory_id, or of subject + key, not both")
        memory, grant = await _visible(bus, who, memory_id)
        if memory.slot is None:  # written before consolidation: it is its only version
            await bus.audit_read(who, [memory.scope], grant, [memory.id])
            return [memory]
        flt = RecallFilter(
            tenant=who.tenant,
            scopes=[memory.scope],
            include_subscopes=False,
            grant=grant,
            slots=[memory.slot],
            versions=True,
        )
        scopes: list[str] | None = [memory.scope]
    else:
        if subject is None or key is None:
            raise InvalidInput(
                "history needs memory_id, or subject + key",
                [{"field": "memory_id", "problem": "missing (or give subject and key)"}],
            )
        scopes = [scope] if scope is not None else None
        grant = await _read_grant(bus, who, scopes)
        if grant.empty:
            await bus.audit_read(who, scopes, grant, [])
            if scopes:
                raise bus.denied(who, "recall", scopes, grant)
            return []
        flt = RecallFilter(
            tenant=who.tenant,
            scopes=scopes,
            include_subscopes=False,
            grant=grant,
            subjects=[subject],
            keys=[key],
            versions=True,
        )
    versions = await bus.store.browse(flt, limit)
    await bus.audit_read(who, scopes, grant, [m.id for m in versions])
    return versions


async def export(
    bus: Bus,
    who: Identity,
    *,
    scopes: Sequence[str] | None,
    as_of: datetime | None,
) -> AsyncIterator[Memory]:
    """Every memory ``who`` may read: every version (current, superseded, expired) when
    ``as_of`` is None, else what held at ``as_of``; newest first, read page by page from the
    store (complete: not bounded by the change feed's retention)."""
    grant = await _read_grant(bus, who, scopes)
    if grant.empty:
        await bus.audit_read(who, scopes, grant, [])
        if scopes:
            raise bus.denied(who, "recall", scopes, grant)
        return
    flt = RecallFilter(
        tenant=who.tenant,
        scopes=list(scopes) if scopes is not None else None,
        grant=grant,
        as_of=as_of,
        versions=as_of is None,
    )
    after: tuple[float, set[str]] | None = None
    total = 0
    while True:
        page = await _page(bus, flt, _EXPORT_PAGE, after)
        for m in page:
            yield m
        total += len(page)
        if len(page) < _EXPORT_PAGE:
            break
        after = _next(page, after)
    # one record for the whole export: that it happened and how much went (ids would be huge)
    await bus.audit_read(who, scopes, grant, [], count=total)


# -- writes -----------------------------------------------------------------------------------


async def update(
    bus: Bus,
    who: Identity,
    memory_id: str,
    content: str,
    *,
    metadata: dict[str, Any] | None,
    label: str | None,
) -> Receipt:
    """A new version through the log. A keyed fact gets the next version of its key; any other
    memory is withdrawn (a retraction of its slot, which takes the forget right) and its new text
    published in the same all-or-nothing batch."""
    memory, _ = await _visible(bus, who, memory_id)
    if memory.history:
        raise Conflict(
            f"memory {memory_id!r} is a superseded version of {memory.subject!r}/{memory.key!r}; "
            "update the current one (see history)"
        )
    draft: dict[str, Any] = {
        "content": content,
        "scope": memory.scope,
        "kind": memory.kind,
        "subject": memory.subject,
        "key": memory.key,
        "metadata": memory.metadata if metadata is None else metadata,
        "label": label or label_of(memory.sensitivity),
    }
    if memory.key is not None:
        [receipt] = await bus.publish_many(who, [_draft(draft)])
        return receipt
    if memory.slot is None:
        raise InvalidInput(f"memory {memory_id!r} predates consolidation; forget it instead")
    now = datetime.now(UTC)
    withdraw = Draft(
        content=f"update of memory {memory_id}",
        scope=memory.scope,
        kind=RETRACTION,
        subject=memory.subject,
        metadata={"retracts": memory.slot},
        created_at=now,
    )
    # after the retraction's cut-off: the same text with new metadata lands in the same slot
    draft["created_at"] = now + timedelta(milliseconds=1)
    receipts = await bus.publish_many(who, [withdraw, _draft(draft)])
    return receipts[1]


def _draft(fields: dict[str, Any]) -> Draft:
    try:
        return Draft.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(f"invalid update: {exc}") from None


async def delete(bus: Bus, who: Identity, memory_id: str) -> ErasureReport:
    memory, _ = await _visible(bus, who, memory_id)
    return await bus.forget(who, memory_ids=[memory.id])


def parse_jsonl(lines: Iterable[str | bytes]) -> list[Memory]:
    """Memories from export lines (blank lines skipped); ``InvalidInput`` names the bad line."""
    out: list[Memory] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Memory.model_validate_json(line))
        except ValidationError as exc:
            problems = [
                {"field": f"line {n}: {'.'.join(str(p) for p in e['loc'])}", "problem": e["msg"]}
                for e in exc.errors()
            ]
            raise InvalidInput(f"line {n} is not an exported memory", problems) from None
    return out


def to_jsonl(memory: Memory) -> bytes:
    """One export line: the memory's JSON, newline-terminated."""
    return memory.__pydantic_serializer__.to_json(memory) + b"\n"


async def import_memories(bus: Bus, who: Identity, records: Sequence[Memory]) -> ImportReport:
    """Publish each exported memory as an event of ``who`` into the memory's scope, dated as it
    was (``created_at``), so writers rebuild the same current values, history and ``as_of``
    answers. A memory already imported into this tenant (by its exported id), or still in it,
    is skipped, so importing a file twice changes nothing."""
    key = TenantKeys(who.tenant).imports
    report = ImportReport(tenant=who.tenant)
    unique = list({m.id: m for m in records}.values())
    await bus.check_publish(who, [m.scope for m in unique])  # all or nothing, before any read
    for start in range(0, len(unique), _IMPORT_BATCH):
        batch = unique[start : start + _IMPORT_BATCH]
        done = await bus.redis.hmget(key, [m.id for m in batch])
        # erased here since it was exported: restoring the file must not bring it back
        gone = await tombstoned(
            bus.redis, who.tenant, [i for m in batch for i in (m.id, *m.source_events)]
        )
        dead = [m for m in batch if gone.intersection((m.id, *m.source_events))]
        dead_ids = {m.id for m in dead}
        # still here (an export restored into the tenant it came from): nothing to bring back
        here = {m.id for m in await bus.store.get(who.tenant, [m.id for m in batch])}
        fresh = [
            m
            for m, d in zip(batch, done, strict=True)
            if d is None and m.id not in dead_ids and m.id not in here
        ]
        report = report.model_copy(update={"erased": report.erased + len(dead)})
        if not fresh:
            report = report.model_copy(update={"skipped": report.skipped + len(batch) - len(dead)})
            continue
        drafts = [_draft(_import_fields(m)) for m in fresh]
        receipts = await bus.publish_many(who, drafts)
        await bus.redis.hset(
            key, mapping={m.id: r.event_id for m, r in zip(fresh, receipts, strict=True)}
        )
        report = report.model_copy(
            update={
                "published": report.published + len(fresh),
                "skipped": report.skipped + len(batch) - len(fresh) - len(dead),
                "event_ids": [*report.event_ids, *(r.event_id for r in receipts)],
            }
        )
    return report


def _import_fields(m: Memory) -> dict[str, Any]:
    if m.kind == RETRACTION:
        raise InvalidInput(f"memory {m.id!r}: retractions are not memories to import")
    return {
        "content": m.content,
        "scope": m.scope,
        "kind": m.kind,
        "subject": m.subject,
        "key": m.key,
        "metadata": m.metadata,
        "label": label_of(m.sensitivity),
        # when this version began to hold: a keyed version's created_at is its key's first one
        "created_at": m.valid_from or m.created_at,
    }
