"""Access statistics per memory: how often recall returned it, and when last.

Kept in one hash per tenant (``TenantKeys.access``): ``n:<memory id>`` counts, ``t:<memory id>``
holds the last time in epoch milliseconds. Recall hands the memories it returns to an
``AccessLog``, which writes them a few milliseconds later in one pipelined round trip, off the
request path, best effort: statistics are a ranking hint, so a failure to record them is logged
and never fails the recall that produced them. Erasure drops them (``forget_access``; the bus
flushes its buffer first): a forgotten memory leaves no trace, not even how often it was read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from membus.core.flusher import Flusher
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable

_log = get_logger("membus.access")
# what a best-effort call swallows: Redis down, and any refusal (an ACL without HINCRBY, OOM)
_BEST_EFFORT = (*REDIS_DOWN, RedisError)


class Access(BaseModel):
    """Recall statistics of one memory (zero and None: never returned by recall)."""

    model_config = ConfigDict(frozen=True)
    count: int = 0
    last_at: datetime | None = None


def _fields(memory_id: str) -> tuple[str, str]:
    return f"n:{memory_id}", f"t:{memory_id}"


# One script call per tenant: redis-py costs ~20 µs per pipelined command in Python, and a
# recall of k memories made 2k of them (HINCRBY and HSET each); in Lua each costs a few µs.
# ARGV holds (memory id, count, last time in ms) triples. EVAL, not EVALSHA, as the audit log
# does (membus/access/audit.py): a pipeline cannot fall back on NOSCRIPT.
_BUMP = """
for i = 1, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[1], 't:' .. ARGV[i], ARGV[i + 2])
end
return #ARGV / 3
"""
_CHUNK = 1000  # memories per script call: bounds how long one call holds Redis


async def _write(redis: Redis, bumps: dict[str, tuple[Counter[str], dict[str, int]]]) -> None:
    """Per tenant: add each memory's count, set its last time. One round trip, not atomic."""
    async with redis.pipeline(transaction=False) as pipe:
        for tenant, (counts, last) in bumps.items():
            key = TenantKeys(tenant).access
            args = [x for mid, n in counts.items() for x in (mid, n, last[mid])]
            for start in range(0, len(args), 3 * _CHUNK):
                pipe.eval(_BUMP, 1, key, *args[start : start + 3 * _CHUNK])
        await pipe.execute()


async def bump_access(
    redis: Redis, tenant: str, memory_ids: Sequence[str], now_ms: int | None = None
) -> bool:
    """Count one access to each of ``memory_ids`` at ``now_ms`` (default: now) right away;
    False (logged) when Redis refused. Concurrent recalls may store last times slightly out of
    order; the counts stay exact."""
    ids = list(dict.fromkeys(memory_ids))
    if not ids:
        return True
    at = now_ms or int(time.time() * 1000)
    try:
        await _write(redis, {tenant: (Counter(ids), dict.fromkeys(ids, at))})
    except _BEST_EFFORT as exc:
        _log.warning("access.bump_failed", tenant=tenant, memories=len(ids), error=repr(exc))
        return False
    return True


class AccessLog(Flusher):
    """Recall's access bumps, buffered and written by a flusher (``run``) a few ms later.

    Without a running flusher (a bus used outside ``runtime.open``) a bump writes through. The
    buffer holds at most ``max_memories`` distinct memories; past that, bumps are dropped and
    counted in ``dropped`` (statistics are hints; memory must stay bounded while Redis is down).
    """

    def __init__(
        self, redis: Redis, *, flush_every_s: float = 0.005, max_memories: int = 100_000
    ) -> None:
        super().__init__(flush_every_s)
        self.redis = redis
        self.max_memories = max_memories
        self.dropped = 0
        self._bumps: dict[str, tuple[Counter[str], dict[str, int]]] = {}
        self._size = 0

    async def bump(self, tenant: str, memory_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(memory_ids))
        if not ids:
            return
        if not self.flushing:
            await bump_access(self.redis, tenant, ids)
            return
        counts, last = self._bumps.setdefault(tenant, (Counter(), {}))
        at = int(time.time() * 1000)
        for mid in ids:
            if mid not in counts and self._size >= self.max_memories:
                self.dropped += 1
                continue
            self._size += mid not in counts
            counts[mid] += 1
            last[mid] = at
        self._poke()

    async def flush(self) -> None:
        """Write what is buffered now; best effort (a failure is logged, the batch dropped)."""
        async with self._flush_lock:
            await self._flush_buffer()

    async def _flush_buffer(self) -> None:
        if not self._bumps:
            return
        batch, self._bumps, self._size = self._bumps, {}, 0
        try:
            await _write(self.redis, batch)
        except _BEST_EFFORT as exc:
            lost = sum(len(c) for c, _ in batch.values())
            _log.warning("access.flush_failed", memories=lost, error=repr(exc))

    async def _flush_in_background(self) -> None:
        await self.flush()  # never raises

    async def read(self, tenant: str, memory_ids: Sequence[str]) -> dict[str, Access]:
        """``read_access`` after writing what is buffered: a caller sees its own recalls."""
        await self.flush()
        return await read_access(self.redis, tenant, memory_ids)

    async def read_best_effort(self, tenant: str, memory_ids: Sequence[str]) -> dict[str, Access]:
        await self.flush()
        return await read_access_best_effort(self.redis, tenant, memory_ids)

    async def aclose(self) -> None:
        """Stop the flusher and write what is left."""
        await self._stop()
        await self.flush()


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
