"""Near-duplicate merging: a background pass over slots written since it last looked.

Writers queue every unkeyed slot they write (``membus:{tenant}:slots:dirty``). When a writer is
idle, or with a model while the model embeds its next batch, it takes the tenant's lease and,
slot by slot in id order, searches the store for the nearest current memory of the same scope
(exactly), kind, subject and label. At cosine >= the threshold the two slots merge: every live
event of one moves into the other (the slot with the smaller id survives, whichever came first),
the moved one points ``into`` the survivor so later repeats follow it, and the survivor is
rewritten with the newer wording and the union of provenance. Numbers are facts: texts whose
numbers differ never merge, however close.

Why a pass and not the writer's commit: a search per event would cost the ingest path a store
query each; batched here, it fills idle time and the model's. Near-duplicates are not an
equivalence (a ~ b and b ~ c do not give a ~ c), so with chains the grouping can depend on
arrival order; with clusters whose members are all similar to each other it does not.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from redis.exceptions import WatchError

from membus.core.config import ConsolidationConfig
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis
from membus.embed.port import Vectors
from membus.errors import Unavailable
from membus.store.filters import RecallFilter
from membus.store.port import Hit, Memory, numbers, numbers_key
from membus.writer.commit import Consolidator, changes_for
from membus.writer.consolidate import SlotState, materialize, slot_scope
from membus.writer.ledger import dirty_key, slot_key

_LEASE_MS = 30_000
_K = 5  # neighbours looked at per slot


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


@runtime_checkable
class BatchSearch(Protocol):
    """An engine that runs many filtered dense searches as one batch (``EdgeStore``)."""

    async def search_batch(
        self, queries: Sequence[tuple[Vectors, RecallFilter]], k: int, min_score: float
    ) -> list[list[Hit]]: ...


@runtime_checkable
class StoredVectors(Protocol):
    """An engine that returns the dense vectors it stores (``EdgeStore``, over a socket too)."""

    async def vectors(self, tenant: str, ids: Sequence[str]) -> dict[str, Vectors]: ...


def _neighbours(tenant: str, m: Memory) -> RecallFilter:
    """Where a near-duplicate of ``m`` may be: its exact scope, kind and subject, the same
    numbers, and not its own slot (else every search's first hit). In the filter, not only in
    ``mergeable``: the k nearest are then all candidates (a nearer text with other numbers
    cannot crowd out a true near-duplicate), and a text with numbers searches only the
    memories that share them, not its whole group."""
    return RecallFilter(
        tenant=tenant,
        scopes=[m.scope],
        include_subscopes=False,
        kinds=[m.kind],
        subjects=[m.subject] if m.subject is not None else None,
        numbers=numbers_key(m.content),
        exclude_slots=[m.slot] if m.slot is not None else None,
    )


def _current(tenant: str, state: SlotState, config: ConsolidationConfig) -> Memory | None:
    """The one current memory of an unkeyed slot, or None (keyed, merged away, withdrawn)."""
    plan = materialize(tenant, state, config)
    return plan.upserts[0] if len(plan.upserts) == 1 and not state.keyed else None


def _stale(found: dict[str, str | None], survivor: str, loser: str) -> list[str]:
    """The answers a merge of ``loser`` into ``survivor`` changed, to search again: those that
    name either (the loser's memory is gone, the survivor's reworded).

    Every other memory is as it was, so every other answer stands: one naming a third slot
    still names a neighbour at or above the threshold (the survivor's new wording may be
    nearer, but the survivor is queued again by the merge and its own search finds that
    pair); one of "no neighbour" could change only by the survivor's wording, likewise.
    Searching every slot still ahead again instead made the pass search each queued slot
    about four times (3k MiniLM texts, one merge in ten), when its searches cost most of it."""
    return [s for s, other in found.items() if other in (survivor, loser)]


class NearDuplicates:
    def __init__(self, consolidator: Consolidator, config: ConsolidationConfig) -> None:
        self.c, self.config = consolidator, config
        self.redis: Redis = consolidator.redis
        self.merged = 0
        # queued slots were left after the last sweep: the writer's next read must not block
        # (block_ms, 200 ms by default) before the next sweep, or a backlog of n slots costs
        # n / limit of those waits: 20k queued slots after a bulk ingest spent a minute idle
        self.backlog = False
        self.swept = 0  # slots looked at so far: housekeeping waits until this stops moving
        self._token = secrets.token_hex(8)
        self._log = get_logger("membus.neardup")

    async def pending(self, tenant: str) -> int:
        return int(await self.redis.zcard(dirty_key(tenant)))

    async def sweep(self, tenants: Sequence[str], limit: int = 64) -> int:
        """Look at up to ``limit`` queued slots per tenant whose lease we get; returns merges."""
        self.backlog = False
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
                # only after a pass that worked: a failing one must not spin the writer
                self.backlog = self.backlog or bool(await self.redis.zcard(dirty_key(tenant)))
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
        self.swept += len(queued)
        states = await self.c.ledger.read(tenant, queued)
        current = {s: _current(tenant, states[s], self.config) for s in queued}
        vectors = await self._stored(tenant, [m for m in current.values() if m is not None])
        texts = sorted({m.content for m in current.values() if m is not None} - vectors.keys())
        # what the store could not give: one batch, far faster for a model
        vectors |= await self._vectors(tenant, texts)
        # checked, no neighbour: they leave the queue in one ZREM, always before the next merge
        # (which may queue one of them again as its survivor). A repeat landing meanwhile has
        # the same text: it would find no other neighbour either.
        looked: list[str] = []
        found: dict[str, str | None] = {}
        # a merge's two slots: the loser left the queue in the merge, the survivor is queued
        # again by it; what this pass read of either is stale, so it leaves them to the next
        merged: set[str] = set()
        for n, slot in enumerate(queued):
            if slot in merged:
                continue
            if slot not in found:
                # searched in one batch: the first slot, then after each merge the slots still
                # ahead that it may have changed (see _stale)
                redo = [s for s in queued[n:] if s not in found and s not in merged]
                asked = [
                    (m, vectors[m.content]) if (m := current[s]) and m.content in vectors else None
                    for s in redo
                ]
                found |= dict(zip(redo, await self._nearest(tenant, asked), strict=True))
            other = found[slot]
            if other is None:
                looked.append(slot)
                continue
            await self._done(tenant, looked)
            looked = []
            # a slot merged earlier in this pass is re-checked under WATCH by _merge
            survivor, loser = sorted((slot, other))
            await self._merge(tenant, survivor, loser, vectors)
            merges += 1
            merged |= {survivor, loser}
            for s in _stale(found, survivor, loser):
                del found[s]
        await self._done(tenant, looked)
        self.merged += merges
        return merges

    async def _done(self, tenant: str, slots: list[str]) -> None:
        if slots:
            await self.redis.zrem(dirty_key(tenant), *slots)

    async def _stored(self, tenant: str, memories: Sequence[Memory]) -> dict[str, np.ndarray]:
        """The vectors the writers stored with these memories, by content: each is its
        content's embedding, so the pass embeds nothing again (with a model, embedding was
        half the cost of ingest). Engines that cannot say give none."""
        store = self.c.store
        if not memories or not isinstance(store, StoredVectors):
            return {}
        found = await store.vectors(tenant, [m.id for m in memories])
        return {m.content: found[m.id] for m in memories if m.id in found}

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

    async def _nearest(
        self, tenant: str, asked: Sequence[tuple[Memory, np.ndarray] | None]
    ) -> list[str | None]:
        """Per memory (None: nothing to look for), the slot of its nearest mergeable neighbour
        at cosine >= the threshold, if any (dense only: no text)."""
        threshold = self.config.near_duplicate
        assert threshold is not None
        wanted = [a for a in asked if a is not None]
        queries = [(np.asarray([v]), _neighbours(tenant, m)) for m, v in wanted]
        store = self.c.store
        if isinstance(store, BatchSearch):  # one planned batch, hits under threshold dropped
            found = await store.search_batch(queries, _K, threshold) if queries else []
        else:
            found = [await store.search(v, flt, _K) for v, flt in queries]
        slots = iter(
            next(
                (h.memory.slot for h in hits if h.score >= threshold and mergeable(m, h.memory)),
                None,
            )
            for (m, _), hits in zip(wanted, found, strict=True)
        )
        return [None if a is None else next(slots) for a in asked]

    async def _merge(
        self, tenant: str, survivor: str, loser: str, known: dict[str, np.ndarray]
    ) -> None:
        """Move the loser's live events into the survivor and rewrite both, atomically;
        ``known``: vectors by content, so the survivor's wording is not embedded again."""
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
                    moving = [
                        v
                        for v in gone.variants
                        if (cut := gone.cut_for(v.label)) is None or v.created_at > cut
                    ]
                    joined = SlotState(
                        survivor,
                        keep.variants + moving,
                        keep.retracted_at,
                        None,
                        keep.erased,
                        keep.retracted_up_to,
                    )
                    left = SlotState(
                        loser,
                        gone.variants,
                        gone.retracted_at,
                        survivor,
                        gone.erased,
                        gone.retracted_up_to,
                    )
                    plans = [materialize(tenant, s, self.config) for s in (joined, left)]
                    # the survivor's new wording may be the neighbour's, which this pass did not
                    # queue: its stored vector, not a model call (~10 ms with MiniLM)
                    vectors = dict(known)
                    missing = {m.content for p in plans for m in p.upserts} - vectors.keys()
                    if missing:
                        stored = [_current(tenant, s, self.config) for s in (keep, gone)]
                        vectors |= await self._stored(
                            tenant, [m for m in stored if m is not None and m.content in missing]
                        )
                    moved = {v.event_id for v in moving}
                    await self.c.write(tenant, plans, vectors, sorted(moved))
                    entries = changes_for(plans, moved)
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
                        "neardup.merged",
                        tenant=tenant,
                        survivor=survivor,
                        merged=loser,
                        events=len(moved),
                    )
                    return
                except WatchError:
                    continue
