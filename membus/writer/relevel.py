"""Once per tenant: rewrite from the ledger the keyed slots a store written by an older membus
holds without per-clearance validity (``membus.store.port.Levels``).

Such points are not lost without it: recall's per-clearance condition falls back to their
``valid_to_ts`` (see ``membus.store.filters.spec``). But they keep the old trace: a version a
reader may read, replaced by one it may not, shows it as superseded, and when. Only slots whose
versions carry different labels can look different to different clearances, so only those are
rewritten (the ledger is the source of truth; ``Consolidator.rewrite`` re-materialises a slot
under WATCH and announces nothing but deletes). Run by writers in their quiet time; a marker per
tenant records that the pass completed, so it runs once, and a pass cut short runs again whole
(rewrites are idempotent).
"""

from __future__ import annotations

from typing import Any

from membus.core.keys import PREFIX
from membus.core.logs import get_logger
from membus.writer.commit import Consolidator
from membus.writer.consolidate import parse_state
from membus.writer.ledger import slot_prefix

# the store layout this pass brings a tenant to; a later pass of this kind takes a new number
LEVELS_LAYOUT = "1"
_PAGE = 500


def levels_key(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:store:levels"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def mixed(slot: str, fields: dict[str, str]) -> bool:
    """A keyed slot with versions of more than one label: one clearance may see it otherwise."""
    state = parse_state(slot, fields)
    return state.keyed and len({v.label for v in state.variants}) > 1


async def relevel(c: Consolidator, tenant: str) -> int | None:
    """Rewrite ``tenant``'s mixed-label keyed slots unless done before; returns how many were
    rewritten, or None when the tenant was done already."""
    mark = await c.redis.get(levels_key(tenant))
    if mark is not None and _text(mark) == LEVELS_LAYOUT:
        return None
    prefix = slot_prefix(tenant)
    page: list[str] = []
    todo: list[str] = []

    async def read() -> None:
        async with c.redis.pipeline(transaction=False) as pipe:
            for key in page:
                pipe.hgetall(key)
            hashes: list[Any] = await pipe.execute()
        for key, raw in zip(page, hashes, strict=True):
            slot = key[len(prefix) :]
            fields = {_text(k): _text(v) for k, v in raw.items()}
            if slot.rpartition(":")[2].startswith("k") and mixed(slot, fields):
                todo.append(slot)
        page.clear()

    async for raw in c.redis.scan_iter(match=prefix + "*", count=_PAGE):
        page.append(_text(raw))
        if len(page) >= _PAGE:
            await read()
    if page:
        await read()
    done = await c.rewrite(tenant, todo) if todo else 0
    await c.redis.set(levels_key(tenant), LEVELS_LAYOUT)
    get_logger("membus.relevel").info("relevel.done", tenant=tenant, slots=done)
    return done
