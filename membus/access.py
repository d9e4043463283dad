"""Access statistics per memory: how often recall returned it, and when last.

Kept in one hash per tenant (``TenantKeys.access``): ``n:<memory id>`` counts, ``t:<memory id>``
holds the last time in epoch milliseconds. Recall bumps the memories it returns in one pipelined
round trip, best effort: statistics are a ranking hint, so a failure to record them is logged and
never fails the recall that produced them. Erasure drops them (``forget_access``): a forgotten
memory leaves no trace, not even how often it was read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from membus.keys import TenantKeys
from membus.streams import REDIS_DOWN, Redis, unavailable

_log = structlog.get_logger("membus.access")
# what a best-effort call swallows: Redis down, and any refusal (an ACL without HINCRBY, OOM)
_BEST_EFFORT = (*REDIS_DOWN, RedisError)


class Access(BaseModel):
    """Recall statistics of one memory (zero and None: never returned by recall)."""

    model_config = ConfigDict(frozen=True)
    count: int = 0
    last_at: datetime | None = None


def _fields(memory_id: str) -> tuple[str, str]:
    return f"n:{memory_id}", f"t:{memory_id}"


async def bump_access(
    redis: Redis, tenant: str, memory_ids: Sequence[str], now_ms: int | None = None
) -> bool:
    """Count one access to each of ``memory_ids`` at ``now_ms`` (default: now); False (logged)
    when Redis refused.

    Not a transaction: the counts are hints, and a pipeline costs one round trip either way.
    Concurrent recalls may store last times slightly out of order; the counts stay exact.
    """
    ids = list(dict.fromkeys(memory_ids))
    if not ids:
        return True
    key, at = TenantKeys(tenant).access, str(now_ms or int(time.time() * 1000))
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                n, t = _fields(mid)
                pipe.hincrby(key, n, 1)
                pipe.hset(key, t, at)
            await pipe.execute()
    except _BEST_EFFORT as exc:
        _log.warning("access.bump_failed", tenant=tenant, memories=len(ids), error=repr(exc))
        return False
    return True


async def read_access(redis: Redis, tenant: str, memory_ids: Sequence[str]) -> dict[str, Access]:
    """Statistics of each of ``memory_ids`` (never-accessed ones included, at zero): one HMGET.
    Raises ``Unavailable`` when Redis is down."""
    ids = list(dict.fromkeys(memory_ids))
    if not ids:
        return {}
    fields = [f for mid in ids for f in _fields(mid)]
    try:
        raw: Any = await redis.hmget(TenantKeys(tenant).access, fields)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    out = {}
    for i, mid in enumerate(ids):
        n, t = raw[2 * i], raw[2 * i + 1]
        last = datetime.fromtimestamp(int(t) / 1000, UTC) if t is not None else None
        out[mid] = Access(count=int(n or 0), last_at=last)
    return out


async def read_access_best_effort(
    redis: Redis, tenant: str, memory_ids: Sequence[str]
) -> dict[str, Access]:
    """As ``read_access``, but an empty answer (logged) instead of an error: for ranking by heat."""
    try:
        return await read_access(redis, tenant, memory_ids)
    except (*_BEST_EFFORT, ValueError) as exc:  # ValueError: a field someone else wrote badly
        _log.warning("access.read_failed", tenant=tenant, error=repr(exc))
        return {}


async def forget_access(redis: Redis, tenant: str, memory_ids: Sequence[str]) -> int:
    """The erasure hook: drop every statistic of ``memory_ids``; returns how many fields went.
    Not best effort: erasure must know when something is left behind (raises ``Unavailable``).
    """
    fields = [f for mid in dict.fromkeys(memory_ids) for f in _fields(mid)]
    if not fields:
        return 0
    try:
        return int(await redis.hdel(TenantKeys(tenant).access, *fields))
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
