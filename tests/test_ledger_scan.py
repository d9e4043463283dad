"""Erasure's ledger scan (``ledger.find_variants``): slots are read a page at a time in one
pipelined round trip per page; every matching variant is found whatever the page boundaries,
and nothing of another tenant is."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from membus.core.envelope import Event
from membus.writer import ledger
from membus.writer.ledger import Item, Ledger, find_variants, slot_key

pytestmark = pytest.mark.anyio


def _event(tenant: str, i: int) -> Event:
    return Event.build(
        tenant=tenant,
        agent="alice",
        scope="team/a",
        content=f"note {i} about the rollout",
        subject="ana" if i % 3 == 0 else "ben",
        created_at=datetime(2026, 3, 1, 12, tzinfo=UTC),
    )


@pytest.mark.parametrize("page", [1, 4, 7, 1000])
async def test_every_matching_variant_is_found_across_pages(
    redis_url: str, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "_SCAN_PAGE", page)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        events = [_event("acme", i) for i in range(25)]
        items = [Item.of(e) for e in events]
        await Ledger(redis).add("acme", items)
        await Ledger(redis).add("other", [Item.of(_event("other", i)) for i in range(6)])
        found = await find_variants(redis, "acme", lambda v: v.subject == "ana")
        want = {
            (slot_key("acme", it.slot), e.id)
            for e, it in zip(events, items, strict=True)
            if e.subject == "ana"
        }
        assert sorted(found) == sorted(want) and len(found) == 9
    finally:
        await redis.aclose()
