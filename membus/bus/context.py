"""Context for the prompt: what an agent puts in front of its model, within a token budget.

``Bus.context`` gathers candidates from four tiers, all read through the caller's ``recall``
grant (scopes and clearance) like any other read:

- **pinned**: memories someone pinned (``pin``/``unpin``: keyed ``pin`` events through the log,
  needing the publish right on the memory's scope; the pin is as sensitive as the memory, so only
  readers who may see the memory see its pin);
- **profile**: for each subject asked for, every current keyed fact about it;
- **recent** and **working**: the newest memories, and (``working=True``) what was just published
  and not committed yet, marked ``uncommitted``;
- **relevant**: recall for the query (the long-term tier).

They are ranked together, one list, by ``score``::

    score = priority(tier) + relevance + 0.15 * freshness + 0.1 * importance + 0.1 * heat

``relevance`` is the recall score divided by the best one of this query (0 when recall did not
return the memory, or with no query); ``freshness`` halves every hour (the short-term signal);
``importance`` is ``metadata["importance"]`` (default 0.5); ``heat`` is how often reads returned
the memory (``membus.recall.heat``), counted only for candidates the query did not rank: a
relevance already carries recall's own heat term (``RankingConfig.heat_weight``), and a second
one would reorder recall's ranking by what other questions read. Pinned memories get a priority
of 3 and profile facts 2, so an explicit choice comes first; every other candidate competes on
the same scale. No tier has a quota: a tier's share is what its candidates win on score, so
without a query recent memory and profiles take the whole budget, and with one, a fresh note
still beats a weak match while strong matches take the room. Candidates are packed greedily in
that order: a line that does not fit is left out (``Context.left_out``) and the next one is
tried. A memory comes once (the tier that explains its rank names it, every tier it came from is
in ``why``); a keyed fact comes only in its newest version (an uncommitted version replaces the
stored one).

Every included memory is one read: one audit record (memory ids; event ids of uncommitted ones)
and one access bump, as for recall. Nothing is cached: each call reads through the live grant,
so a forget or a revocation is in effect at the next call.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from membus.access.audit import AuditRecord
from membus.access.gate import Identity, ReadGrant
from membus.bus import memories
from membus.bus.draft import Draft, Receipt
from membus.bus.working import calibrate, working_hits
from membus.core.envelope import scope_ancestors, validate_scope
from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN
from membus.errors import InvalidInput, PermissionDenied
from membus.recall import ranking
from membus.recall.heat import Access
from membus.recall.tokens import TokenCounter, counter_name, estimate_tokens
from membus.store.port import Hit, Memory, RecallFilter, check_ids
from membus.writer.consolidate import label_of

if TYPE_CHECKING:
    from membus.bus.api import Bus

Tier = Literal["pinned", "profile", "working", "recent", "relevant"]

PIN_KIND = "pin"
PIN_KEY = "pinned"
MAX_BUDGET = 1_000_000
MAX_SUBJECTS = 20
_MAX_PINS = 200
_MAX_PROFILE = 200  # keyed facts per subject
_MAX_POOL = 300  # recall candidates, as recall's own cap
_PRIORITY: dict[str, float] = {"pinned": 3.0, "profile": 2.0}
# the tier an item is shown under when several brought it: the one that explains its rank best
_RANK_OF: dict[str, int] = {"pinned": 0, "profile": 1, "relevant": 2, "working": 3, "recent": 4}
_FRESH_WEIGHT, _IMPORTANCE_WEIGHT, _HEAT_WEIGHT = 0.15, 0.1, 0.1
_FRESH_HALF_LIFE_S = 3600.0
# the render's header and line format, documented in the README ("Context for the prompt")
HEADER = "Shared memory, most useful first [n|source|scope|agent|date]:"


def recall_pool(budget_tokens: int) -> int:
    """How many recall hits a context of ``budget_tokens`` draws on: enough to fill it at 20
    tokens a line (the long tail of a ranking is cheap to skip, costly to parse).

    Example: ``recall_pool(1000)  # 50``"""
    return max(10, min(_MAX_POOL, budget_tokens // 20))


def _pin_subject(memory_id: str) -> str:
    return f"pin:{memory_id}"


class ContextItem(BaseModel):
    """One memory in a context, with where it came from and why it was chosen."""

    model_config = ConfigDict(frozen=True)
    id: str  # the memory's id (an uncommitted one: the id its memory will get)
    content: str
    scope: str
    kind: str
    subject: str | None = None
    key: str | None = None
    agents: list[str] = Field(default_factory=list)
    created_at: datetime
    tier: Tier  # the tier that ranked it highest
    why: list[str]  # every reason: "pinned", "profile of <subject>", "recent", "relevant 0.83"
    score: float  # the ranking score (module docstring)
    relevance: float | None = None  # the recall score, when the query matched it
    uncommitted: bool = False  # just published, not yet consolidated by a writer
    tokens: int = 0  # its line in ``render()``, by the counter used

    def line(self, n: int) -> str:
        """``[n|tier|scope|agent|YYYY-MM-DD] content`` on one line (``uncommitted`` as tier for
        an uncommitted one).

        Example: ``item.line(1)  # "[1|pinned|team/x|alice|2024-03-01] Refunds need a lead."``"""
        source = "uncommitted" if self.uncommitted else self.tier
        who = ",".join(self.agents[:2]) + ("+" if len(self.agents) > 2 else "")
        text = " ".join(self.content.split())  # one memory, one line
        return f"[{n}|{source}|{self.scope}|{who}|{self.created_at:%Y-%m-%d}] {text}"


class Context(BaseModel):
    """What ``context`` assembled: the chosen memories in rank order, the tokens their render
    takes, and the ids left out for lack of room."""

    model_config = ConfigDict(frozen=True)
    query: str | None = None
    budget_tokens: int
    tokens_used: int = 0  # tokens of ``render()`` by ``counter``
    counter: str = "estimate"
    items: list[ContextItem] = Field(default_factory=list)
    left_out: list[str] = Field(default_factory=list)

    def render(self) -> str:
        """Text for a system prompt: a header line, then one line per memory, most useful
        first: ``[n|source|scope|agent|date] content`` (source: pinned, profile, recent,
        uncommitted, relevant). Empty when nothing was chosen; never over ``budget_tokens`` by
        the counter the context was built with.

        Example: ``system = (await agent.context("refund?", budget_tokens=800)).render()``"""
        return render_items(self.items)

    def messages(self, role: str = "system") -> list[dict[str, str]]:
        """The render as chat messages (``[{"role": role, "content": ...}]``; none when empty),
        for frameworks that take a message list.

        Example: ``messages = ctx.messages() + [{"role": "user", "content": question}]``"""
        text = self.render()
        return [{"role": role, "content": text}] if text else []


def render_items(items: Sequence[ContextItem]) -> str:
    """The header and one line per item (``Context.render``); empty for no items.

    Example: ``text = render_items(ctx.items[:3])``"""
    if not items:
        return ""
    return "\n".join([HEADER, *(it.line(n) for n, it in enumerate(items, 1))])


# -- pins ----------------------------------------------------------------------------------------


async def pin(bus: Bus, who: Identity, memory_id: str, pinned: bool) -> Receipt:
    """Record (un)pinning ``memory_id`` as a keyed ``pin`` event in the memory's scope, at the
    memory's label, through ``publish_many`` (the publish right on that scope).

    Example: ``await pin(bus, who, memory.id, True)``"""
    memory = await memories.get(bus, who, memory_id)  # NotFound unless ``who`` may read it
    draft = Draft(
        content=f"{'pinned' if pinned else 'unpinned'} memory {memory.id}",
        scope=memory.scope,
        kind=PIN_KIND,
        subject=_pin_subject(memory.id),
        key=PIN_KEY,
        metadata={"memory_id": memory.id, "pinned": pinned},
        label=label_of(memory.sensitivity),
    )
    [receipt] = await bus.publish_many(who, [draft])
    return receipt


# -- assembly ------------------------------------------------------------------------------------


class _Candidate:
    __slots__ = ("hit", "reasons", "relevance", "tier")

    def __init__(self, hit: Hit, tier: Tier, reason: str) -> None:
        self.hit, self.tier, self.reasons = hit, tier, [reason]
        self.relevance: float | None = None

    @property
    def memory(self) -> Memory:
        return self.hit.memory


def _fact_of(m: Memory) -> tuple[str, str, str] | None:
    return (m.scope, m.subject, m.key) if m.subject is not None and m.key is not None else None


def _current(m: Memory, now: datetime) -> bool:
    return not m.history and (m.valid_to is None or m.valid_to > now)


async def assemble(
    bus: Bus,
    who: Identity,
    query: str | None,
    *,
    budget_tokens: int,
    subjects: Sequence[str] | None = None,
    scopes: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    agents: Sequence[str] | None = None,
    working: bool = True,
    counter: TokenCounter | None = None,
) -> Context:
    """See the module docstring; ``Agent.context`` documents the parameters.

    Example: ``ctx = await assemble(bus, who, "refund?", budget_tokens=1000)``"""
    count = counter or estimate_tokens
    if not 1 <= budget_tokens <= MAX_BUDGET:
        raise InvalidInput(
            f"budget_tokens must be between 1 and {MAX_BUDGET}",
            [{"field": "budget_tokens", "problem": f"between 1 and {MAX_BUDGET}"}],
        )
    if query is not None and not query.strip():
        query = None
    subjects = list(dict.fromkeys(subjects or ()))
    if len(subjects) > MAX_SUBJECTS:
        raise InvalidInput(f"at most {MAX_SUBJECTS} subjects")
    for s in scopes or ():
        validate_scope(s)
    grant = await bus.gate.grant(who, "recall", scopes)
    if grant.empty:
        await bus.audit.record(_record(who, scopes, grant, [], []))
        if scopes:
            raise PermissionDenied(who.agent, "recall", ", ".join(scopes), who.tenant, grant.hint)
        return Context(query=query, budget_tokens=budget_tokens, counter=counter_name(count))
    now = datetime.now(UTC)
    flt = RecallFilter(
        tenant=who.tenant,
        scopes=list(scopes) if scopes is not None else None,
        grant=grant,
        kinds=list(kinds) if kinds is not None else None,
        agents=list(agents) if agents is not None else None,
    )
    found: dict[str, _Candidate] = {}

    def add(hit: Hit, tier: Tier, reason: str) -> _Candidate | None:
        m = hit.memory
        if m.kind == PIN_KIND:
            return None
        c = found.get(m.id)
        if c is None:
            c = found[m.id] = _Candidate(hit, tier, reason)
        elif reason not in c.reasons:
            c.reasons.append(reason)
            if _RANK_OF[tier] < _RANK_OF[c.tier]:
                c.tier = tier
        return c

    # working memory is read before the store: an event committed between the two reads is
    # then in the store's answer, where the other order would miss it in both
    vector = await bus._embed([query if query is not None else " "])
    pending = None
    if working and not await _all_committed(bus, who.tenant):
        pending = await working_hits(bus.redis, flt, vector, bus._embed, bus.config, bus.admission)
    # pinned: the current pin facts this caller may read, then the memories they name
    pins = await bus.store.browse(flt.model_copy(update={"kinds": [PIN_KIND]}), _MAX_PINS)
    pinned_ids = [str(p.metadata.get("memory_id")) for p in pins if p.metadata.get("pinned")]
    for m in await _readable(bus, who.tenant, pinned_ids, grant, flt, now):
        add(Hit(memory=m, score=0.0), "pinned", "pinned")
    # profile: every current keyed fact about each subject asked for
    for subject in subjects:
        about = flt.model_copy(update={"subjects": [subject]})
        for m in await bus.store.browse(about, _MAX_PROFILE):
            if m.key is not None:
                add(Hit(memory=m, score=0.0), "profile", f"profile of {subject}")
    # recent: enough of the newest to fill the budget several times over at a typical line size
    recent_n = max(5, min(100, budget_tokens // 40))
    for m in await bus.store.browse(flt, recent_n):
        add(Hit(memory=m, score=0.0), "recent", "recent")
    # relevant: recall for the query, a pool large enough to fill the budget
    if query is not None:
        pool = recall_pool(budget_tokens)
        cfg = bus.config.ranking
        boost = ranking.boost(pool, cfg)
        hits = await bus.store.search(vector, flt, pool, text=query, boost=boost)
        if boost is None:
            hits = await ranking.rank(bus.access_log, who.tenant, hits, pool, cfg)
        for h in hits:
            c = add(h, "relevant", f"relevant {h.score:.2f}")
            if c is not None:
                c.relevance = h.score
    # working: just published, within the same grant and filters; withdrawals hide stored ones
    if pending is not None:
        for mid in [
            i for i, c in found.items() if pending.withdraws(c.memory.slot, c.memory.updated_at)
        ]:
            del found[mid]
        fresh = pending.hits
        stored = [c for c in found.values() if c.relevance is not None]
        if fresh and query is not None and stored:  # cosines onto the store's score scale
            cosines = await bus._embed([c.memory.content for c in stored])
            at = cosines @ np.asarray(vector, dtype=np.float32).reshape(-1)
            fresh = calibrate([c.relevance or 0.0 for c in stored], [float(x) for x in at], fresh)
        seen = {e for c in found.values() for e in c.memory.source_events}
        for h in fresh:
            if h.memory.source_events[0] in seen:  # committed between the two reads
                continue
            c = add(h, "working", "uncommitted")
            if c is not None and query is not None and h.score > 0:
                c.relevance = h.score
                c.reasons.append(f"relevant {h.score:.2f}")
    chosen = _newest_versions(list(found.values()))
    heat = await bus.access_log.read_best_effort(
        who.tenant, [c.memory.id for c in chosen if not c.hit.working]
    )
    ranked = _rank(chosen, heat, bus.config.ranking.importance_default, now)
    items, left_out = _pack(ranked, budget_tokens, count)
    await bus.audit.record(
        _record(
            who,
            scopes,
            grant,
            [it.id for it in items if not it.uncommitted],
            [
                e
                for it, c in _pairs(items, ranked)
                if it.uncommitted
                for e in c.memory.source_events
            ],
        )
    )
    await bus.access_log.bump(who.tenant, [it.id for it in items if not it.uncommitted])
    text = render_items(items)
    return Context(
        query=query,
        budget_tokens=budget_tokens,
        tokens_used=count(text) if text else 0,
        counter=counter_name(count),
        items=items,
        left_out=left_out,
    )


async def _all_committed(bus: Bus, tenant: str) -> bool:
    """Whether writers have committed every event of the tenant (one XINFO GROUPS): then there
    is no working memory to read, and the tail read (the larger part of a context's cost when
    nothing is pending) is skipped. Unsure (no group yet, lag unknown after a trim): False."""
    try:
        groups: Any = await bus.redis.xinfo_groups(TenantKeys(tenant).events)
    except ResponseError:  # no stream: nothing was ever published, nothing is pending
        return True
    except REDIS_DOWN:
        return False  # working_hits raises the outage as Unavailable
    mine = [g for g in groups if g["name"] == bus.config.worker.group]
    return bool(mine) and int(mine[0]["pending"]) == 0 and mine[0].get("lag") == 0


async def _readable(
    bus: Bus,
    tenant: str,
    ids: Sequence[str],
    grant: ReadGrant,
    flt: RecallFilter,
    now: datetime,
) -> list[Memory]:
    """The memories of ``ids`` the grant admits, current, and within the call's filters."""
    try:
        wanted = check_ids(list(ids))
    except InvalidInput:  # a pin naming no memory id (published by hand): nothing to show
        wanted = [i for i in ids if _is_id(i)]
    out = []
    for m in await bus.store.get(tenant, wanted) if wanted else []:
        if not grant.admits(m.scope, m.sensitivity):
            continue
        m = m.seen_by(grant.clearance)
        if not _current(m, now) or not _within(m, flt):
            continue
        out.append(m)
    return out


def _is_id(value: str) -> bool:
    try:
        check_ids([value])
    except InvalidInput:
        return False
    return True


def _within(m: Memory, flt: RecallFilter) -> bool:
    if flt.scopes is not None and not any(s in flt.scopes for s in scope_ancestors(m.scope)):
        return False
    if flt.kinds is not None and m.kind not in flt.kinds:
        return False
    return flt.agents is None or any(a in flt.agents for a in m.agents)


def _newest_versions(found: list[_Candidate]) -> list[_Candidate]:
    """One candidate per keyed fact: its newest version (an uncommitted one wins over the
    stored one it will supersede)."""
    best: dict[tuple[str, str, str], _Candidate] = {}
    out: list[_Candidate] = []
    for c in found:
        fact = _fact_of(c.memory)
        if fact is None:
            out.append(c)
            continue
        other = best.get(fact)
        if other is None or c.memory.created_at > other.memory.created_at:
            if other is not None:  # keep what made the older one a candidate
                c.reasons += [r for r in other.reasons if r not in c.reasons]
                if _RANK_OF[other.tier] < _RANK_OF[c.tier]:
                    c.tier = other.tier
            best[fact] = c
        else:
            other.reasons += [r for r in c.reasons if r not in other.reasons]
    return out + list(best.values())


def _rank(
    found: list[_Candidate], heat: dict[str, Access], importance: float, now: datetime
) -> list[tuple[_Candidate, float]]:
    top = max((c.relevance for c in found if c.relevance is not None), default=0.0)
    scored = []
    for c in found:
        m = c.memory
        rel = (c.relevance / top) if c.relevance is not None and top > 0 else 0.0
        fresh = ranking.recency(m.created_at, now, _FRESH_HALF_LIFE_S)
        imp = ranking.importance(m.metadata, importance)
        # heat orders what the query does not rank (module docstring)
        cold = c.relevance is not None or m.id not in heat
        hot = 0.0 if cold else ranking.heat(heat[m.id].count, 10.0)
        score = (
            _PRIORITY.get(c.tier, 0.0)
            + max(0.0, rel)
            + _FRESH_WEIGHT * fresh
            + _IMPORTANCE_WEIGHT * imp
            + _HEAT_WEIGHT * hot
        )
        scored.append((c, score))
    # stable on ties: the order candidates were found in (pins, profile, recent, recall)
    scored.sort(key=lambda cs: -cs[1])
    return scored


def _pack(
    ranked: list[tuple[_Candidate, float]], budget: int, count: TokenCounter
) -> tuple[list[ContextItem], list[str]]:
    """Greedy: each line in rank order if it still fits, else left out. Lines are counted one
    by one; a counter whose sum of parts is below its count of the whole is caught by the final
    check, which drops the lowest-ranked lines until the whole render fits."""
    items: list[ContextItem] = []
    left_out: list[str] = []
    room = budget - count(HEADER)
    for c, score in ranked:
        item = _item(c, score)
        need = count(item.line(len(items) + 1))
        if room >= need:
            items.append(item.model_copy(update={"tokens": need}))
            room -= need
        else:
            left_out.append(item.id)
    while items and count(render_items(items)) > budget:
        left_out.insert(0, items.pop().id)
    return items, left_out


def _item(c: _Candidate, score: float) -> ContextItem:
    m = c.memory
    return ContextItem(
        id=m.id,
        content=m.content,
        scope=m.scope,
        kind=m.kind,
        subject=m.subject,
        key=m.key,
        agents=list(m.agents),
        created_at=m.created_at,
        tier=c.tier,
        why=list(c.reasons),
        score=round(score, 4),
        relevance=c.relevance,
        uncommitted=c.hit.working,
    )


def _pairs(
    items: Sequence[ContextItem], ranked: Sequence[tuple[_Candidate, float]]
) -> list[tuple[ContextItem, _Candidate]]:
    by_id = {c.memory.id: c for c, _ in ranked}
    return [(it, by_id[it.id]) for it in items]


def _record(
    who: Identity,
    scopes: Sequence[str] | None,
    grant: ReadGrant,
    memory_ids: list[str],
    event_ids: list[str],
) -> AuditRecord:
    """One read record, like recall's: the memories (and uncommitted events) included."""
    one = scopes[0] if scopes and len(scopes) == 1 else "*"
    return AuditRecord(
        tenant=who.tenant,
        agent=who.agent,
        action="recall",
        scope=one,
        scopes=list(scopes or []),
        decision="allow" if not grant.empty else "deny",
        rule="; ".join(grant.rules) or None,
        result_count=len(memory_ids) + len(event_ids),
        memory_ids=memory_ids,
        event_ids=event_ids,
    )
