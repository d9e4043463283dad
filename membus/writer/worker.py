"""Memory-writer workers: consumer groups over every tenant's events stream.

One batch goes: read -> validate -> embed -> consolidate (membus/writer/commit.py: ledger, store
upsert, then XADD change events + XACK in one MULTI). Store before ack, deterministic ids: a writer
killed at any instant leaves its entries pending, another reclaims them (XAUTOCLAIM after
``min_idle_ms``) and rewrites the same memories; a live writer claims what it holds again
meanwhile, so a slow batch is not taken from it (``Writer._keep``). An entry that fails
``max_deliveries`` times, or cannot be parsed, is parked in the tenant's dead-letter stream with
the reason; the writer goes on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, ResponseError
from redis.typing import StreamIdT

from membus.access.audit import AuditLog, AuditRecord
from membus.access.gate import Gate, PrivateGate
from membus.access.signing import KeyRegistry
from membus.core.config import ConsolidationConfig, RetentionConfig, WorkerConfig
from membus.core.envelope import Event
from membus.core.keys import TenantKeys, tenant_of, tenants_added_key
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, NodeClients, Redis, rewrite_aof
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder, Vectors
from membus.errors import InvalidInput, Unavailable
from membus.store.port import Store
from membus.stream.dlq import park
from membus.stream.ops import BEAT_S, beat, ensure_group, retain, tenants
from membus.stream.reading import BatchReader
from membus.writer.admission import Parsed, admission_for
from membus.writer.advice import Advisor
from membus.writer.commit import Consolidator
from membus.writer.consolidate import MAX_LEVEL, RETRACTION
from membus.writer.ledger import Item, drop_parked
from membus.writer.llm import FallbackConsolidator
from membus.writer.neardup import NearDuplicates

Entry = tuple[str, dict[str, str] | None]


def _rejected(tenant: str, event: Event, reason: str) -> AuditRecord:
    return AuditRecord(
        tenant=tenant,
        agent=event.agent,
        action="publish",
        scope=event.scope,
        decision="deny",
        reason=f"writer: {reason}",
        event_ids=[event.id],
    )


class _BatchFailed(Exception):
    """The batch cannot be written as one; the writer retries its events one by one."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch read from one stream: parsed, embedded, not yet written or acknowledged."""

    keys: TenantKeys
    stream: str
    size: int
    events: list[tuple[str, Event]]
    items: list[list[Item]]  # each event's ledger writes
    vectors: Vectors | None  # each event's content, embedded


def consumer_name(n: int = 0) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{n}"


