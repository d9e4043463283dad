"""Tombstones: the ids erasure leaves behind.

``forget`` writes an erased event's id and its memory's id into ``membus:{tenant}:tombstones``
before it deletes anything. A writer checks them before writing (``erased``), its ledger script
refuses tombstoned events, and its commit WATCHes the key (``membus/writer/commit.py``), so a
redelivered or replayed event, or one a writer was holding while the erasure ran, can never
bring a memory back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from membus.core.keys import PREFIX
from membus.core.redis import REDIS_DOWN, Pipe, Redis, unavailable
from membus.store.port import point_id


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
