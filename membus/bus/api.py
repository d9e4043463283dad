"""The bus: publish, recall, subscribe and drain, each on behalf of an identity.

``Bus`` holds the connections; ``Agent`` is a bus bound to one identity, which is what user code
passes around. Every door asks the gate first, so a permission engine plugs in without changing
this API.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import anyio
from pydantic import ValidationError

from membus.access.audit import AuditLog, AuditRecord
from membus.access.gate import Decision, Gate, Identity, ReadGrant, default_gate, own_root
from membus.access.redact import PiiRedactor, Redactor, needs_redaction, redact_event
from membus.access.signing import KeyRegistry, door_keys
from membus.bus import context as contexts
from membus.bus import erasure, memories
from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import ImportReport, MemoryPage
from membus.bus.retract import retract
from membus.bus.working import with_working
from membus.core.config import MembusConfig
from membus.core.envelope import Event, Label, invalid_from, scope_ancestors, validate_scope
from membus.core.ids import encode_id
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder, Vectors
from membus.errors import InvalidInput, PermissionDenied, Unavailable
from membus.recall import ranking
from membus.recall.heat import Access, AccessLog
from membus.recall.tokens import TokenCounter
from membus.store.port import Hit, Memory, RecallFilter, Store, check_ids
from membus.stream.committed import DEFAULT_WAIT_S, wait_committed
from membus.stream.feed import Change, follow, group_name
from membus.stream.ops import group_stats, idle, publish_signed, tenants
from membus.writer.admission import admission_for
from membus.writer.commit import Consolidator
from membus.writer.consolidate import RETRACTION
from membus.writer.ledger import dirty_key

MAX_K = 1000


class Bus:
    def __init__(
        self,
        redis: Redis,
        store: Store,
        embedder: Embedder,
        config: MembusConfig | None = None,
        gate: Gate | None = None,
        audit: AuditLog | None = None,
        keys: KeyRegistry | None = None,
    ) -> None:
        self.redis, self.store, self.embedder = redis, store, embedder
        self.config = config or MembusConfig()
        # no gate given: the one the configuration's mode names (a policy file needs the casbin
        # gate, which membus.open builds; without it nothing beyond agent/<self> is allowed)
        self.gate: Gate = gate or default_gate(self.config.policy)
        # both write straight through when no flusher runs (CLI one-shots); runtime.open runs them
        self.audit, self.access_log = audit or AuditLog(redis), AccessLog(redis)
        self.keys = keys or door_keys(redis, self.config.signing)
        # working memory shows only what writers will admit: their checks, with this gate
        self.admission = admission_for(redis, self.gate, self.keys, self.config.worker)
        self._redact_roots = set(self.config.policy.redact_scopes)
        self.redactor: Redactor = PiiRedactor()
        self._log = get_logger("membus.bus")

    def agent(self, name: str, tenant: str) -> Agent:
        """The agent ``name`` of ``tenant``: any ids (e-mail addresses, UUIDs, mixed case), each
        encoded into a membus name by ``membus.core.ids.encode_id`` (plain names stay as they
        are); ``Agent.name`` is the encoded name, ``Agent.id`` the id given."""
        try:
            identity = Identity.model_validate(
                {"tenant": encode_id(tenant, "tenant"), "agent": encode_id(name, "agent")}
            )
        except ValidationError as exc:
            raise invalid_from(exc, "identity") from None
        return Agent(self, identity, name)

    # -- write path ---------------------------------------------------------------------------

    async def publish_many(
        self,
        who: Identity,
        drafts: Sequence[Draft],
        *,
        wait: bool = False,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> list[Receipt]:
        """Validate all, check all, then XADD all in one pipelined round trip (all or nothing).
        A draft without a scope goes to ``agent/<who>``, the author's private scope.

        ``wait``: return only once writers committed every event (searchable), else raise
        ``NotCommitted`` after ``timeout_s`` (saying why: no writer, or writers behind) or
        ``Parked`` if writers dead-lettered one (with its reason); see membus/stream/committed.py.
        """
        own = own_root(who)
        events = [
            Event.build(
                tenant=who.tenant,
                agent=who.agent,
                **{"scope": own, **d.model_dump(exclude_none=True)},
            )
            for d in drafts
        ]
        # one gate call, and one audit record naming its events, per action and scope
        decided: dict[tuple[str, str], tuple[Decision, list[str]]] = {}
        for e in events:
            # withdrawing a fact (possibly another agent's) takes the forget right as well
            for action in ("publish", "forget") if e.kind == RETRACTION else ("publish",):
                if (got := decided.get((action, e.scope))) is None:
                    d = await self.gate.decision(who, action, e.scope)
                    got = decided[(action, e.scope)] = (d, [])
                got[1].append(e.id)
                if not got[0].allowed:  # the deny is audited; nothing is published
                    await self.audit.record(
                        _record(who, action, e.scope, False, got[0].rule, event_ids=[e.id])
                    )
                    raise PermissionDenied(who.agent, action, e.scope, who.tenant, got[0].hint)
        events = [self._redact(e) for e in events]
        # signed here, checked by writers: the stream itself is not trusted
        positions = await publish_signed(self.redis, self.keys, events)
        await self.audit.record_many(
            [
                _record(who, a, s, True, d.rule, event_ids=ids)
                for (a, s), (d, ids) in decided.items()
            ]
        )
        receipts = [
            Receipt(event_id=e.id, position=p, tenant=e.tenant, scope=e.scope)
            for e, p in zip(events, positions, strict=True)
        ]
        if wait and receipts:
            await self.committed(receipts, timeout_s=timeout_s)
        return receipts

    async def publish(
        self,
        who: Identity,
        content: str,
        scope: str | None = None,
        *,
        wait: bool = False,
        timeout_s: float = DEFAULT_WAIT_S,
        **fields: Any,
    ) -> Receipt:
        """Publish one observation (``scope`` default: ``agent/<who>``); ``wait`` as in
        ``publish_many``."""
        try:
            draft = Draft(content=content, scope=scope, **fields)
        except Exception as exc:  # pydantic.ValidationError for unknown/ill-typed fields
            raise InvalidInput(f"invalid publish arguments: {exc}") from None
        return (await self.publish_many(who, [draft], wait=wait, timeout_s=timeout_s))[0]

    async def committed(
        self, receipts: Sequence[Receipt], *, timeout_s: float = DEFAULT_WAIT_S
    ) -> None:
        """Wait until writers committed the events of ``receipts`` (see ``publish_many``)."""
        by_tenant: dict[str, dict[str, str]] = {}
        for r in receipts:
            by_tenant.setdefault(r.tenant, {})[r.position] = r.event_id
        deadline = time.monotonic() + timeout_s
        for tenant, positions in by_tenant.items():
            await wait_committed(
                self.redis,
                tenant,
                positions,
                self.config.worker.group,
                timeout_s=max(0.0, deadline - time.monotonic()),
            )

    def _redact(self, event: Event) -> Event:
        """Mask PII before it leaves the author's private scope, where policy asks for it."""
        if not self._redact_roots or not needs_redaction(event.agent, event.scope):
            return event
        if not any(a in self._redact_roots for a in scope_ancestors(event.scope)):
            return event
        return redact_event(event, self.redactor).event

    # -- read path ----------------------------------------------------------------------------

    async def _embed(self, texts: list[str]) -> Vectors:
        if isinstance(self.embedder, HashingEmbedder):  # tens of µs: not worth a thread hop
            return self.embedder.embed(texts)
        return await anyio.to_thread.run_sync(self.embedder.embed, texts)

    async def recall(
        self,
        who: Identity,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        working: bool = False,
        min_score: float | None = None,
    ) -> list[Hit]:
        """Top-k memories by meaning, only within scopes ``who`` may read; ``as_of`` recalls
        what held at a past time (superseded versions of keyed facts included); ``working``
        adds what was just published and not yet consolidated (``Hit.working``), within the
        same grant and filters. Scores lie in [0, 1] and mean the same on every query
        (membus/store/relevance.py), reranked by ``config.ranking``; hits below ``min_score``
        (None: ``config.ranking.min_score``) are dropped, so an empty list says nothing
        relevant is known."""
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        threshold = self.config.ranking.min_score if min_score is None else min_score
        if not 0.0 <= threshold <= 1.0:  # NaN fails this too
            raise InvalidInput(f"min_score must be between 0 and 1, got {min_score}")
        if not query.strip():
            raise InvalidInput("query is blank")
        for s in scopes or ():
            validate_scope(s)
        grant = await self.gate.grant(who, "recall", scopes)
        if grant.empty:
            await self.audit.record(_scoped(who, "recall", scopes, False, grant.rules))
            if scopes:  # asked for scopes it may not read at all: say so
                raise PermissionDenied(
                    who.agent, "recall", ", ".join(scopes), who.tenant, grant.hint
                )
            return []
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
        vector = await self._embed([query])
        cfg = self.config.ranking
        boost = None if working else ranking.boost(k, cfg, as_of)  # the engine reranks
        pool = k if boost else ranking.candidates(k, cfg)
        hits = await self.store.search(vector, flt, pool, text=query, boost=boost)
        if working:
            hits = await with_working(
                self.redis, flt, vector, self._embed, self.config, self.admission, hits
            )
        if boost is None:  # heat or working hits: the rerank is ours
            hits = await ranking.rank(self.access_log, who.tenant, hits, k, cfg, as_of)
        hits = [h for h in hits if h.score >= threshold]
        rec = _scoped(who, "recall", scopes, True, grant.rules)
        await self.audit.record(
            rec.model_copy(
                update={
                    "result_count": len(hits),
                    "memory_ids": [h.memory.id for h in hits],
                    "event_ids": [h.memory.source_events[0] for h in hits if h.working],
                }
            )
        )
        await self.access_log.bump(who.tenant, [h.memory.id for h in hits if not h.working])
        return hits

    async def access(self, who: Identity, memory_ids: Sequence[str]) -> dict[str, Access]:
        """How often recall returned each memory and when last; only memories ``who`` may
        recall are answered (others are left out, as if they did not exist)."""
        if len(memory_ids) > MAX_K:
            raise InvalidInput(f"at most {MAX_K} memory ids")
        ids = check_ids(memory_ids)
        grant = await self.gate.grant(who, "recall", None)
        found = await self.store.get(who.tenant, ids) if ids and not grant.empty else []
        visible = [m.id for m in found if grant.admits(m.scope, m.sensitivity)]
        rec = _scoped(who, "recall", None, not grant.empty, grant.rules)
        await self.audit.record(
            rec.model_copy(update={"result_count": len(visible), "memory_ids": visible})
        )
        return await self.access_log.read(who.tenant, visible)

    async def subscribe(
        self,
        who: Identity,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        consumer: str | None = None,
        until_now: bool = False,
    ) -> AsyncIterator[Change]:
        """Follow committed changes in ``scopes`` from ``start`` ("$" = now, "0" = beginning);
        ``until_now``: stop once caught up (a read of the feed as it is, through the live grant,
        for callers that would otherwise keep a copy).

        ``group`` shares the feed across this agent's consumers: it is this agent's group (for
        these scopes), whatever its name, so no other agent can join it (``group_name``)."""
        for s in scopes or ():
            validate_scope(s)
        redis_group = None if group is None else group_name(who.agent, group, scopes)
        gate = self.gate
        first = await gate.grant(who, "subscribe", scopes)
        await self.audit.record(_scoped(who, "subscribe", scopes, not first.empty, first.rules))
        if first.empty:
            raise PermissionDenied(
                who.agent, "subscribe", ", ".join(scopes or ["*"]), who.tenant, first.hint
            )

        async def admit(change: Change) -> bool:
            # asked per change: a revoked grant stops delivery at once (the gate caches by
            # policy version, so this is a dictionary lookup until the policy changes)
            grant = await gate.grant(who, "subscribe", scopes)
            return grant.admits(change.scope, change.sensitivity)

        async for change in follow(
            self.redis,
            who.tenant,
            admit,
            start=start,
            group=redis_group,
            consumer=consumer or who.agent,
            until_now=until_now,
        ):
            yield change

    async def forget(
        self,
        who: Identity,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given and ``who`` may erase: memories, their
        source events (consumed or not, dead-lettered too), change entries, leaving tombstones
        so a redelivered event cannot bring a memory back.

        What ``who`` may erase: within its ``forget`` grant, only what its ``recall`` grant and
        clearance admit; within an ``erase`` grant (a data-protection role), everything. The
        report counts nothing else, and a forget that can reach nothing scans nothing."""
        if scope is not None:
            validate_scope(scope)
        scopes = [scope] if scope else None
        forget_grant = await self.gate.grant(who, "forget", scopes)
        erase_grant = await self.gate.grant(who, "erase", scopes)
        if forget_grant.empty and erase_grant.empty:
            await self.audit.record(_scoped(who, "forget", scopes, False, forget_grant.rules))
            raise PermissionDenied(who.agent, "forget", scope or "*", who.tenant, forget_grant.hint)
        read = await self.gate.grant(who, "recall", scopes)
        rules = [*forget_grant.rules, *erase_grant.rules]
        if erase_grant.empty and read.empty:  # may forget only what it cannot read: nothing
            rec = _scoped(who, "forget", scopes, True, rules)
            await self.audit.record(rec.model_copy(update={"result_count": 0}))
            return ErasureReport(tenant=who.tenant, aof_rewrite="skipped")

        def within(s: str, sensitivity: int) -> bool:
            return erase_grant.covers(s) or (forget_grant.covers(s) and read.admits(s, sensitivity))

        await self.access_log.flush()  # so erasure finds (and drops) the statistics buffered here
        survivors = Consolidator(
            self.redis, self.store, self._embed, self.config.consolidation, self.config.worker.group
        )
        report = await erasure.forget(
            self.redis,
            self.store,
            who.tenant,
            memory_ids=memory_ids,
            subject=subject,
            agent=agent,
            scope=scope,
            within=within,
            rewrite=survivors.rewrite,
        )
        # that a forget happened, who asked and how much went; never what (no ids, no criteria)
        rec = _scoped(who, "forget", scopes, True, rules)
        await self.audit.record(rec.model_copy(update={"result_count": report.memories}))
        return report

    async def drain(
        self, timeout_s: float = 60.0, poll_s: float = 0.01, merges: bool = True
    ) -> None:
        """Wait until writers committed (or parked) all published; ``merges``: and until their
        near-duplicate pass has looked at it."""
        deadline, group = time.monotonic() + timeout_s, self.config.worker.group
        merging = merges and self.config.consolidation.near_duplicate is not None
        while True:
            names = await tenants(self.redis)
            if await idle(self.redis, [TenantKeys(t).events for t in names], group) and not (
                merging and await self._awaiting_merges(names)
            ):
                return
            if time.monotonic() > deadline:
                raise Unavailable(await self._drain_blocked(names, timeout_s, merging))
            await anyio.sleep(poll_s)

    async def _awaiting_merges(self, names: list[str]) -> bool:
        """Whether a slot of these tenants still waits for the near-duplicate pass."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in names:
                pipe.zcard(dirty_key(t))
            return any(await pipe.execute())

    async def _drain_blocked(self, names: list[str], timeout_s: float, merging: bool) -> str:
        """What a timed-out ``drain`` was still waiting for, per tenant, and the likely cause."""
        group, waiting = self.config.worker.group, []
        consumers = 0
        for t in names:
            events = TenantKeys(t).events
            mine = [g for g in await group_stats(self.redis, events) if g.group == group]
            for g in mine:
                consumers = max(consumers, g.consumers)
                if g.pending or g.lag:
                    waiting.append(f"{t}: {g.lag} unread, {g.pending} pending")
            if not mine and (n := await self.redis.xlen(events)):
                waiting.append(f"{t}: {n} unread, 0 pending")  # no group yet: no writer ever read
            if merging and (dirty := await self.redis.zcard(dirty_key(t))):
                waiting.append(f"{t}: {dirty} slots awaiting the near-duplicate pass")
        cause = (
            f"no writer has joined group {group!r}: is one running? (`membus worker`)"
            if consumers == 0
            else "writers are running but behind (see `membus stats`)"
        )
        what = "; ".join(waiting) or "events"
        return f"writers did not drain within {timeout_s}s; waiting for {what}; {cause}"

    # -- see and manage memories (membus.bus.memories) --------------------------------------

    async def get(self, who: Identity, memory_id: str) -> Memory:
        """One memory by id, as ``who`` may see it; ``NotFound`` when absent or not readable."""
        return await memories.get(self, who, memory_id)

    async def history(
        self,
        who: Identity,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a memory's fact (or of ``subject`` + ``key``) that ``who`` may
        read, newest first, each with its validity (``valid_from``/``valid_to``) and provenance."""
        return await memories.history(
            self, who, memory_id, scope=scope, subject=subject, key=key, limit=limit
        )

    async def update(
        self,
        who: Identity,
        memory_id: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        label: Label | None = None,
    ) -> Receipt:
        """A new version of a memory, through the event log (see ``memories.update``)."""
        return await memories.update(self, who, memory_id, content, metadata=metadata, label=label)

    async def delete(self, who: Identity, memory_id: str) -> ErasureReport:
        """Forget one memory by id (``NotFound`` when ``who`` cannot see it)."""
        return await memories.delete(self, who, memory_id)

    def export(
        self,
        who: Identity,
        *,
        scopes: Sequence[str] | None = None,
        as_of: datetime | None = None,
    ) -> AsyncIterator[Memory]:
        """Every memory ``who`` may read, every version; ``as_of``: what held then."""
        return memories.export(self, who, scopes=scopes, as_of=as_of)

    async def import_memories(self, who: Identity, records: Sequence[Memory]) -> ImportReport:
        """Publish exported memories again as events of ``who`` (idempotent per tenant)."""
        return await memories.import_memories(self, who, records)

    async def list(
        self,
        who: Identity,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories ``who`` may read, newest first, one page at a time."""
        return await memories.list_memories(
            self,
            who,
            scopes=scopes,
            kinds=kinds,
            subjects=subjects,
            agents=agents,
            since=since,
            until=until,
            as_of=as_of,
            limit=limit,
            cursor=cursor,
        )

    async def scopes(self, who: Identity) -> builtins.list[str]:
        """The scopes holding at least one memory ``who`` may read (scope and clearance), sorted:
        what LangGraph's ``list_namespaces`` and MCP's ``list_scopes`` show."""
        grant = await self.gate.grant(who, "recall", None)
        if grant.empty:
            return []
        # a scan of the tenant's memories: fine at the sizes an agent browses; a store facet
        # query belongs here once scopes number in the thousands
        seen: set[str] = set()
        offset: str | None = None
        while True:
            page, offset = await self.store.scroll(who.tenant, limit=512, offset=offset)
            seen.update(m.scope for m in page if grant.admits(m.scope, m.sensitivity))
            if offset is None:
                return sorted(seen)

    async def audit_read(
        self,
        who: Identity,
        scopes: Sequence[str] | None,
        grant: ReadGrant,
        memory_ids: Sequence[str],
        *,
        count: int | None = None,
    ) -> None:
        """One audit record for a read that is not a recall (get, list, history, export)."""
        rec = _scoped(who, "recall", scopes, not grant.empty, grant.rules)
        await self.audit.record(
            rec.model_copy(
                update={
                    "result_count": len(memory_ids) if count is None else count,
                    "memory_ids": builtins.list(memory_ids),
                }
            )
        )

    async def check_publish(self, who: Identity, scopes: Sequence[str]) -> None:
        """Raise ``PermissionDenied`` (audited) unless ``who`` may publish to every scope: for
        batches that must be refused whole before any work (an import)."""
        for scope in dict.fromkeys(scopes):
            d = await self.gate.decision(who, "publish", validate_scope(scope))
            if not d.allowed:
                await self.audit.record(_record(who, "publish", scope, False, d.rule))
                raise PermissionDenied(who.agent, "publish", scope, who.tenant, d.hint)

    def denied(
        self, who: Identity, action: str, scopes: Sequence[str], grant: ReadGrant
    ) -> PermissionDenied:
        return PermissionDenied(who.agent, action, ", ".join(scopes), who.tenant, grant.hint)

    async def stats(self) -> dict[str, Any]:
        """Stream lengths, pending, lag and DLQ size per tenant and group."""
        out: dict[str, Any] = {"tenants": {}, "memories": await self.store.count()}
        try:
            for t in await tenants(self.redis):
                keys = TenantKeys(t)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in (keys.events, keys.changes, keys.dlq):
                        pipe.xlen(key)
                    lengths = await pipe.execute()
                groups = await group_stats(self.redis, keys.events)
                out["tenants"][t] = {
                    "events": lengths[0],
                    "changes": lengths[1],
                    "dlq": lengths[2],
                    "groups": [
                        {
                            "group": g.group,
                            "pending": g.pending,
                            "lag": g.lag,
                            "consumers": g.consumers,
                        }
                        for g in groups
                    ],
                }
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        return out

    # -- context for the prompt (membus.bus.context) -------------------------------------------

    async def context(
        self,
        who: Identity,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        working: bool = True,
        counter: TokenCounter | None = None,
    ) -> Context:
        """What ``who`` should put in front of its model, within ``budget_tokens`` (see
        ``membus.bus.context`` and ``Agent.context``); every included memory counts as a read.

        Example: ``ctx = await bus.context(who, "refund?", budget_tokens=1000)``"""
        return await contexts.assemble(
            self,
            who,
            query,
            budget_tokens=budget_tokens,
            subjects=subjects,
            scopes=scopes,
            kinds=kinds,
            agents=agents,
            working=working,
            counter=counter,
        )

    async def pin(self, who: Identity, memory_id: str) -> Receipt:
        """Pin a memory into every context that may read it (an event; the publish right).

        Example: ``await bus.pin(who, memory.id)``"""
        return await contexts.pin(self, who, memory_id, True)

    async def unpin(self, who: Identity, memory_id: str) -> Receipt:
        """Undo ``pin`` (an event; the publish right on the memory's scope).

        Example: ``await bus.unpin(who, memory.id)``"""
        return await contexts.pin(self, who, memory_id, False)


def _record(
    who: Identity, action: str, scope: str, allowed: bool, rule: str | None, **extra: Any
) -> AuditRecord:
    return AuditRecord(
        tenant=who.tenant,
        agent=who.agent,
        action=action,
        scope=scope,
        decision="allow" if allowed else "deny",
        rule=rule,
        **extra,
    )


def _scoped(
    who: Identity, action: str, scopes: Sequence[str] | None, allowed: bool, rules: list[str]
) -> AuditRecord:
    """A record for a call over several scopes (recall, subscribe, forget)."""
    one = scopes[0] if scopes and len(scopes) == 1 else "*"
    rec = _record(who, action, one, allowed, "; ".join(rules) or None)
    return rec.model_copy(update={"scopes": list(scopes or [])})


class Agent:
    """A bus bound to one identity: what agent code holds."""

    def __init__(self, bus: Bus, identity: Identity, id: str | None = None) -> None:
        self.bus, self.identity = bus, identity
        self.id = identity.agent if id is None else id  # as the user gave it: for display

    @property
    def name(self) -> str:
        """The membus name (``encode_id`` of ``id``): what scopes and policies hold."""
        return self.identity.agent

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    async def publish(
        self,
        content: str,
        scope: str | None = None,
        *,
        kind: str = "observation",
        subject: str | None = None,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
        label: Label = "public",
        created_at: datetime | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        wait: bool = False,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> Receipt:
        """Publish one observation to ``scope`` (default ``agent/<name>``, private); a writer
        turns it into a memory shortly after. ``kind``: observation, fact, preference, …;
        ``subject`` + ``key`` make it a keyed fact (a later value supersedes it, kept in
        ``history``); ``label``: its sensitivity; ``created_at``: when it was observed (default
        now); ``causation_id`` / ``correlation_id``: the event that caused it and the
        conversation it belongs to; ``wait``: return once it is searchable, or raise ``Parked``
        / ``NotCommitted`` after ``timeout_s`` (see ``Bus.publish_many``).

        Example: ``await agent.publish("Ana prefers SMS", "team/support", subject="ana")``"""
        return await self.bus.publish(
            self.identity,
            content,
            scope,
            wait=wait,
            timeout_s=timeout_s,
            kind=kind,
            subject=subject,
            key=key,
            metadata=metadata or {},
            label=label,
            created_at=created_at,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )

    async def publish_many(
        self, drafts: Sequence[Draft], *, wait: bool = False, timeout_s: float = DEFAULT_WAIT_S
    ) -> builtins.list[Receipt]:
        """Publish several drafts, all or nothing, in one round trip; ``wait`` as in
        ``publish``.

        Example: ``await agent.publish_many([Draft(content="a", scope="team/x")])``"""
        return await self.bus.publish_many(self.identity, drafts, wait=wait, timeout_s=timeout_s)

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        working: bool = False,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        """Top-``k`` memories by meaning, within the scopes this agent may read; ``scopes`` are
        subtree roots (None: all readable); ``kinds``/``subjects``/``agents`` filter;
        ``since``/``until`` bound when each began to hold; ``as_of``: what held then;
        ``working``: also what was just published and not consolidated yet; ``min_score``:
        drop hits scoring less (scores are evidence in [0, 1]; None: the configured default,
        so an empty list means nothing relevant is known).

        Example: ``hits = await agent.recall("how does Ana like to be contacted", k=3)``"""
        return await self.bus.recall(
            self.identity,
            query,
            k=k,
            scopes=scopes,
            kinds=kinds,
            subjects=subjects,
            agents=agents,
            since=since,
            until=until,
            as_of=as_of,
            working=working,
            min_score=min_score,
        )

    async def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics (how often, when last) of memories this agent may recall; others
        are left out, as if they did not exist.

        Example: ``stats = await agent.access([hit.memory.id for hit in hits])``"""
        return await self.bus.access(self.identity, memory_ids)

    def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        consumer: str | None = None,
        until_now: bool = False,
    ) -> AsyncIterator[Change]:
        """Follow committed changes in ``scopes`` (None: all readable) from ``start`` ("$" now,
        "0" the beginning, or a position); ``group`` shares the feed among this agent's
        consumers (``consumer`` names one; default the agent); ``until_now``: stop once caught up.

        Example: ``async for change in agent.subscribe(["team/support"], start="0"): ...``"""
        return self.bus.subscribe(
            self.identity, scopes, start=start, group=group, consumer=consumer, until_now=until_now
        )

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given, within this agent's forget grant: the
        memories, their source events and change entries (see ``Bus.forget``).

        Example: ``report = await agent.forget(subject="customer:42", scope="team/support")``"""
        return await self.bus.forget(
            self.identity, memory_ids=memory_ids, subject=subject, agent=agent, scope=scope
        )

    async def retract(
        self,
        *,
        memory_id: str | None = None,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        reason: str | None = None,
    ) -> Receipt:
        """Withdraw a memory (``memory_id``) or every version of a key (``scope`` + ``subject``
        + ``key``) through the event log; the events stay (unlike ``forget``). ``reason``
        becomes the retraction's text. ``NotFound`` when this agent cannot see the memory.

        Example: ``await agent.retract(scope="team/crm", subject="customer:42", key="tier")``"""
        return await retract(
            self.bus,
            self.identity,
            memory_id=memory_id,
            scope=scope,
            subject=subject,
            key=key,
            reason=reason,
        )

    async def scopes(self) -> builtins.list[str]:
        """The scopes holding at least one memory this agent may read, sorted.

        Example: ``await agent.scopes()`` -> ``["agent/alice", "team/support"]``"""
        return await self.bus.scopes(self.identity)

    # -- see and manage memories ----------------------------------------------------------------

    async def get(self, memory_id: str) -> Memory:
        """One memory by id, with its provenance; ``NotFound`` when it does not exist or this
        agent may not read it (the same answer for both).

        Example: ``memory = await agent.get(hit.memory.id)``"""
        return await self.bus.get(self.identity, memory_id)

    async def history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a memory's fact, or of ``subject`` + ``key`` (in ``scope``, or any
        scope this agent reads), newest first: content, ``valid_from``/``valid_to``, whether it
        was superseded (``history``), agents and source events.

        Example: ``versions = await agent.history(subject="customer:42", key="tier")``"""
        return await self.bus.history(
            self.identity, memory_id, scope=scope, subject=subject, key=key, limit=limit
        )

    async def update(
        self,
        memory_id: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        label: Label | None = None,
    ) -> Receipt:
        """Publish a new version of a memory (never an in-place write): the next version of a
        keyed fact, or, for any other memory, its withdrawal and the new text in one batch
        (which takes the forget right on its scope as well). ``metadata``/``label``: None keeps
        the memory's own.

        Example: ``await agent.update(memory.id, "The customer prefers SMS.")``"""
        return await self.bus.update(
            self.identity, memory_id, content, metadata=metadata, label=label
        )

    async def delete(self, memory_id: str) -> ErasureReport:
        """Erase one memory by id (a ``forget`` of that id, with its source events and change
        entries); ``NotFound`` when this agent cannot see it.

        Example: ``report = await agent.delete(memory.id)``"""
        return await self.bus.delete(self.identity, memory_id)

    def export(
        self, *, scopes: Sequence[str] | None = None, as_of: datetime | None = None
    ) -> AsyncIterator[Memory]:
        """Every memory this agent may read, newest first: every version (current, superseded,
        expired), or with ``as_of`` what held then. Write ``membus.to_jsonl(m)`` per memory for
        the JSONL that ``import_memories`` reads back.

        Example: ``async for m in agent.export(scopes=["team/support"]): f.write(to_jsonl(m))``"""
        return self.bus.export(self.identity, scopes=scopes, as_of=as_of)

    async def import_memories(self, records: Sequence[Memory]) -> ImportReport:
        """Publish exported memories as this agent's events, dated as they were, so writers
        rebuild the same values, history and ``as_of`` answers; a memory already imported into
        this tenant, or erased here since, is skipped (importing twice changes nothing).

        Example: ``await agent.import_memories(parse_jsonl(open("export.jsonl")))``"""
        return await self.bus.import_memories(self.identity, records)

    async def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories this agent may read, newest first (by when each began to hold), filtered
        like recall but without a query; pass ``page.cursor`` back for the next page (None: no
        more).

        Example: ``page = await agent.list(scopes=["team/support"], kinds=["fact"], limit=20)``"""
        return await self.bus.list(
            self.identity,
            scopes=scopes,
            kinds=kinds,
            subjects=subjects,
            agents=agents,
            since=since,
            until=until,
            as_of=as_of,
            limit=limit,
            cursor=cursor,
        )

    # -- context for the prompt -----------------------------------------------------------------

    async def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        working: bool = True,
        counter: TokenCounter | None = None,
    ) -> Context:
        """The memories to put in front of this agent's model, ranked and packed into
        ``budget_tokens``: pinned memories, the current keyed facts about each of ``subjects``
        (their profile), recent and (``working``) just-published memories, and recall for
        ``query``, all within this agent's read grant, narrowed by ``scopes``, ``kinds`` and
        ``agents``. ``counter``: tokens of a text (default ``membus.estimate_tokens``; pass a
        tokenizer's, e.g. ``lambda s: len(enc.encode(s))``). ``Context.render()`` is the
        system-prompt text, never over budget by ``counter``; each item says why it is there.

        Example: ``ctx = await agent.context("refund?", budget_tokens=1000)``"""
        return await self.bus.context(
            self.identity,
            query,
            budget_tokens=budget_tokens,
            subjects=subjects,
            scopes=scopes,
            kinds=kinds,
            agents=agents,
            working=working,
            counter=counter,
        )

    async def pin(self, memory_id: str) -> Receipt:
        """Pin a memory: it heads every context of every agent that may read it, until
        ``unpin``. Recorded as an event in the memory's scope (needs the publish right there);
        ``NotFound`` when this agent cannot read the memory.

        Example: ``await agent.pin(memory.id)``"""
        return await self.bus.pin(self.identity, memory_id)

    async def unpin(self, memory_id: str) -> Receipt:
        """Undo ``pin`` (an event too, needing the publish right on the memory's scope).

        Example: ``await agent.unpin(memory.id)``"""
        return await self.bus.unpin(self.identity, memory_id)