class Writer:
    def __init__(
        self,
        redis: Redis,
        store: Store,
        embedder: Embedder,
        config: WorkerConfig | None = None,
        *,
        consumer: str | None = None,
        retention: RetentionConfig | None = None,
        gate: Gate | None = None,
        keys: KeyRegistry | None = None,
        consolidation: ConsolidationConfig | None = None,
        llm: FallbackConsolidator | None = None,
    ) -> None:
        self.redis, self.store, self.embedder = redis, store, embedder
        gate = gate or PrivateGate()  # like the doors without a policy: agent/<self> only
        self.config = config or WorkerConfig()
        folding = consolidation or ConsolidationConfig()
        self._fold, self._queue = folding.enabled, folding.near_duplicate is not None
        self.consolidator = Consolidator(redis, store, self._embed, folding, self.config.group)
        self.neardup = NearDuplicates(self.consolidator, folding)
        self.advisor = Advisor(redis, store, self._embed, gate, llm) if llm else None
        self.admission = admission_for(redis, gate, keys or KeyRegistry(redis), self.config)
        self._audit = AuditLog(redis)
        self.retention = retention
        self.consumer = consumer or consumer_name()
        self._streams: list[str] = []
        self._announcing = False  # the group on the new-tenant announcements exists
        # on a cluster the commit MULTI goes straight to the slot's master (see NodeClients)
        self._nodes = NodeClients(redis) if isinstance(redis, RedisCluster) else None
        self._cluster = self._nodes is not None
        self._reader = BatchReader(redis, self.config, self.consumer, cluster=self._cluster)
        self._tenants_at = 0.0
        self._beat_at = 0.0
        self._reclaim_at = 0.0
        self._trim_at = time.monotonic()
        self._log = get_logger("membus.worker").bind(consumer=self.consumer)
        self.processed = 0
        self.parked = 0
        # tenants whose AOF still holds a dropped copy of erased content (see _purge_disk)
        self._aof_due: set[str] = set()

    # -- loop ---------------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished first."""
        self._log.info("writer.start", group=self.config.group)
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    await self.step()
                    backoff = 0.1
                except (Unavailable, *REDIS_DOWN) as exc:
                    self._log.warning("writer.unavailable", error=str(exc), retry_in_s=backoff)
                    with anyio.move_on_after(backoff):
                        await stop.wait()
                    backoff = min(backoff * 2, 5.0)
        finally:
            if self._nodes is not None:
                with anyio.CancelScope(shield=True):
                    await self._nodes.aclose()
        self._log.info("writer.stop", processed=self.processed, parked=self.parked)

    async def step(self) -> int:
        """One read and its commit (and, when due, reclaim and trim). Returns entries handled.
        Sequential: to overlap store writes, run more writer tasks (with Edge, in a writer process,
        whose Python then runs beside the shard owner's point building: membus/store/remote.py)."""
        handled = 0
        batch = await self._read()
        if batch:
            handled = await self._holding(batch)
        if self._aof_due:
            await self._purge_disk()
        if not handled and self._queue and self._reader.quiet:  # idle: merge near-duplicates
            await self.neardup.sweep([tenant_of(s) for s in self._streams])
        return handled

    async def _read(self) -> list[tuple[str, list[Entry]]]:
        """Housekeeping when due, then one read: each stream's new entries."""
        now = time.monotonic()
        if now >= self._beat_at:  # waiting publishers tell "no writer" from "behind" by it
            await beat(self.redis, self.config.group, self.consumer)
            self._beat_at = now + BEAT_S
        if now >= self._tenants_at:
            await self._refresh_streams()
            self._tenants_at = now + self.config.tenants_refresh_s
        if now >= self._reclaim_at:
            await self.reclaim()
            self._reclaim_at = now + self.config.reclaim_every_s
        if self.retention is not None and now >= self._trim_at:
            await self.trim()
            self._trim_at = now + self.retention.every_s
        announced = tenants_added_key()
        try:
            idle_work = self.neardup.backlog and self._reader.quiet  # then do not wait to read
            # the announcements stream too: a new tenant's first event wakes this read
            batch = await self._reader.read([*self._streams, announced], block=not idle_work)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._log.warning("writer.group_missing", error=str(exc))
            await self._refresh_streams(recreate=True)
            return []
        news = [ids for stream, ids in batch if stream == announced]
        if news:  # read its events now, not on the next periodic refresh
            await self.redis.xack(announced, self.config.group, *[i for i, _ in news[0]])
            await self._refresh_streams()
            self._tenants_at = time.monotonic() + self.config.tenants_refresh_s
        return [(s, list(entries)) for s, entries in batch if s != announced and entries]

    async def _refresh_streams(self, recreate: bool = False) -> None:
        known = set(self._streams)
        if recreate or not self._announcing:
            # from now on: a writer starting later finds older tenants in the registry
            await ensure_group(self.redis, tenants_added_key(), self.config.group, start="$")
            self._announcing = True
        streams = [TenantKeys(t).events for t in await tenants(self.redis)]
        for s in streams:
            if recreate or s not in known:
                await ensure_group(self.redis, s, self.config.group)
        self._streams = streams

    # -- processing ---------------------------------------------------------------------------

    async def process(self, stream: str, entries: Sequence[Entry]) -> int:
        """Parse, embed and commit ``entries`` of ``stream``; returns how many were handled."""
        return await self._holding([(stream, list(entries))])

    async def _holding(self, batch: list[tuple[str, list[Entry]]]) -> int:
        """Prepare and write each stream's entries, keeping them claimed by this writer from
        the read to the commit (``_keep``); returns how many entries were handled."""
        held: dict[str, list[StreamIdT]] = {s: [i for i, _ in entries] for s, entries in batch}
        done = anyio.Event()
        handled = 0
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep, held, done)
                try:
                    for stream, entries in batch:
                        handled += await self._write(await self._prepare(stream, entries))
                finally:
                    done.set()
        except BaseExceptionGroup as group:
            # a task group wraps what its body raises; ``_keep`` raises nothing, so this is the
            # body's one error, raised as it was: the writer's back-off expects Unavailable
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return handled

    async def _keep(self, held: dict[str, list[StreamIdT]], done: anyio.Event) -> None:
        """While batches are in hand, claim their entries for this writer again every third of
        ``min_idle_ms``: XCLAIM with JUSTID restarts an entry's idle time and leaves its
        delivery count alone. Another writer reclaims entries idle that long, to recover a dead
        writer's; a live but slow writer's were taken too (a model embeds a batch of 256 in
        about a second, the embedded default reclaims after one): a third of the events of two
        writers with such a model were embedded and committed twice, and each time counted
        towards ``max_deliveries``, past which a healthy event is parked as poison."""
        every = self.config.min_idle_ms / 3000
        while True:
            with anyio.move_on_after(every):
                await done.wait()
            if done.is_set():
                return
            for stream, ids in held.items():
                try:
                    await self.redis.xclaim(
                        stream, self.config.group, self.consumer, 0, ids, justid=True
                    )
                except Exception as exc:  # best effort: the batch's own calls report an outage
                    self._log.warning("writer.keep_failed", stream=stream, error=repr(exc))

    async def _prepare(self, stream: str, entries: Sequence[Entry]) -> Prepared:
        """Validate (parking what cannot be parsed) and embed; nothing is acknowledged yet."""
        tenant = tenant_of(stream)
        keys = TenantKeys(tenant)
        parsed: list[Parsed] = []
        invalid: list[tuple[str, dict[str, str], str]] = []
        gone: list[str] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed or deleted while pending
                gone.append(entry_id)
                continue
            try:
                event = Event.from_json(fields.get("e", ""))
                if event.tenant != tenant:
                    raise InvalidInput(f"event tenant {event.tenant!r} on stream of {tenant!r}")
                parsed.append((entry_id, fields, event))
            except InvalidInput as exc:
                invalid.append((entry_id, fields, str(exc)))
        screened = await self.admission.screen(tenant, parsed)
        if invalid:
            await self._park(keys, stream, invalid, reason="invalid")
        for reason in sorted({r[2] for r in screened.rejected}):
            rejected = [r for r in screened.rejected if r[2] == reason]
            await self._park(keys, stream, [(r[0], r[1], r[3]) for r in rejected], reason=reason)
            await self._audit.record_many([_rejected(tenant, r[4], reason) for r in rejected])
        if screened.erased:  # erased while in flight: leave no trace, not even a dead letter
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, self.config.group, *screened.erased)
                pipe.xdel(stream, *screened.erased)
                await pipe.execute()
            self._aof_due.add(tenant)  # the copy's XADD is still in the AOF on disk
        if gone:
            await self.redis.xack(stream, self.config.group, *gone)
        events, items = await self._items(keys, stream, screened.admitted)
        vectors = None
        if events:
            try:
                vectors = await self._embed_and_sweep([e.content for _, e in events])
            except (Unavailable, *REDIS_DOWN):
                raise
            except Exception as exc:  # one bad text must not sink the batch: see _write
                self._log.warning("writer.batch_embed_failed", tenant=tenant, error=repr(exc))
        return Prepared(keys, stream, len(entries), events, items, vectors)

    async def _embed_and_sweep(self, texts: list[str]) -> Vectors:
        """Embed ``texts``; with a model, run the near-duplicate pass on committed slots
        meanwhile. The model runs in a worker thread without the GIL for a second or so a batch,
        while the event loop waits: a sweep (~1.5 ms a slot) fits beside it. Left for idle
        time only, merges never came under sustained load, and after a bulk ingest the pass ran
        alone on one core for a fifth of the total time (10k MiniLM events)."""
        if not self._queue or isinstance(self.embedder, HashingEmbedder):
            return await self._embed(texts)  # hashing takes microseconds: nothing to fill
        embedded = anyio.Event()

        async def sweep() -> None:
            try:
                while not embedded.is_set():
                    await self.neardup.sweep([tenant_of(s) for s in self._streams])
                    if not self.neardup.backlog:
                        return
            except Exception as exc:  # housekeeping; Redis down reaches the batch's own calls
                self._log.warning("writer.sweep_failed", error=repr(exc))

        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep)
            try:
                vectors = await self._embed(texts)
            except Exception as exc:  # raised below: the task group would wrap it in a group
                failed = exc
            finally:
                embedded.set()  # the sweep in hand finishes (one pass: <= 64 slots a tenant)
        if failed is not None:
            raise failed
        return vectors

    async def _items(
        self, keys: TenantKeys, stream: str, events: list[tuple[str, Event]]
    ) -> tuple[list[tuple[str, Event]], list[list[Item]]]:
        """Each event's ledger writes (the LLM's, when one advises); a retraction naming no
        target of its scope is parked."""
        kept: list[tuple[str, Event]] = []
        items: list[Item] = []
        bad: list[tuple[str, dict[str, str], str]] = []
        for entry_id, event in events:
            try:
                clearance = MAX_LEVEL
                if event.kind == RETRACTION:  # it withdraws only what its author may read there
                    clearance = await self.admission.clearance(event)
                items.append(
                    Item.of(event, fold=self._fold, queue=self._queue, clearance=clearance)
                )
                kept.append((entry_id, event))
            except InvalidInput as exc:
                bad.append((entry_id, {"e": event.to_json().decode()}, str(exc)))
        if bad:
            await self._park(keys, stream, bad, reason="invalid")
        if self.advisor is not None and kept:
            return kept, await self.advisor.items(keys.tenant, [e for _, e in kept], items)
        return kept, [[i] for i in items]

    async def _embed(self, texts: list[str]) -> Vectors:
        if isinstance(self.embedder, HashingEmbedder):  # ~30 µs a text: not worth a thread hop
            return self.embedder.embed(texts)
        return await anyio.to_thread.run_sync(self.embedder.embed, texts)

    async def _write(self, p: Prepared) -> int:
        """Commit a prepared batch; if it fails as a whole, isolate the poison event(s)."""
        keys, stream, events, tenant = p.keys, p.stream, p.events, p.keys.tenant
        if not events:
            return p.size
        try:
            if p.vectors is None:
                raise _BatchFailed("embedding the batch failed")
            known = {e.content: p.vectors[i] for i, (_, e) in enumerate(events)}
            await self._commit(keys, stream, events, [i for its in p.items for i in its], known)
        except (Unavailable, *REDIS_DOWN):
            raise
        except Exception as exc:
            self._log.warning("writer.batch_failed", tenant=tenant, error=repr(exc))
            for n, one in enumerate(events):
                try:
                    await self._commit(keys, stream, [one], p.items[n])
                except (Unavailable, *REDIS_DOWN):
                    raise
                except Exception as exc1:
                    # left pending: reclaimed later, parked after max_deliveries
                    await self._note_error(keys, one[0], exc1)
                    self._log.warning(
                        "writer.event_failed", tenant=tenant, event_id=one[1].id, error=repr(exc1)
                    )
        return p.size

    async def _commit(
        self,
        keys: TenantKeys,
        stream: str,
        events: list[tuple[str, Event]],
        items: list[Item],
        known: dict[str, Any] | None = None,
    ) -> None:
        via: Redis = self._nodes.for_key(stream) if self._nodes is not None else self.redis
        try:
            await self.consolidator.commit(via, keys, stream, events, items, known)
        except (MovedError, AskError):
            assert self._nodes is not None  # only a cluster redirects
            await self._nodes.refresh()  # nothing was applied: EXEC never ran
            await self.consolidator.commit(self.redis, keys, stream, events, items, known)
        self.processed += len(events)

    async def _note_error(self, keys: TenantKeys, entry_id: str, exc: BaseException) -> None:
        key = keys.dlq_errors
        await self.redis.hset(key, entry_id, f"{type(exc).__name__}: {exc}"[:2000])
        await self.redis.expire(key, 7 * 24 * 3600)

    async def _park(
        self,
        keys: TenantKeys,
        stream: str,
        items: Sequence[tuple[str, dict[str, str], str]],
        *,
        reason: str,
        deliveries: dict[str, int] | None = None,
    ) -> None:
        await park(
            self.redis, keys, stream, self.config.group, items, reason=reason, deliveries=deliveries
        )
        self.parked += len(items)
        for entry_id, _, error in items:
            self._log.warning(
                "writer.parked", tenant=keys.tenant, entry=entry_id, reason=reason, error=error
            )

    # -- recovery -----------------------------------------------------------------------------

    async def _purge_disk(self) -> None:
        """A copy of erased content that arrived after its forget (a replay, a redelivery) was
        dropped, but the AOF on disk still holds the XADD that brought it: ask for a rewrite, and
        ask again later while another rewrite (which may have started before the drop) runs."""
        for tenant in sorted(self._aof_due):
            outcome = await rewrite_aof(self.redis, TenantKeys(tenant).events)
            if outcome != "in_progress":
                self._aof_due.discard(tenant)
            if outcome == "failed":
                self._log.warning("writer.aof_rewrite_refused", tenant=tenant)

    async def reclaim(self) -> int:
        """Take over entries idle on dead consumers; park those delivered too often."""
        handled = 0
        for stream in list(self._streams):
            cursor = "0-0"
            while True:
                try:
                    res = await self.redis.xautoclaim(
                        stream,
                        self.config.group,
                        self.consumer,
                        min_idle_time=self.config.min_idle_ms,
                        start_id=cursor,
                        count=self.config.batch_size,
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        await ensure_group(self.redis, stream, self.config.group)
                        break
                    raise
                cursor, claimed = res[0], res[1]
                deleted = res[2] if len(res) > 2 else []
                if deleted:
                    await self.redis.xack(stream, self.config.group, *deleted)
                if claimed:
                    handled += await self._retry(stream, claimed)
                if cursor in ("0-0", b"0-0"):
                    break
        return handled

    async def _retry(self, stream: str, claimed: list[Entry]) -> int:
        keys = TenantKeys(tenant_of(stream))
        ids = [eid for eid, _ in claimed]
        pending: list[dict[str, Any]] = await self.redis.xpending_range(
            stream,
            self.config.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) * 2,
            consumername=self.consumer,
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        over = [
            (eid, f) for eid, f in claimed if f and counts.get(eid, 1) > self.config.max_deliveries
        ]
        if over:
            errors: list[str | None] = await self.redis.hmget(  # type: ignore[assignment]
                keys.dlq_errors, [eid for eid, _ in over]
            )
            await self._park(
                keys,
                stream,
                [
                    (eid, f, err or "failed repeatedly")
                    for (eid, f), err in zip(over, errors, strict=True)
                ],
                reason="poison",
                deliveries=counts,
            )
            await drop_parked(self.redis, keys.tenant, [f.get("e") for _, f in over])
        over_ids = {eid for eid, _ in over}
        rest = [(eid, f) for eid, f in claimed if eid not in over_ids]
        if rest:
            await self.process(stream, rest)
        return len(claimed)

    async def trim(self) -> int:
        """Retention: drop what every group acknowledged and aged out. Never anything pending."""
        if self.retention is None:
            return 0
        return await retain(self.redis, self.retention, int(time.time() * 1000))
