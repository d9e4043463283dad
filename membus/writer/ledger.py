"""The consolidation ledger: per slot, every event that fed it, in one Redis hash.

``membus:{tenant}:slot:<slot>`` holds ``e:<event id>`` -> the event as a ``Variant``, ``ret`` ->
the latest retraction cut-off (fixed-width ISO time, so Lua compares it as a string) and ``into``
-> the slot it was merged into. The hash is the source of truth for a slot's memories; the store
holds their materialisation (``consolidate.materialize``).

Why Redis and not the store: adding to a slot must be atomic across any number of writer
processes, and Qdrant has no compare-and-set. A writer adds its events (one script call, which
also refuses tombstoned events), WATCHes the slots, reads them, writes the store, and commits its
acknowledgement in a MULTI; if anyone touched those slots meanwhile, EXEC fails and it reads and
writes again. So the last successful commit of a slot always wrote that slot's whole state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from membus.core.envelope import Event
from membus.core.keys import PREFIX
from membus.core.redis import Redis
from membus.errors import InvalidInput
from membus.stream.tombstones import tombstones_key
from membus.writer.consolidate import (
    MAX_LEVEL,
    RETRACTION,
    SlotState,
    Variant,
    parse_state,
    slot_of,
)

# KEYS: tombstones, dirty set, then one slot key per item; ARGV: the slot-key prefix, then per
# item (op, event id, value). ``a``: assert (unkeyed, queued for the near-duplicate pass), ``u``:
# assert unkeyed, ``k``: assert keyed, ``e``: an event of its own (no folding), ``r``: retract
# with cut-off ``value`` ("<time>|<level>": versions labelled up to the level the retracting
# author may read; a bare time, from before levels, reaches every label). Merged slots are
# followed.
# Returns per item the slot key written, or false when the event is tombstoned (erased).
_ADD = """
local out = {}
for i = 3, #KEYS do
  local j = (i - 3) * 3 + 2
  local op, eid, val = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local key = KEYS[i]
  local hops = 0
  local into = redis.call('HGET', key, 'into')
  while into and hops < 16 do
    key = ARGV[1] .. into
    into = redis.call('HGET', key, 'into')
    hops = hops + 1
  end
  if redis.call('HEXISTS', KEYS[1], eid) == 1 then
    out[#out + 1] = false
  else
    if op == 'r' then
      -- val is "<cut-off>|<level>": the cut-off reaches versions labelled at most that level
      local bar = string.find(val, '|', 1, true)
      local at, field = val, 'ret'
      if bar then at, field = string.sub(val, 1, bar - 1), 'ret:' .. string.sub(val, bar + 1) end
      local cur = redis.call('HGET', key, field)
      if (not cur) or at > cur then redis.call('HSET', key, field, at) end
      redis.call('HSETNX', key, 'r:' .. eid, val)
    else
      redis.call('HSETNX', key, 'e:' .. eid, val)
      if op == 'a' then redis.call('ZADD', KEYS[2], 0, string.sub(key, #ARGV[1] + 1)) end
    end
    out[#out + 1] = key
  end
end
return out
"""

# KEYS: tombstones, then slot keys; ARGV: per slot, the one event id the caller expects alone in
# it and the sha1 of its value ('' for none). Per slot: 1 when it holds exactly that event, not
# erased (the caller knows the state: no need to send it back); else its fields flattened and
# the tombstoned event ids among them (erasure may have tombstoned an event after it entered).
_READ = """
local out = {}
for i = 2, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  local want, sum = ARGV[2 * i - 3], ARGV[2 * i - 2]
  if want ~= '' and #flat == 2 and flat[1] == 'e:' .. want and redis.sha1hex(flat[2]) == sum
     and redis.call('HEXISTS', KEYS[1], want) == 0 then
    out[#out + 1] = 1
  else
    local dead = {}
    for j = 1, #flat, 2 do
      local f = flat[j]
      if string.sub(f, 1, 2) == 'e:' and redis.call('HEXISTS', KEYS[1], string.sub(f, 3)) == 1 then
        dead[#dead + 1] = string.sub(f, 3)
      end
    end
    out[#out + 1] = {flat, dead}
  end
end
return out
"""


_SCAN_PAGE = 1000  # slots per SCAN call and per pipelined read in ``find_variants``


def slot_prefix(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:slot:"


def slot_key(tenant: str, slot: str) -> str:
    return slot_prefix(tenant) + slot


def dirty_key(tenant: str) -> str:
    """Unkeyed slots written since the near-duplicate pass last looked."""
    return f"{PREFIX}:{{{tenant}}}:slots:dirty"


def cutoff(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Item:
    """One event's write to the ledger."""

    slot: str
    op: str
    event_id: str
    value: bytes | str
    # what ``value`` encodes, when the maker had it (saves parsing it back: see ``Ledger.read``)
    variant: Variant | None = field(default=None, compare=False, repr=False)

    def known(self) -> Variant:
        return self.variant or Variant.from_json(self.event_id, self.value)

    @classmethod
    def of(
        cls, event: Event, *, fold: bool = True, queue: bool = True, clearance: int = MAX_LEVEL
    ) -> Item:
        """Raises ``InvalidInput`` for a retraction that names no target of its own scope.
        ``fold=False``: every event its own slot (one memory per event, nothing merges);
        ``queue``: an unkeyed slot is queued for the near-duplicate pass; ``clearance``: for a
        retraction, the highest label its author may read there (what it may withdraw)."""
        if event.kind == RETRACTION:
            return cls(slot_of(event), "r", event.id, f"{cutoff(event.created_at)}|{clearance}")
        variant = Variant.of(event)
        value = variant.to_json()
        if not fold:
            return cls(f"{event.scope}:e{event.id}", "e", event.id, value, variant)
        keyed = event.subject is not None and event.key is not None
        op = "k" if keyed else "a" if queue else "u"
        return cls(slot_of(event), op, event.id, value, variant)


class Ledger:
    def __init__(self, redis: Redis) -> None:
        # plain EVAL (no EVALSHA/SCRIPT LOAD): the ACL users get no SCRIPT command at all
        self.redis = redis

    async def add(self, tenant: str, items: Sequence[Item]) -> list[str | None]:
        """Write ``items``; returns each one's slot (after merges), None where it was erased."""
        if not items:
            return []
        keys = [
            tombstones_key(tenant),
            dirty_key(tenant),
            *(slot_key(tenant, i.slot) for i in items),
        ]
        args: list[Any] = [slot_prefix(tenant)]
        for i in items:
            args += [i.op, i.event_id, i.value]
        found: list[Any] = await self.redis.eval(_ADD, len(keys), *keys, *args)
        cut = len(slot_prefix(tenant))
        return [_text(k)[cut:] if k else None for k in found]

    async def read(
        self, tenant: str, slots: Sequence[str], alone: Mapping[str, Item] | None = None
    ) -> dict[str, SlotState]:
        """The slots' states. ``alone``: per slot, the item the caller just added there; a slot
        still holding exactly that item, byte for byte, is not sent back (a fresh slot, the
        common case on ingest)."""
        if not slots:
            return {}
        keys = [tombstones_key(tenant), *(slot_key(tenant, s) for s in slots)]
        args: list[str] = []
        for s in slots:
            item = alone.get(s) if alone else None
            args += [item.event_id, _sha1(item.value)] if item and item.op != "r" else ["", ""]
        found: list[Any] = await self.redis.eval(_READ, len(keys), *keys, *args)
        out: dict[str, SlotState] = {}
        for slot, got in zip(slots, found, strict=True):
            if got == 1:
                assert alone is not None
                out[slot] = SlotState(slot, [alone[slot].known()])
                continue
            flat, dead = got
            fields = {_text(flat[j]): _text(flat[j + 1]) for j in range(0, len(flat), 2)}
            out[slot] = parse_state(slot, fields, [_text(d) for d in dead])
        return out


async def find_variants(
    redis: Redis, tenant: str, match: Callable[[Variant], bool]
) -> list[tuple[str, str]]:
    """Erasure's scan: (slot key, event id) of every variant ``match`` accepts. A full scan of
    the tenant's slots, like erasure's scans of its streams."""
    found: list[tuple[str, str]] = []
    page: list[str] = []

    async def read() -> None:  # one round trip per page of slots, not one per slot
        async with redis.pipeline(transaction=False) as pipe:
            for key in page:
                pipe.hgetall(key)
            hashes: list[Any] = await pipe.execute()
        for key, fields in zip(page, hashes, strict=True):
            for f, v in fields.items():
                name = _text(f)
                if name.startswith("e:") and match(Variant.from_json(name[2:], _text(v))):
                    found.append((key, name[2:]))
        page.clear()

    async for raw in redis.scan_iter(match=slot_prefix(tenant) + "*", count=_SCAN_PAGE):
        page.append(_text(raw))
        if len(page) >= _SCAN_PAGE:
            await read()
    if page:
        await read()
    return found


async def drop_parked(redis: Redis, tenant: str, raw: Sequence[str | None]) -> None:
    """A parked event (its stream entry's JSON) must not feed a memory later, when a repeat
    rewrites its slot: a writer that failed after adding it to the ledger left it there."""
    found = []
    for text in raw:
        try:
            event = Event.from_json(text or "")
            found.append((slot_key(tenant, Item.of(event).slot), event.id))
        except InvalidInput:  # unparseable, or a retraction without a target: never added
            continue
    await drop_variants(redis, found)


async def drop_variants(redis: Redis, found: Sequence[tuple[str, str]]) -> int:
    """Erasure: delete these variants (their content must not linger in the ledger)."""
    if not found:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for key, event_id in found:
            pipe.hdel(key, f"e:{event_id}")
        return sum(int(x) for x in await pipe.execute())


def _sha1(value: bytes | str) -> str:
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()  # the script checks redis.sha1hex


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
