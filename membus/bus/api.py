"""The bus: publish, recall, subscribe and drain, each on behalf of an identity.

``Bus`` holds the connections; ``Agent`` is a bus bound to one identity, which is what user code
passes around. Every door asks the gate first, so a permission engine plugs in without changing
this API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import anyio
from pydantic import ValidationError

from membus.access.audit import AuditLog, AuditRecord
from membus.access.gate import Decision, Gate, Identity, default_gate
from membus.access.redact import PiiRedactor, Redactor, needs_redaction, redact_event
from membus.access.signing import KeyRegistry, door_keys
from membus.bus import erasure
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.retract import retract
from membus.bus.working import with_working
from membus.core.config import MembusConfig
from membus.core.envelope import Event, invalid_from, scope_ancestors, validate_scope
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder, Vectors
from membus.errors import InvalidInput, PermissionDenied, Unavailable
from membus.recall import ranking
from membus.recall.heat import Access, AccessLog
from membus.store.port import Hit, RecallFilter, Store, check_ids
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
        try:
            identity = Identity.model_validate({"tenant": tenant, "agent": name})
        except ValidationError as exc:
            raise invalid_from(exc, "identity") from None
        return Agent(self, identity)

    # -- write path ---------------------------------------------------------------------------

    async def publish_many(self, who: Identity, drafts: Sequence[Draft]) -> list[Receipt]:
        """Validate all, check all, then XADD all in one pipelined round trip (all or nothing)."""
        events = [
            Event.build(tenant=who.tenant, agent=who.agent, **d.model_dump(exclude_none=True))
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
        return [
            Receipt(event_id=e.id, position=p, tenant=e.tenant, scope=e.scope)
            for e, p in zip(events, positions, strict=True)
        ]

    async def publish(self, who: Identity, content: str, scope: str, **fields: Any) -> Receipt:
        try:
            draft = Draft(content=content, scope=scope, **fields)
        except Exception as exc:  # pydantic.ValidationError for unknown/ill-typed fields
            raise InvalidInput(f"invalid publish arguments: {exc}") from None
        return (await self.publish_many(who, [draft]))[0]

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
                merging and any([await self.redis.zcard(dirty_key(t)) for t in names])
            ):
                return
            if time.monotonic() > deadline:
                raise Unavailable(await self._drain_blocked(names, timeout_s, merging))
            await anyio.sleep(poll_s)

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

    def __init__(self, bus: Bus, identity: Identity) -> None:
        self.bus, self.identity = bus, identity

    @property
    def name(self) -> str:
        return self.identity.agent

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    async def publish(self, content: str, scope: str, **fields: Any) -> Receipt:
        return await self.bus.publish(self.identity, content, scope, **fields)

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Receipt]:
        return await self.bus.publish_many(self.identity, drafts)

    async def recall(self, query: str, **kwargs: Any) -> list[Hit]:
        return await self.bus.recall(self.identity, query, **kwargs)

    async def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics of memories this agent may recall (see ``Bus.access``)."""
        return await self.bus.access(self.identity, memory_ids)

    def subscribe(
        self, scopes: Sequence[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[Change]:
        return self.bus.subscribe(self.identity, scopes, **kwargs)

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given, within this agent's forget grant."""
        return await self.bus.forget(
            self.identity, memory_ids=memory_ids, subject=subject, agent=agent, scope=scope
        )

    async def retract(self, **target: Any) -> Receipt:
        """Withdraw a memory (``memory_id=``) or a key (``scope=, subject=, key=``); see
        ``membus.bus.retract``."""
        return await retract(self.bus, self.identity, **target)
