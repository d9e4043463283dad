"""TTL sweep: memories whose time ran out leave the store, not just the results.

Recall already hides an expired memory (its ``valid_to`` has passed). This pass, run by writers
in their quiet time (``runtime.maintain_loop``), deletes it: the slot gets a cut-off at its newest
event, exactly like a retraction, so every event it held is withdrawn (its text dropped from the
ledger) and a later assertion of the same fact starts a fresh memory. Slots wait in a sorted set
scored by expiry time (``consolidating.expiry_key``), written in the same MULTI as the memory.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from redis.exceptions import WatchError

from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.writer.commit import Consolidator, changes_for, expires, expiry_key
from membus.writer.consolidate import materialize
from membus.writer.ledger import cutoff, slot_key

_BATCH = 64


async def sweep(c: Consolidator, tenant: str, now: float | None = None) -> int:
    """Withdraw up to a batch of expired slots of ``tenant``; returns how many."""
    at = time.time() if now is None else now
    raw: Any = await c.redis.zrangebyscore(expiry_key(tenant), "-inf", at, start=0, num=_BATCH)
    done = 0
    for slot in (str(x) for x in raw):
        done += await _expire(c, tenant, slot, at)
    return done


async def _expire(c: Consolidator, tenant: str, slot: str, at: float) -> int:
    key, keys = slot_key(tenant, slot), TenantKeys(tenant)
    for _ in range(50):
        async with c.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                [state] = (await c.ledger.read(tenant, [slot])).values()
                until = expires(materialize(tenant, state, c.config))
                if until is None or until > at:  # renewed by a newer event, or already gone
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    if until is None:
                        await c.redis.zrem(expiry_key(tenant), slot)
                    return 0
                newest = max(v.created_at for v in state.variants)
                plan = materialize(tenant, replace(state, retracted_at=newest), c.config)
                existed = await c.write(tenant, [plan], {})
                pipe.multi()  # type: ignore[no-untyped-call]
                current = state.retracted_at
                if current is None or newest > current:
                    pipe.hset(key, "ret", cutoff(newest))
                if plan.withdrawn:
                    pipe.hdel(key, *[f"e:{w}" for w in plan.withdrawn])
                pipe.zrem(expiry_key(tenant), slot)
                for fields in changes_for([plan], set()):
                    pipe.xadd(keys.changes, fields)  # type: ignore[arg-type]
                await pipe.execute()
                get_logger("membus.expiry").info(
                    "expiry.withdrawn", tenant=tenant, slot=slot, memories=len(existed)
                )
                return 1
            except WatchError:
                continue
    return 0
