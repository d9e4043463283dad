"""Tombstones: the ids erasure leaves behind, and the writer's commit that honours them.

``forget`` writes an erased event's id and its memory's id into ``membus:{tenant}:tombstones``
before it deletes anything. A writer checks them before writing (``erased``) and again inside its
commit (``commit_unless_erased`` WATCHes the key), so a redelivered or replayed event, or one a
writer was holding while the erasure ran, can never bring a memory back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import WatchError

from membus.keys import PREFIX, TenantKeys
from membus.store import Memory, point_id
from membus.streams import REDIS_DOWN, Pipe, Redis, unavailable


def tombstones_key(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:tombstones"


async def _tombstoned(redis: Redis | Pipe, tenant: str, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    found: Any = await redis.hmget(tombstones_key(tenant), list(ids))
    return {i for i, v in zip(ids, found, strict=True) if v is not None}


async def tombstoned(redis: Redis, tenant: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` (event or memory ids, as given) were erased: one HMGET."""
    try:
        return await _tombstoned(redis, tenant, list(dict.fromkeys(ids)))
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


async def is_tombstoned(redis: Redis, tenant: str, event_id: str) -> bool:
    return bool(await tombstoned(redis, tenant, [event_id]))


async def erased(redis: Redis, tenant: str, event_ids: Sequence[str]) -> set[str]:
    """The writer's check before it writes: which events were erased, by their own id or by
    the id of the memory they would make. One HMGET for the batch."""
    mids = {e: point_id(tenant, e) for e in event_ids}
    dead = await tombstoned(redis, tenant, [*mids, *mids.values()])
    return {e for e, m in mids.items() if e in dead or m in dead}


async def commit_unless_erased(
    redis: Redis,
    tenant: str,
    stream: str,
    group: str,
    entries: Sequence[tuple[str, str]],
    changes: Sequence[tuple[Memory, Mapping[str, bytes]]],
) -> set[str]:
    """The writer's commit: in one MULTI, XADD each memory's change entry and XACK every
    ``(entry id, event id)`` of the batch, except that erased ones are not written: a memory
    whose id or source event is tombstoned gets no change entry, and the stream entries of
    erased events are deleted (a replayed copy must not linger either).

    The tombstones key is WATCHed from the check to EXEC, so a forget landing in between makes
    EXEC fail and the check run again. Returns the ids of the memories skipped: the caller
    deletes them from the store (it upserted them before this call, and forget may have swept
    the store already).
    """
    keys = TenantKeys(tenant)
    ids = sorted(
        {i for e_id, ev in entries for i in (ev, point_id(tenant, ev))}
        | {i for m, _ in changes for i in (m.id, *m.source_events)}
    )
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(tombstones_key(tenant))
                dead = await _tombstoned(pipe, tenant, ids)
                skipped = {
                    m.id for m, _ in changes if m.id in dead or not dead.isdisjoint(m.source_events)
                }
                gone = dead | {e for m, _ in changes if m.id in skipped for e in m.source_events}
                drop = [eid for eid, ev in entries if ev in gone or point_id(tenant, ev) in dead]
                pipe.multi()  # type: ignore[no-untyped-call]
                for m, fields in changes:
                    if m.id not in skipped:
                        pipe.xadd(keys.changes, dict(fields))  # type: ignore[arg-type]
                if entries:
                    pipe.xack(stream, group, *[eid for eid, _ in entries])
                if drop:
                    pipe.xdel(stream, *drop)
                await pipe.execute()
                return skipped
            except WatchError:
                continue  # a forget wrote tombstones meanwhile: check again
