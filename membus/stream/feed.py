"""The change feed: every committed memory change is an entry on ``membus:{tenant}:changes``.

Delivery is at-least-once: a writer that dies after its store write but before its transaction
(XADD change + XACK event) redoes both, so a subscriber may see one change twice; ``memory_id``
plus ``event_ids`` identify it. A deleted memory's change goes out before the point is deleted
(``announce_deletes``): once the point is gone, a redo could no longer tell that it existed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from membus.core.envelope import validate_name
from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.store.port import Memory
from membus.stream.ops import ensure_group
from membus.stream.tombstones import tombstoned, tombstones_key

# a batch read ahead is re-checked against erasure when it is older than this on delivery
RECHECK_S = 0.1

# conflict: two agents asserted different values for one key at nearly the same time; the
# change names the winner (current) and, in ``detail``, the superseded value and its agents
Op = Literal["upsert", "delete", "conflict"]


class Change(BaseModel):
    model_config = ConfigDict(frozen=True)

    op: Op
    memory_id: str
    tenant: str
    scope: str
    kind: str
    content: str | None = None
    subject: str | None = None
    key: str | None = None
    agents: list[str] = Field(default_factory=list)
    event_ids: list[str] = Field(default_factory=list)
    sensitivity: int = 0
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detail: dict[str, Any] | None = None
    position: str | None = None  # the change stream id, set when read

    @classmethod
    def upsert(cls, memory: Memory, event_ids: Sequence[str]) -> Change:
        return cls.model_validate(orjson.loads(upsert_fields(memory, event_ids)["c"]))

    @classmethod
    def of(cls, op: Op, memory: Memory, event_ids: Sequence[str], **extra: Any) -> Change:
        return cls(
            op=op,
            memory_id=memory.id,
            tenant=memory.tenant,
            scope=memory.scope,
            kind=memory.kind,
            content=memory.content if op != "delete" else None,
            subject=memory.subject,
            key=memory.key,
            agents=memory.agents,
            event_ids=list(event_ids),
            sensitivity=memory.sensitivity,
            **extra,
        )

    def to_fields(self) -> dict[str, bytes]:
        return {"c": orjson.dumps(self.model_dump(mode="json", exclude={"position"}))}

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Change:
        return cls.model_validate({**orjson.loads(fields["c"]), "position": entry_id})


def upsert_fields(memory: Memory, event_ids: Sequence[str]) -> dict[str, bytes]:
    """The stream entry for an upsert, built without a model round trip (writer hot path)."""
    return {
        "c": orjson.dumps(
            {
                "op": "upsert",
                "memory_id": memory.id,
                "tenant": memory.tenant,
                "scope": memory.scope,
                "kind": memory.kind,
                "content": memory.content,
                "subject": memory.subject,
                "key": memory.key,
                "agents": memory.agents,
                "event_ids": list(event_ids),
                "sensitivity": memory.sensitivity,
                "at": datetime.now(UTC),
            }
        )
    }


# one delete change, unless erasure has tombstoned the memory or one of its events: a forget
# that ran before this script leaves no change naming what it erased (its own notice, without
# subject or key, stands for it); one that runs after finds this entry in its scan of the feed.
# KEYS: changes, tombstones; ARGV: n, n ids, the entry's ``c``. Plain EVAL (no SCRIPT for the
# ACL users) and HGET, which both users hold.
_NOTICE = """
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  if redis.call('HGET', KEYS[2], ARGV[i]) then return false end
end
return redis.call('XADD', KEYS[1], '*', 'c', ARGV[n + 2])
"""


async def announce_deletes(
    redis: Redis, tenant: str, memories: Sequence[Memory], caused: Sequence[str]
) -> int:
    """Tell subscribers that ``memories`` are about to be deleted by the events ``caused``,
    before the store deletes them; returns how many changes went out (erased ones do not).

    Example: ``await announce_deletes(redis, "acme", existed, [retraction.id])``"""
    if not memories:
        return 0
    keys = [TenantKeys(tenant).changes, tombstones_key(tenant)]
    async with redis.pipeline(transaction=False) as pipe:
        for m in memories:
            ids = [m.id, *m.source_events]
            entry = Change.of("delete", m, list(caused)).to_fields()["c"]
            pipe.eval(_NOTICE, 2, *keys, len(ids), *ids, entry)
        added = await pipe.execute()
    return sum(a is not None for a in added)


def carried_ids(change: Change) -> list[str]:
    """The memory ids whose content ``change`` carries (a conflict also carries the loser's)."""
    ids = [change.memory_id]
    if change.detail is not None and isinstance(change.detail.get("superseded"), str):
        ids.append(change.detail["superseded"])
    return ids


async def _erased(redis: Redis, tenant: str, changes: Sequence[Change]) -> set[str]:
    """Positions of ``changes`` whose content was erased since they were read (delete notices
    carry none and always go through)."""
    ids = [i for c in changes if c.op != "delete" for i in carried_ids(c)]
    dead = await tombstoned(redis, tenant, ids) if ids else set()
    return {
        c.position or ""
        for c in changes
        if c.op != "delete" and not dead.isdisjoint(carried_ids(c))
    }


def group_name(agent: str, group: str, scopes: Sequence[str] | None) -> str:
    """The Redis consumer group behind ``agent``'s subscription ``group`` over ``scopes``.

    A group belongs to the agent that asked for it: the name is namespaced by the authenticated
    agent (names cannot hold ``:``, so no agent can spell another's group) and by the scopes
    followed, so every consumer of one group follows exactly the same changes through the same
    grant. A consumer acknowledges the changes its grant filters out (otherwise they would stay
    pending forever), and that takes them from nobody: its group-mates could not see them either.
    """
    validate_name(group, "group")
    wanted = "*" if scopes is None else "\n".join(sorted(set(scopes)))
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:16]
    return f"sub:{validate_name(agent, 'agent')}:{group}:{digest}"


