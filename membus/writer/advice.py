"""The writer's side of the optional LLM consolidator (``membus/writer/llm.py``): one decision per
event, persisted, turned into ledger items.

Only unkeyed assertions are offered to the model (keyed facts, retractions and unfolded events
follow the rules alone). Its neighbours are the nearest current memories of the fact's exact
scope that the author may recall. A decision is not deterministic, so the ledger writes it leads
to are stored by event id (``membus:{tenant}:llm:writes``, HSETNX) before they are made, and a
redelivered event reuses them: it can never land in two slots. (The model's reason may quote the
fact: erasure drops these records with the events.) A ``delete`` is honoured only when
the author holds the forget right on the scope, as ``retract`` demands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from membus.access.gate import Gate, Identity
from membus.core.envelope import LABELS, Event
from membus.core.keys import PREFIX
from membus.core.redis import Redis
from membus.store.filters import RecallFilter
from membus.store.port import Store
from membus.writer.commit import Embed
from membus.writer.ledger import Item, cutoff
from membus.writer.llm import (
    Decision,
    Fact,
    FallbackConsolidator,
    Neighbour,
    apply,
    with_provenance,
)

_KEEP_S = 7 * 24 * 3600  # as long as a redelivery may come (the replay window's default)


def writes_key(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:llm:writes"


class Advisor:
    def __init__(
        self, redis: Redis, store: Store, embed: Embed, gate: Gate, model: FallbackConsolidator
    ) -> None:
        self.redis, self.store, self.embed, self.gate, self.model = redis, store, embed, gate, model

    async def items(
        self, tenant: str, events: Sequence[Event], items: Sequence[Item]
    ) -> list[list[Item]]:
        """Per event, the ledger items to write in its place (in order)."""
        key = writes_key(tenant)
        stored: list[Any] = await self.redis.hmget(key, [e.id for e in events])
        out: list[list[Item]] = []
        for event, item, prior in zip(events, items, stored, strict=True):
            if item.op not in ("a", "u"):
                out.append([item])
                continue
            if prior is None:
                record: bytes | str = await self._decide(tenant, event, item)
                if not await self.redis.hsetnx(key, event.id, record):  # a twin decided first
                    record = str(await self.redis.hget(key, event.id))
                await self.redis.expire(key, _KEEP_S)
            else:
                record = str(prior)
            out.append(_items(event, item, orjson.loads(record)))
        return out

    async def _decide(self, tenant: str, event: Event, item: Item) -> bytes:
        """The decision's ledger writes for ``event``, as stored: [[slot, op], ...] + value."""
        who = Identity(tenant=tenant, agent=event.agent)
        grant = await self.gate.grant(who, "recall", [event.scope])
        flt = RecallFilter(
            tenant=tenant, scopes=[event.scope], include_subscopes=False, grant=grant
        )
        [vector] = await self.embed([event.content])
        hits = await self.store.search(np.asarray([vector]), flt, self.model.k)
        neighbours = [n for h in hits if (n := Neighbour.of(h.memory, h.score)) is not None]
        decision = await self.model.decide(
            Fact.of(event), neighbours, tenant=tenant, event_id=event.id
        )
        may_retract = (await self.gate.decision(who, "forget", event.scope)).allowed
        writes = apply(
            decision,
            item.slot,
            neighbours,
            may_retract=may_retract,
            sensitivity=LABELS[event.label],
        )
        return orjson.dumps(
            {
                "writes": [[w.slot, w.op] for w in writes],
                "decision": decision.model_dump(mode="json") if decision is not None else None,
            }
        )


def _items(event: Event, item: Item, record: dict[str, Any]) -> list[Item]:
    """The stored writes as ledger items: the fact (with the decision in its metadata) asserted
    into its slot or the target's, after a retraction of the target when there is one."""
    decision = Decision.model_validate(record["decision"]) if record["decision"] else None
    value = Item.of(with_provenance(event, decision)).value if decision else item.value
    out = []
    for slot, op in record["writes"]:
        if op == "retract":
            out.append(Item(slot, "r", item.event_id, cutoff(event.created_at)))
        else:
            op = item.op if slot == item.slot else "u"  # only the fact's own slot is queued
            out.append(Item(slot, op, item.event_id, value))
    return out
