"""The writer's commit when consolidation is on: ledger first, then the store, then the ack.

Per batch: add every event to its slot (``Ledger.add``; erased events are refused there,
atomically with erasure's tombstones); WATCH the tombstones and the touched slots; read the slots
back; materialise them (``consolidate.materialize``); write the store (upserts, then deletes of
points that must no longer exist); and in one MULTI, XADD the change entries and XACK the batch.
If a slot or the tombstones changed before EXEC, the whole read-materialise-write runs again, so
the store always ends holding what the ledger says (see ``membus/writer/ledger.py``).

A writer killed anywhere in this leaves its entries pending; the redelivery adds nothing new to
the ledger (HSETNX) and rewrites the same memories under the same ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import numpy as np
from redis.exceptions import WatchError

from membus.core.config import ConsolidationConfig
from membus.core.envelope import Event
from membus.core.keys import PREFIX, TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import Redis
from membus.embed.port import Vectors
from membus.recall.heat import forget_access
from membus.store.port import LEVELS, Memory, Store
from membus.stream.feed import Change, announce_deletes, upsert_fields
from membus.stream.ops import XADD_MANY, xadd_many_args
from membus.stream.tombstones import tombstones_key
from membus.writer.consolidate import Plan, materialize
from membus.writer.ledger import Item, Ledger, slot_key

Embed = Callable[[list[str]], Awaitable[Vectors]]
# each round that fails lost a race to another writer that committed: progress is made
_MAX_ROUNDS = 50


def _predecessors(upserts: Sequence[Memory], i: int) -> list[int]:
    """The versions that ``upserts[i]`` (a keyed slot's versions, oldest first) ends for some
    clearance: going back, each one whose readers (together with ``i``'s) may read no version
    between the two."""
    out: list[int] = []
    level = upserts[i].sensitivity
    between = LEVELS  # the lowest label seen between j and i: none yet
    for j in range(i - 1, -1, -1):
        if between > max(level, upserts[j].sensitivity):
            out.append(j)
        between = min(between, upserts[j].sensitivity)
        if between <= level:  # every earlier version has this one between it and i
            break
    return out


def changes_for(plans: Sequence[Plan], batch: set[str]) -> list[dict[str, bytes]]:
    """Change entries for what this batch changed: memories it fed, the versions they
    superseded, and conflicts it took part in. Points that existed and are gone have theirs
    from ``Consolidator.write``, before they go."""
    out: list[dict[str, bytes]] = []
    for plan in plans:
        fed = [i for i, m in enumerate(plan.upserts) if not batch.isdisjoint(m.source_events)]
        # who hears of each memory: a fed one, its readers; a predecessor that got a valid_to,
        # only the readers of both it and its successor, and only those for whom it is the
        # predecessor (a version between them that they may read already ended it for them)
        told: dict[int, int] = {i: plan.upserts[i].sensitivity for i in fed}
        for i in fed:
            for j in _predecessors(plan.upserts, i):
                s = max(plan.upserts[i].sensitivity, plan.upserts[j].sensitivity)
                told[j] = min(told.get(j, s), s)
        for i in sorted(told):
            m = plan.upserts[i]
            if told[i] != m.sensitivity:
                m = m.model_copy(update={"sensitivity": told[i]})
            out.append(upsert_fields(m, m.source_events))
        for c in plan.conflicts:
            if batch.isdisjoint(c.winner.source_events) and batch.isdisjoint(c.loser.source_events):
                continue
            detail = {
                "superseded": c.loser.id,
                "superseded_content": c.loser.content,
                "superseded_agents": c.loser.agents,
                # provenance, so erasure finds this entry by the loser's events too
                "superseded_events": c.loser.source_events,
                "superseded_sensitivity": c.loser.sensitivity,
                "rule": "newest version wins (created_at, then event id)",
            }
            change = Change.of("conflict", c.winner, c.winner.source_events, detail=detail)
            sens = max(c.winner.sensitivity, c.loser.sensitivity)
            out.append(change.model_copy(update={"sensitivity": sens}).to_fields())
    return out


def expiry_key(tenant: str) -> str:
    """Slots whose current memory has a TTL, scored by when it runs out
    (``membus/writer/expiry.py``)."""
    return f"{PREFIX}:{{{tenant}}}:slots:expiry"


def expires(plan: Plan) -> float | None:
    """When the slot's current memory expires (a TTL, not a newer version), if it does: for a
    key, when the current version of every clearance has (the sweep withdraws the whole slot,
    and a version current to lower readers must not go with a hidden one that expired)."""
    ends: list[datetime | None] = []
    for c in range(LEVELS):
        seen = [m.seen_by(c) for m in plan.upserts if m.sensitivity <= c]
        current = [m for m in seen if not m.history]
        if current:
            ends.append(current[-1].valid_to)
    if not ends or None in ends:
        return None
    return max(e.timestamp() for e in ends if e is not None)


class Consolidator:
    def __init__(
        self, redis: Redis, store: Store, embed: Embed, config: ConsolidationConfig, group: str
    ) -> None:
        self.redis, self.store, self.embed, self.config = redis, store, embed, config
        self.group = group
        self.ledger = Ledger(redis)
        self.rounds = 0  # read-materialise-write rounds run (more than commits: contention)
        self._log = get_logger("membus.consolidate")

    async def commit(
        self,
        via: Redis,
        keys: TenantKeys,
        stream: str,
        events: Sequence[tuple[str, Event]],
        items: Sequence[Item],
        vectors: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Commit ``events`` (entry id, event) with their ledger ``items``; returns how many
        memories were written. ``vectors`` maps contents already embedded to their vector."""
        tenant = keys.tenant
        known = dict(vectors or {})
        # embed first: an event whose text cannot be embedded must fail before it is in the
        # ledger, where it would sink every later rewrite of its slot
        fresh = sorted({e.content for _, e in events} - known.keys())
        if fresh:
            known.update(zip(fresh, await self.embed(fresh), strict=True))
        batch = {e.id for _, e in events}
        for _ in range(_MAX_ROUNDS):
            self.rounds += 1
            resolved = await self.ledger.add(tenant, items)
            refused = {items[i].event_id for i, r in enumerate(resolved) if r is None}
            # in publish order, so the change feed follows it
            landed: dict[str, list[Item]] = {}
            for item, r in zip(items, resolved, strict=True):
                if r is not None:
                    landed.setdefault(r, []).append(item)
            slots = list(landed)
            alone = {s: its[0] for s, its in landed.items() if len(its) == 1}
            watched = [tombstones_key(tenant), *(slot_key(tenant, s) for s in slots)]
            async with via.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watched)
                    states = await self.ledger.read(tenant, slots, alone)
                    plans = [materialize(tenant, states[s], self.config) for s in slots]
                    await self.write(tenant, plans, known, sorted(batch - refused))
                    entries = changes_for(plans, batch - refused)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for args in xadd_many_args(entries):  # one call, not an XADD each
                        pipe.eval(XADD_MANY, 1, keys.changes, *args)
                    for slot, plan in zip(slots, plans, strict=True):
                        if plan.withdrawn:  # the cut-off keeps refusing them: drop the text
                            pipe.hdel(slot_key(tenant, slot), *[f"e:{w}" for w in plan.withdrawn])
                        if (until := expires(plan)) is not None:  # for the expiry sweep
                            pipe.zadd(expiry_key(tenant), {slot: until})
                    pipe.xack(stream, self.group, *[eid for eid, _ in events])
                    drop = [eid for eid, e in events if e.id in refused]
                    if drop:  # erased while in flight: no trace in the stream either
                        pipe.xdel(stream, *drop)
                    await pipe.execute()
                    return sum(len(p.upserts) for p in plans)
                except WatchError:
                    continue  # a slot or a tombstone moved under us: read and write again
        raise WatchError(f"slots of tenant {tenant!r} kept changing for {_MAX_ROUNDS} rounds")

    async def rewrite(self, tenant: str, slots: Sequence[str]) -> int:
        """Materialise ``slots`` again from the ledger as it is now, after erasure dropped some
        of their events: what survives must carry nothing of what went (a key's first-recorded
        time, a predecessor's validity, a folded agent). Returns the slots rewritten."""
        keys, done = TenantKeys(tenant), 0
        for slot in slots:
            for _ in range(_MAX_ROUNDS):
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(tombstones_key(tenant), slot_key(tenant, slot))
                        states = await self.ledger.read(tenant, [slot])
                        plan = materialize(tenant, states[slot], self.config)
                        await self.write(tenant, [plan], {})
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for fields in changes_for([plan], set()):
                            pipe.xadd(keys.changes, fields)  # type: ignore[arg-type]
                        await pipe.execute()
                        done += 1
                        break
                    except WatchError:
                        continue  # a writer or another erasure moved it: read it again
        return done

    async def write(
        self,
        tenant: str,
        plans: Sequence[Plan],
        known: dict[str, np.ndarray],
        caused: Sequence[str] = (),
    ) -> list[Memory]:
        """Upsert what the plans keep, delete what they drop; returns the deleted that existed.

        Each deleted memory's change (naming the events in ``caused``) reaches the feed before
        the point goes, not in the caller's MULTI after it: a caller that runs again (a slot
        moved before its EXEC) or a redelivery (the writer died after the delete) found the
        point gone and no longer told subscribers, who kept a withdrawn memory. A death between
        the two tells them twice, which a delete bears (``stream.feed.announce_deletes``)."""
        upserts = [m for p in plans for m in p.upserts]
        if upserts:
            missing = sorted({m.content for m in upserts} - known.keys())
            if missing:
                fresh = await self.embed(missing)
                known.update(zip(missing, fresh, strict=True))
            await self.store.upsert(upserts, np.stack([known[m.content] for m in upserts]))
        # a merge's survivor may take the loser's point id (its earliest event): keep it
        kept = {m.id for m in upserts}
        deletes = sorted({i for p in plans for i in p.deletes} - kept)
        if not deletes:
            return []
        existed = await self.store.get(tenant, deletes)
        if existed:
            await announce_deletes(self.redis, tenant, existed, caused)
            gone = [m.id for m in existed]
            await self.store.delete(tenant, gone)
            await forget_access(self.redis, tenant, gone)  # its recall statistics go with it
        return existed
