"""The bus end to end on a real Redis: publish -> consume -> embed -> store -> change -> ack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest
from pydantic import ValidationError

import membus
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.keys import TenantKeys
from membus.errors import InvalidInput, Unavailable
from membus.store.port import point_id
from membus.stream.feed import Change
from membus.stream.ops import group_stats

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)

Entries = list[tuple[str, dict[str, str]]]  # what a decode_responses client returns


def config(url: str, writers: int = 1) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=writers,
        ranking=EVERY_HIT,
    )


@pytest.mark.slow
async def test_published_events_become_memories_acked_with_one_change_each(
    redis_url: str, tmp_path: Path
) -> None:
    """Every event becomes one memory with its provenance, the group ends with nothing pending or
    lagging, and the tenant's change feed has exactly one upsert per memory."""
    tenant = "acme"
    keys = TenantKeys(tenant)
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice, bob = bus.agent("alice", tenant), bus.agent("bob", tenant)
        receipts = []
        for i in range(15):
            receipts.append(
                await alice.publish(
                    f"alice saw invoice {i} was paid late",
                    scope="team/billing",
                    subject=f"invoice-{i}",
                    metadata={"n": i},
                )
            )
        receipts += await bob.publish_many(
            [
                membus.Draft(content=f"bob fixed ticket {i}", scope="team/support/t1")
                for i in range(15)
            ]
        )
        assert len({r.event_id for r in receipts}) == 30
        await bus.drain(timeout_s=15)

        [stats] = await group_stats(bus.redis, keys.events)
        assert (stats.group, stats.pending, stats.lag) == ("writers", 0, 0)
        assert await bus.store.count(tenant) == 30

        memories = await bus.store.get(tenant, [point_id(tenant, r.event_id) for r in receipts])
        by_event = {m.source_events[0]: m for m in memories}
        assert len(by_event) == 30
        m0 = by_event[receipts[0].event_id]
        assert (m0.scope, m0.agents, m0.subject, m0.metadata) == (
            "team/billing",
            ["alice"],
            "invoice-0",
            {"n": 0},
        )
        assert by_event[receipts[-1].event_id].agents == ["bob"]

        changes = cast(Entries, await bus.redis.xrange(keys.changes))
        decoded = [orjson.loads(f["c"]) for _, f in changes]
        assert sorted(c["memory_id"] for c in decoded) == sorted(m.id for m in memories)
        assert all(c["op"] == "upsert" and c["tenant"] == tenant for c in decoded)
        assert {c["event_ids"][0] for c in decoded} == {r.event_id for r in receipts}

        # the receipt's position is the entry the writer consumed
        first = cast(
            Entries, await bus.redis.xrange(keys.events, min=receipts[0].position, count=1)
        )
        assert orjson.loads(first[0][1]["e"])["id"] == receipts[0].event_id

        hits = await alice.recall("invoice paid late", k=3)
        assert hits and all(h.memory.scope == "team/billing" for h in hits)


@pytest.mark.slow
async def test_tenants_never_see_each_other(redis_url: str, tmp_path: Path) -> None:
    async with membus.open(tmp_path, config(redis_url)) as bus:
        await bus.agent("a", "acme").publish("acme secret roadmap", scope="team")
        await bus.agent("b", "globex").publish("globex public notes", scope="team")
        await bus.drain(timeout_s=10)
        hits = await bus.agent("b", "globex").recall("secret roadmap", k=10)
        assert [h.memory.tenant for h in hits] == ["globex"]
        assert await bus.redis.xlen(TenantKeys("acme").changes) == 1
        assert await bus.redis.xlen(TenantKeys("globex").changes) == 1


