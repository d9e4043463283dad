"""Near-duplicate merging: a background pass over slots written since it last looked.

Writers queue every unkeyed slot they write (``membus:{tenant}:slots:dirty``). When a writer is
idle it takes the tenant's lease and, slot by slot in id order, searches the store for the
nearest current memory of the same scope (exactly), kind, subject and label. At cosine >= the
threshold the two slots merge: every live event of one moves into the other (the slot with the
smaller id survives, whichever came first), the moved one points ``into`` the survivor so later
repeats follow it, and the survivor is rewritten with the newer wording and the union of
provenance. Numbers are facts: texts whose numbers differ never merge, however close.

Why a pass and not the writer's commit: a search per event would cost the ingest path a store
query each; batched here, merges wait for idle time. Near-duplicates are not an equivalence (a
~ b and b ~ c do not give a ~ c), so with chains the grouping can depend on arrival order; with
clusters whose members are all similar to each other it does not.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog
from redis.exceptions import WatchError

from membus.config import ConsolidationConfig
from membus.consolidate import SlotState, materialize, slot_scope
from membus.consolidating import Consolidator, changes_for
from membus.errors import Unavailable
from membus.filters import RecallFilter
from membus.keys import TenantKeys
from membus.ledger import dirty_key, slot_key
from membus.store import Memory
from membus.streams import REDIS_DOWN, Redis

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_LEASE_MS = 30_000


def numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def mergeable(a: Memory, b: Memory) -> bool:
    """Same scope (exactly), kind, subject and label, unkeyed, and the same numbers."""
    return (
        a.slot is not None
        and b.slot is not None
        and a.slot != b.slot
        and not a.history
        and not b.history
        and a.key is None
        and b.key is None
        and (a.scope, a.kind, a.subject, a.sensitivity)
        == (b.scope, b.kind, b.subject, b.sensitivity)
        and numbers(a.content) == numbers(b.content)
    )


def _current(tenant: str, state: SlotState, config: ConsolidationConfig) -> Memory | None:
    """The one current memory of an unkeyed slot, or None (keyed, merged away, withdrawn)."""
    plan = materialize(tenant, state, config)
    return plan.upserts[0] if len(plan.upserts) == 1 and not state.keyed else None


class NearDuplicates:
    def __init__(self, consolidator: Consolidator, config: ConsolidationConfig) -> None:
        self.c, self.config = consolidator, config
        self.redis: Redis = consolidator.redis
        self.merged = 0
        self._token = secrets.token_hex(8)
        self._log = structlog.get_logger("membus.neardup")

    async def pending(self, tenant: str) -> int:
        return int(await self.redis.zcard(dirty_key(tenant)))

    async def sweep(self, tenants: Sequence[str], limit: int = 64) -> int:
        """Look at up to ``limit`` queued slots per tenant whose lease we get; returns merges."""
        if self.config.near_duplicate is None:
            return 0
        done = 0
        for tenant in tenants:
            lease = f"{dirty_key(tenant)}:lease"
            if not await self.redis.zcard(dirty_key(tenant)):
                continue
            if not await self.redis.set(lease, self._token, nx=True, px=_LEASE_MS):
                continue  # another writer is on it
            try:
                done += await self._tenant(tenant, limit)
            except (Unavailable, *REDIS_DOWN):
                raise
            except Exception as exc:  # housekeeping: it must never take the writer down
                self._log.warning("neardup.failed", tenant=tenant, error=repr(exc))
            finally:
                if await self.redis.get(lease) == self._token:
                    await self.redis.delete(lease)
        return done

    async def _tenant(self, tenant: str, limit: int) -> int:
        merges = 0
        raw: Any = await self.redis.zrange(dirty_key(tenant), 0, limit - 1)
        queued = [str(x) for x in raw]
        states = await self.c.ledger.read(tenant, queued)
        current = {s: _current(tenant, states[s], self.config) for s in queued}
        texts = sorted({m.content for m in current.values() if m is not None})
        vectors = await self._vectors(tenant, texts)  # one batch: far faster for a model
        for slot in queued:
            m = current[slot]
            other = None
            if m is not None and m.content in vectors:
                other = await self._nearest(tenant, m, vectors[m.content])
            if other is None:
                # a repeat landing meanwhile has the same text: it would find no other neighbour
                await self.redis.zrem(dirty_key(tenant), slot)
                continue
            # a slot merged earlier in this pass is re-checked under WATCH by _merge
            await self._merge(tenant, *sorted((slot, other)))
            merges += 1
        self.merged += merges
        return merges

    async def _vectors(self, tenant: str, texts: list[str]) -> dict[str, np.ndarray]:
        """Embed ``texts``; if the batch fails, one by one, leaving out those that fail."""
        try:
            return dict(zip(texts, await self.c.embed(texts), strict=True)) if texts else {}
        except (Unavailable, *REDIS_DOWN):
            raise
        except Exception:
            out = {}
            for t in texts:
                try:
                    [out[t]] = await self.c.embed([t])
                except (Unavailable, *REDIS_DOWN):
                    raise
                except Exception as exc:  # e.g. an embedder that fails on this text: skip it
                    self._log.warning("neardup.embed_failed", tenant=tenant, error=repr(exc))
            return out

    async def _nearest(self, tenant: str, m: Memory, vector: np.ndarray) -> str | None:
        threshold = self.config.near_duplicate
        assert threshold is not None
        flt = RecallFilter(
            tenant=tenant,
            scopes=[m.scope],
            include_subscopes=False,
            kinds=[m.kind],
            subjects=[m.subject] if m.subject is not None else None,
        )
        hits = await self.c.store.search(np.asarray([vector]), flt, 5)  # dense cosine: no text
        for h in hits:
            if h.score >= threshold and mergeable(m, h.memory):
                return h.memory.slot
        return None

    async def _merge(self, tenant: str, survivor: str, loser: str) -> None:
        """Move the loser's live events into the survivor and rewrite both, atomically."""
        keys = TenantKeys(tenant)
        watched = [slot_key(tenant, survivor), slot_key(tenant, loser)]
        for _ in range(50):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watched)
                    states = await self.c.ledger.read(tenant, [survivor, loser])
                    keep, gone = states[survivor], states[loser]
                    if (
                        keep.merged_into
                        or gone.merged_into
                        or slot_scope(keep.slot) != slot_scope(gone.slot)
                    ):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        await self.redis.zrem(dirty_key(tenant), loser)
                        return
                    cut = gone.retracted_at
                    moving = [v for v in gone.variants if cut is None or v.created_at > cut]
                    joined = SlotState(
                        survivor, keep.variants + moving, keep.retracted_at, None, keep.erased
                    )
                    left = SlotState(loser, gone.variants, cut, survivor, gone.erased)
                    plans = [materialize(tenant, s, self.config) for s in (joined, left)]
                    existed = await self.c._write(tenant, plans, {})
                    moved = {v.event_id for v in moving}
                    entries = changes_for(plans, existed, moved)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for v in moving:
                        pipe.hset(watched[0], f"e:{v.event_id}", v.to_json())
                    if gone.variants:
                        pipe.hdel(watched[1], *[f"e:{v.event_id}" for v in gone.variants])
                    pipe.hset(watched[1], "into", survivor)
                    pipe.zrem(dirty_key(tenant), loser)
                    pipe.zadd(dirty_key(tenant), {survivor: 0})  # it may have a neighbour too
                    for fields in entries:
                        pipe.xadd(keys.changes, fields)  # type: ignore[arg-type]
                    await pipe.execute()
                    self._log.info(
                        "neardup.merged", tenant=tenant, survivor=survivor, merged=loser,
                        events=len(moved),
                    )  # fmt: skip
                    return
                except WatchError:
                    continue