async def follow(
    redis: Redis,
    tenant: str,
    admit: Callable[[Change], Awaitable[bool]] | None,
    *,
    start: str = "$",
    group: str | None = None,
    consumer: str = "c1",
    block_ms: int = 1000,
    count: int = 100,
    until_now: bool = False,
) -> AsyncIterator[Change]:
    """Yield the changes ``admit`` lets through (all if None) from ``start``, forever, or with
    ``until_now`` until the feed has nothing more (no blocking read).

    With ``group`` (a Redis group name: the bus passes ``group_name(...)``, never a caller's
    string) the subscription load-balances across consumers of that group: each change goes to
    one of them, and is acknowledged when the caller asks for the next one; one ``admit`` lets
    through is acknowledged as well, so every consumer of a group must share one ``admit``.

    A batch is read ahead, so before each change goes out it is checked again: ``admit`` asks
    the live grant (revocation), and a batch older than ``RECHECK_S`` is checked against the
    tombstones (a change erased after it was read is not delivered).
    """
    stream = TenantKeys(tenant).changes
    if group is not None:
        await ensure_group(redis, stream, group, start="$" if start == "$" else start)
    last = start
    if last == "$":
        # resolve "now" once, so no change slips between two blocking reads
        try:
            info = await redis.xinfo_stream(stream)
            last = info.get("last-generated-id") or "0-0"
        except ResponseError:
            last = "0-0"
    block = None if until_now else block_ms
    while True:
        try:
            if group is None:
                batch: Any = await redis.xread({stream: last}, count=count, block=block)
            else:
                batch = await redis.xreadgroup(
                    group, consumer, {stream: ">"}, count=count, block=block
                )
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        if until_now and not batch:
            return
        for _stream, entries in batch or []:
            changes = [Change.from_entry(eid, fields) for eid, fields in entries]
            read_at, dead = time.monotonic(), set[str]()
            for n, change in enumerate(changes):
                last = change.position or last
                if time.monotonic() - read_at > RECHECK_S:  # the consumer was slow: look again
                    try:
                        dead |= await _erased(redis, tenant, changes[n:])
                    except REDIS_DOWN as exc:
                        raise unavailable(exc) from exc
                    read_at = time.monotonic()
                if change.position not in dead and (admit is None or await admit(change)):
                    yield change
                if group is not None:
                    await redis.xack(stream, group, last)
