"""Admission on the write path: the stream is not trusted, so a writer re-checks every event.

In order, per batch: erased (tombstoned) events are dropped without a trace (parking them would
copy erased content into the dead-letter stream); then the signature must prove the agent wrote
exactly these bytes; then ``created_at`` must not be later than the stream entry's own time (its
id: Redis's clock, which no publisher sets) plus the skew the door allows, since an entry XADDed
around the door was never bounded; then the event must be new (not a re-injected copy of a
captured event);
then the agent must still be allowed to publish into the scope. Signatures come before the
replay check so a forged entry cannot claim a real event's id first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from membus.access.gate import Gate, Identity
from membus.access.signing import KeyRegistry, SignatureInvalid, verify
from membus.core.config import WorkerConfig
from membus.core.envelope import Event, future_dated
from membus.core.redis import Redis
from membus.stream.replay import ReplayGuard
from membus.stream.tombstones import erased

Parsed = tuple[str, dict[str, str], Event]  # (entry id, stream fields, event)


@dataclass
class Screened:
    admitted: list[tuple[str, Event]] = field(default_factory=list)
    # (entry id, fields, reason, error, event) — parked in the dead-letter stream and audited
    rejected: list[tuple[str, dict[str, str], str, str, Event]] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)  # entry ids: deleted and acknowledged


class Admission:
    def __init__(
        self,
        redis: Redis,
        gate: Gate,
        keys: KeyRegistry,
        replay: ReplayGuard,
        *,
        verify_signatures: bool = True,
    ) -> None:
        self.redis, self.gate, self.keys, self.replay = redis, gate, keys, replay
        self.verify_signatures = verify_signatures

    async def clearance(self, event: Event) -> int:
        """The highest label ``event``'s author may read in its scope now (-1: none). A
        retraction withdraws versions up to it, so it reaches no further than a forget."""
        who = Identity(tenant=event.tenant, agent=event.agent)
        grant = await self.gate.grant(who, "recall", [event.scope])
        if grant.empty or not grant.covers(event.scope):
            return -1
        return grant.clearance

    async def screen(
        self, tenant: str, parsed: Sequence[Parsed], *, record: bool = True
    ) -> Screened:
        """The writer's verdicts on ``parsed`` (oldest first). ``record=False`` previews them
        without remembering event ids (working memory shows only what a writer will admit)."""
        out = Screened()
        dead = await erased(self.redis, tenant, [e.id for _, _, e in parsed]) if parsed else set()
        signed: list[Parsed] = []
        for entry_id, fields, event in parsed:
            if event.id in dead:
                out.erased.append(entry_id)
                continue
            if self.verify_signatures:
                try:
                    await verify(fields, event, self.keys)
                except SignatureInvalid as exc:
                    out.rejected.append((entry_id, fields, exc.reason, str(exc), event))
                    continue
            arrived = int(entry_id.partition("-")[0]) / 1000
            if (
                why := future_dated(event.created_at, arrived, "stream entry's (Redis)")
            ) is not None:
                why = f"event {event.id}: created_at {event.created_at.isoformat()} {why}"
                out.rejected.append((entry_id, fields, "future_dated", why, event))
                continue
            signed.append((entry_id, fields, event))
        items = [(e.id, eid) for eid, _, e in signed]
        verdicts = await self.replay.check_many(tenant, items, record=record)
        for (entry_id, fields, event), verdict in zip(signed, verdicts, strict=True):
            if verdict in ("replay", "stale"):
                why = f"event {event.id} was already written from another stream entry"
                if verdict == "stale":
                    why = f"event {event.id} is older than the replay window"
                out.rejected.append((entry_id, fields, verdict, why, event))
                continue
            who = Identity(tenant=event.tenant, agent=event.agent)
            decision = await self.gate.decision(who, "publish", event.scope)
            if not decision.allowed:
                why = f"agent {event.agent!r} may no longer publish to {event.scope!r}"
                out.rejected.append((entry_id, fields, "denied", why, event))
                continue
            out.admitted.append((entry_id, event))
        return out


def admission_for(redis: Redis, gate: Gate, keys: KeyRegistry, config: WorkerConfig) -> Admission:
    """The writers' admission as ``config`` sets it up (replay window, signatures): one place,
    so a writer and working memory judge an event alike."""
    return Admission(
        redis,
        gate,
        keys,
        ReplayGuard(redis, config.replay_window_s),
        verify_signatures=config.verify_signatures,
    )
