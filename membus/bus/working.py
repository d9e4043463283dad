"""Working memory: what was just published, recallable before a writer has consolidated it.

``recall(..., working=True)`` reads the tail of the tenant's events stream and keeps the entries
the writer group has not committed yet: after the group's last-delivered id, or delivered but
still pending (a writer holds them; their memories are not in the store until it acknowledges).
Each one passes the same checks a consolidated memory would before it is shown:

- the caller's read grant (scope and sensitivity: ``ReadGrant.admits``) and the recall's own
  filters, in Python, mirroring membus/store/filters.py;
- the writers' admission (membus/writer/admission.py, run as a preview that records nothing):
  not erased (by event id and by the id its memory would get); signed by its agent's live key
  when writers verify signatures; not a replayed copy of an event already written from another
  entry, nor dated outside the replay window or too far ahead; and its author still allowed to
  publish into its scope. The stream is not trusted: an entry a writer would park must never
  be shown, not even while it waits for a writer.

Retractions among those entries are no memories of their own, but what they withdraw (the
memories of their slot observed at or before their cut-off, stored or still in the tail) is
hidden already: writers will drop it. A slot merged away into another is not followed here.

Survivors are scored by cosine against the query with the bus's embedder and come back as
``Hit(working=True)``; their ``memory.id`` is the id the writer will give the memory, so recall
drops a working hit once its consolidated memory is in the results. How far back it reads is
bounded by ``RankingConfig.working_tail`` entries and ``working_max_age_s``.

A store's scores need not be cosines (the hybrid engines score the evidence a memory carries,
``membus.store.relevance``), so before merging, a working hit's cosine is mapped onto the store's
scale (``calibrate``) using the stored candidates' own cosines: that costs one embedding of the
stored candidates' contents, paid only when working memory was asked for and found something.
With no stored candidate to calibrate on, a working hit scores its cosine clipped to [0, 1],
which is what a store scores without lexical evidence. Either way it lies in [0, 1], the scale
``min_score`` filters on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from redis.exceptions import ResponseError

from membus.core.config import MembusConfig
from membus.core.envelope import LABELS, Event, scope_ancestors
from membus.core.keys import TenantKeys
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.embed.port import Vectors
from membus.errors import InvalidInput
from membus.store.filters import RecallFilter
from membus.store.port import Hit, Memory
from membus.store.relevance import clip
from membus.writer.admission import Admission, Parsed
from membus.writer.consolidate import RETRACTION
from membus.writer.ledger import Item

Entry = tuple[str, dict[str, str]]
Embed = Callable[[list[str]], Awaitable[Vectors]]

_log = get_logger("membus.working")


def _pos(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (string order is wrong: "9-0" > "10-0")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def uncommitted(
    redis: Redis, tenant: str, group: str, *, tail: int, max_age_s: float, now_ms: int
) -> list[Entry]:
    """The newest ``tail`` entries of the tenant's events stream (none older than ``max_age_s``)
    that ``group`` has not committed, newest first."""
    stream = TenantKeys(tenant).events
    oldest = f"{max(0, now_ms - int(max_age_s * 1000))}-0"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(stream, max="+", min=oldest, count=tail)
            pipe.xinfo_groups(stream)
            raw, groups = await pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise raw
        entries: list[Entry] = [(str(i), dict(f)) for i, f in raw]
        if not entries:
            return []
        # no group yet (no writer ever read this stream): nothing is committed
        info = [] if isinstance(groups, ResponseError) else groups
        if isinstance(info, Exception):
            raise info
        mine = [g for g in info if g["name"] == group]
        if not mine:
            return entries
        delivered = _pos(str(mine[0]["last-delivered-id"]))
        fresh = [e for e in entries if _pos(e[0]) > delivered]
        held = [e for e in entries if _pos(e[0]) <= delivered]
        if not held or int(mine[0]["pending"]) == 0:
            return fresh
        pending: Any = await redis.xpending_range(
            stream, group, min=held[-1][0], max=held[0][0], count=len(held)
        )
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    ids = {str(p["message_id"]) for p in pending}
    return fresh + [e for e in held if e[0] in ids]


def admits(event: Event, flt: RecallFilter) -> bool:
    """The recall filter in Python: tenant, the read grant (scope + sensitivity), the caller's
    scopes, kinds, subjects, agents, time range; ``as_of`` sees only what was observed by then."""
    if event.tenant != flt.tenant:  # a forged entry naming another tenant
        return False
    if event.kind == RETRACTION:  # an instruction to writers, never a memory of its own
        return False
    if not flt.grant.admits(event.scope, LABELS[event.label]):
        return False
    if flt.scopes is not None:
        under = scope_ancestors(event.scope) if flt.include_subscopes else [event.scope]
        if not any(s in flt.scopes for s in under):
            return False
    for wanted, value in ((flt.kinds, event.kind), (flt.subjects, event.subject)):
        if wanted is not None and value not in wanted:
            return False
    if flt.agents is not None and event.agent not in flt.agents:
        return False
    at = event.created_at
    if (flt.since is not None and at < flt.since) or (flt.until is not None and at > flt.until):
        return False
    return flt.as_of is None or at <= flt.as_of


def _parse(entries: Sequence[Entry], tenant: str) -> list[Parsed]:
    """The entries a writer would not park as invalid, oldest first (the order writers judge
    them in, so of two copies of one event the later is the replay)."""
    out: list[Parsed] = []
    for entry_id, fields in reversed(entries):
        try:
            event = Event.from_json(fields.get("e", ""))
        except InvalidInput:
            continue  # a writer parks it in the dead-letter stream; nothing to recall
        if event.tenant == tenant:  # a forged entry naming another tenant is parked too
            out.append((entry_id, fields, event))
    return out


@dataclass
class Working:
    """Uncommitted entries as recall sees them: hits, and per slot the latest cut-off of the
    retractions pending there (what was observed at or before it is withdrawn)."""

    hits: list[Hit] = field(default_factory=list)
    cuts: dict[str, datetime] = field(default_factory=dict)

    def withdraws(self, slot: str | None, observed: datetime) -> bool:
        cut = self.cuts.get(slot) if slot is not None else None
        return cut is not None and observed <= cut


async def working_hits(
    redis: Redis,
    flt: RecallFilter,
    query: Vectors,
    embed: Embed,
    config: MembusConfig,
    admission: Admission,
    *,
    now_ms: int | None = None,
) -> Working:
    """Uncommitted events ``flt`` admits, as hits scored by cosine to ``query``, best first,
    minus what pending retractions withdraw. Only events ``admission`` (the writers' own
    checks, previewed: nothing is recorded) would admit are shown: not erased, signed by their
    agent's live key, not a replayed copy, not out of the replay window or dated ahead, and
    published by an agent still allowed to publish into the scope."""
    if flt.grant.empty or flt.scopes == []:
        return Working()
    cfg = config.ranking
    entries = await uncommitted(
        redis,
        flt.tenant,
        config.worker.group,
        tail=cfg.working_tail,
        max_age_s=cfg.working_max_age_s,
        now_ms=now_ms or int(time.time() * 1000),
    )
    # a retraction counts whoever may read its scope: it can only hide, in its own scope
    wanted = [
        p for p in _parse(entries, flt.tenant) if p[2].kind == RETRACTION or admits(p[2], flt)
    ]
    if not wanted:
        return Working()
    screened = await admission.screen(flt.tenant, wanted, record=False)
    if screened.rejected:
        _log.info(
            "working.refused_skipped",
            tenant=flt.tenant,
            reasons=sorted({r[2] for r in screened.rejected}),
            count=len(screened.rejected),
        )
    kept = list({e.id: e for _, e in reversed(screened.admitted)}.values())  # one per event
    undo = [e for e in kept if e.kind == RETRACTION]
    found = [e for e in kept if e.kind != RETRACTION]
    out = Working(cuts=_cuts(undo))
    if out.cuts:  # an event's slot costs its ledger item: only worth it with retractions about
        fold = config.consolidation.enabled
        found = [e for e in found if not out.withdraws(_slot(e, fold), e.created_at)]
    if not found:
        return out
    vectors = await embed([e.content for e in found])
    scores = vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
    out.hits = [
        Hit(memory=Memory.from_event(e), score=float(s), working=True)
        for e, s in zip(found, scores, strict=True)
    ]
    out.hits.sort(key=lambda h: -h.score)
    return out


def _slot(event: Event, fold: bool) -> str | None:
    try:
        return Item.of(event, fold=fold).slot
    except InvalidInput:  # a writer parks it
        return None


def _cuts(retractions: Sequence[Event]) -> dict[str, datetime]:
    cuts: dict[str, datetime] = {}
    for e in retractions:
        slot = _slot(e, True)  # a retraction names its slot whatever the folding
        if slot is not None and (slot not in cuts or e.created_at > cuts[slot]):
            cuts[slot] = e.created_at
    return cuts


def calibrate(
    stored_scores: Sequence[float], stored_cosines: Sequence[float], working: Sequence[Hit]
) -> list[Hit]:
    """Working hits (scored by cosine) on the store's score scale: the stored candidates give
    (cosine, score) points; their monotone envelope (best score at or below each cosine) is
    interpolated linearly, and extended proportionally beyond its ends. A store that scores by
    cosine maps every cosine to itself; a hybrid one places a working hit where stored hits of
    like similarity sit; the result is clipped to [0, 1]. Non-positive cosines score 0; with
    nothing to calibrate on, a cosine scores itself."""
    points = sorted(
        (c, s) for c, s in zip(stored_cosines, stored_scores, strict=True) if c > 0 and s > 0
    )
    if not points:
        return [h.model_copy(update={"score": clip(h.score)}) for h in working]
    xs: list[float] = []
    ys: list[float] = []
    for c, s in points:
        best = max(s, ys[-1]) if ys else s
        if xs and c == xs[-1]:
            ys[-1] = best
        else:
            xs.append(c)
            ys.append(best)
    out = []
    for h in working:
        c = h.score
        if c <= 0:
            out.append(h.model_copy(update={"score": 0.0}))
            continue
        if c >= xs[-1]:
            score = ys[-1] * c / xs[-1]
        elif c <= xs[0]:
            score = ys[0] * c / xs[0]
        else:
            score = float(np.interp(c, xs, ys))
        out.append(h.model_copy(update={"score": clip(score)}))
    return out


async def with_working(
    redis: Redis,
    flt: RecallFilter,
    query: Vectors,
    embed: Embed,
    config: MembusConfig,
    admission: Admission,
    stored: Sequence[Hit],
) -> list[Hit]:
    """``stored`` plus the working hits not consolidated yet, on the store's score scale."""
    pending = await working_hits(redis, flt, query, embed, config, admission)
    # a stored memory is withdrawn when its newest observation is (then all of them are)
    stored = [h for h in stored if not pending.withdraws(h.memory.slot, h.memory.updated_at)]
    working = pending.hits
    if not working:
        return list(stored)
    cosines: list[float] = []
    if stored:
        vectors = await embed([h.memory.content for h in stored])
        cosines = [float(c) for c in vectors @ np.asarray(query, dtype=np.float32).reshape(-1)]
    working = calibrate([h.score for h in stored], cosines, working)
    return merge(stored, working)


def merge(stored: Sequence[Hit], working: Sequence[Hit]) -> list[Hit]:
    """Stored hits plus the working hits not already consolidated into one of them (a writer
    may commit between the two reads): by memory id, or by source event."""
    seen = {h.memory.id for h in stored}
    seen |= {e for h in stored for e in h.memory.source_events}
    fresh = [
        h for h in working if h.memory.id not in seen and h.memory.source_events[0] not in seen
    ]
    return [*stored, *fresh]