async def test_subscribe_from_start_yields_committed_changes_in_scope(
    redis_url: str, tmp_path: Path
) -> None:
    """A subscriber to ``team/support`` sees that subtree's changes, in order, and nothing else."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        agent = bus.agent("alice", "acme")
        await agent.publish("billing thing", scope="team/billing")
        wanted = [
            await agent.publish(f"support thing {i}", scope="team/support/t1") for i in range(3)
        ]
        await bus.drain(timeout_s=10)
        seen = []
        with anyio.fail_after(10):
            async for change in agent.subscribe(["team/support"], start="0"):
                seen.append(change)
                if len(seen) == 3:
                    break
        assert [c.event_ids for c in seen] == [[r.event_id] for r in wanted]
        assert all(c.position for c in seen)


@pytest.mark.slow
async def test_drain_without_writers_says_so(redis_url: str, tmp_path: Path) -> None:
    """With no writer running drain must fail with Unavailable, not hang or pass."""
    async with membus.open(tmp_path, config(redis_url, writers=0)) as bus:
        await bus.agent("alice", "acme").publish("nobody will write this", scope="team")
        with pytest.raises(Unavailable) as caught:
            await bus.drain(timeout_s=0.3)
    # it says what it waited for and why: one unread event, and no writer in the group
    assert "acme: 1 unread, 0 pending" in str(caught.value)
    assert "no writer has joined group 'writers'" in str(caught.value)


@pytest.mark.slow
# any text is an id (encoded, see test_ids.py); padding, control characters and "" are not
@pytest.mark.parametrize(("agent", "tenant"), [("Bad Name ", "acme"), ("ok", "acme\x00"), ("", "")])
async def test_bad_identity_is_invalid_input(
    redis_url: str, tmp_path: Path, agent: str, tenant: str
) -> None:
    """Regression: ``Bus.agent`` let pydantic's ValidationError escape, which callers catching
    ``MembusError`` miss."""
    raised: BaseException | None = None
    async with membus.open(tmp_path, config(redis_url, writers=0)) as bus:
        try:
            bus.agent(agent, tenant)
        except Exception as exc:
            raised = exc
    assert not isinstance(raised, ValidationError), f"pydantic error escaped: {raised}"
    assert isinstance(raised, InvalidInput), f"an invalid identity gave {raised!r}"
    assert raised.problems


# -- consumer groups on the change feed belong to their agent -----------------------------------

GROUP_POLICY = "p, alice, acme, team/*, publish|subscribe\n"


async def _collect(feed: AsyncIterator[Change], into: list[Change], n: int) -> None:
    async for change in feed:
        into.append(change)
        if len(into) == n:
            return


@pytest.mark.slow
async def test_an_agent_cannot_join_another_agents_group(redis_url: str, tmp_path: Path) -> None:
    """Attack: mallory, who may read nothing of the team, subscribes first under alice's group
    name and waits; alice joins, 20 team changes commit. Before, the group was the tenant's:
    mallory's consumer took the changes, her grant filtered them out, and she acknowledged them,
    so alice never got them. A group belongs to the authenticated agent (and its scopes): alice
    gets all 20, mallory nothing, and no agent can even spell another's group name."""
    gate = CasbinGate(MemorySource(GROUP_POLICY))
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        alice, mallory = bus.agent("alice", "acme"), bus.agent("mallory", "acme")
        got: list[Change] = []
        stolen: list[Change] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_collect, mallory.subscribe(group="team-feed"), stolen, 20)
            await anyio.sleep(0.3)  # mallory's consumer is first in line
            tg.start_soon(_collect, alice.subscribe(["team"], group="team-feed"), got, 20)
            await anyio.sleep(0.3)
            for i in range(20):
                await alice.publish(f"team change {i}", "team/ops")
            with anyio.fail_after(15):
                while len(got) < 20:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert sorted(c.content or "" for c in got) == sorted(f"team change {i}" for i in range(20))
        assert stolen == []
        groups: Any = await bus.redis.xinfo_groups(TenantKeys("acme").changes)
        names = sorted(g["name"] for g in groups)
        assert [n.split(":")[:3] for n in names] == [
            ["sub", "alice", "team-feed"],
            ["sub", "mallory", "team-feed"],
        ]
        # the Redis name of alice's group is not a name mallory can ask for
        for spelled in (names[0], "alice:team-feed", "../alice"):
            with pytest.raises(InvalidInput, match="group"):
                await anext(mallory.subscribe(group=spelled))
