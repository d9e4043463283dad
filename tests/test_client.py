"""``membus.service.client``: the same surface, models and errors as an in-process agent, over
HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import membus
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.errors import Conflict, InvalidInput, PermissionDenied, StoreLocked, Unavailable
from membus.recall.heat import Access
from membus.service.app import create_app
from membus.service.client import Client, SyncClient
from membus.service.limits import Limits
from membus.service.wire import (
    Backpressure,
    RateLimited,
    TooLarge,
    Unauthenticated,
    error_body,
    error_from_body,
    status_of,
)
from membus.store.port import point_id
from tests.test_service import ALICE, BOB, KEYS, opened, running

pytestmark = pytest.mark.anyio


def same_hits(a: list[membus.Hit], b: list[membus.Hit]) -> bool:
    return [(h.memory, h.working) for h in a] == [(h.memory, h.working) for h in b] and all(
        x.score == pytest.approx(y.score, rel=1e-6) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.slow
async def test_async_client_mirrors_the_in_process_agent(tmp_path: Path, redis_url: str) -> None:
    """Publishing through the client or in process yields the same memories; recall through
    either returns equal hits; bad input raises the same InvalidInput, message and all."""
    async with opened(tmp_path, redis_url) as bus:
        app = create_app(bus, KEYS)
        local = bus.agent("alice", "acme")
        transport = httpx.ASGITransport(app=app)
        async with Client("http://membus", ALICE, transport=transport) as remote:
            r1 = await remote.publish("Invoices go out on the 1st.", "team/billing", kind="fact")
            assert isinstance(r1, membus.Receipt) and r1.tenant == "acme"
            rs = await remote.publish_many(
                [membus.Draft(content=f"Refund rule {i}", scope="team/billing") for i in range(2)]
            )
            assert [r.scope for r in rs] == ["team/billing"] * 2
            await local.publish("Invoices are PDF.", "team/billing", subject="invoices")
            await bus.drain(10)

            query: dict[str, Any] = {"scopes": ["team/billing"], "kinds": ["fact", "observation"]}
            via_http = await remote.recall("when do invoices go out", k=10, **query)
            in_process = await local.recall("when do invoices go out", k=10, **query)
            # scores carry recency, measured at each call: equal up to the clock
            assert same_hits(via_http, in_process) and len(via_http) == 4
            assert all(isinstance(h, membus.Hit) for h in via_http)
            assert {a for h in via_http for a in h.memory.agents} == {"alice"}

            with pytest.raises(InvalidInput) as remote_err:
                await remote.publish("x", "team/../up")
            with pytest.raises(InvalidInput) as local_err:
                await local.publish("x", "team/../up")
            assert str(remote_err.value) == str(local_err.value)
            assert remote_err.value.problems == local_err.value.problems
            with pytest.raises(TypeError):  # a misspelt field fails at the call (and in mypy)
                await remote.publish("x", "team/a", **{"bogus": 1})
            with pytest.raises(InvalidInput):
                await remote.recall("   ")
            assert (await remote.whoami()).agent == "alice"

        async with Client("http://membus", "wrong-key-0123456789", transport=transport) as bad:
            with pytest.raises(Unauthenticated):
                await bad.recall("x")


async def test_client_raises_permission_denied_like_the_bus(tmp_path: Path, redis_url: str) -> None:
    """A gate denial reaches the caller as PermissionDenied naming agent, action and scope."""
    gate = CasbinGate(MemorySource("p, alice, acme, team/*, publish|recall|subscribe, allow\n"))
    async with opened(tmp_path, redis_url, writers=0, gate=gate) as bus:
        transport = httpx.ASGITransport(app=create_app(bus, KEYS))
        async with Client("http://membus", BOB, transport=transport) as remote:
            with pytest.raises(PermissionDenied) as remote_err:
                await remote.publish("x", "team/a")
        with pytest.raises(PermissionDenied) as local_err:
            await bus.agent("bob", "acme").publish("x", "team/a")
        assert str(remote_err.value) == str(local_err.value)
        assert (remote_err.value.agent, remote_err.value.action) == ("bob", "publish")


@pytest.mark.slow
async def test_client_subscribe_follows_and_resumes(tmp_path: Path, redis_url: str) -> None:
    """Client.subscribe yields membus.Change over SSE and resumes after a position."""
    async with opened(tmp_path, redis_url) as bus:
        app = create_app(bus, KEYS, Limits(sse_keepalive_s=0.2))
        async with running(app) as url, Client(url, ALICE) as remote:
            for i in range(3):
                await remote.publish(f"step {i}", "team/ops")
            seen: list[membus.Change] = []
            with anyio.fail_after(10):
                async for change in remote.subscribe(["team/ops"], start="0"):
                    seen.append(change)
                    if len(seen) == 3:
                        break
            assert [c.content for c in seen] == ["step 0", "step 1", "step 2"]
            assert seen[0].position is not None
            with anyio.fail_after(10):
                async for change in remote.subscribe(["team/ops"], start=seen[0].position):
                    assert change.content == "step 1"
                    break


@pytest.mark.slow
async def test_sync_client_round_trip(tmp_path: Path, redis_url: str) -> None:
    """SyncClient: publish, batch, recall and subscribe without an event loop of its own."""
    async with opened(tmp_path, redis_url) as bus:
        app = create_app(bus, KEYS, Limits(sse_keepalive_s=0.2))
        async with running(app) as url:

            def work() -> tuple[list[membus.Hit], list[membus.Change]]:
                with SyncClient(url, ALICE) as agent:
                    agent.publish("Sync one.", "team/sync")
                    agent.publish_many([membus.Draft(content="Sync two.", scope="team/sync")])
                    changes = []
                    for change in agent.subscribe(["team/sync"], start="0"):
                        changes.append(change)
                        if len(changes) == 2:
                            break
                    return agent.recall("sync", k=5, scopes="team/sync"), changes

            hits, changes = await anyio.to_thread.run_sync(work)
        assert sorted(h.memory.content for h in hits) == ["Sync one.", "Sync two."]
        assert [c.content for c in changes] == ["Sync one.", "Sync two."]
        local = await bus.agent("alice", "acme").recall("sync", k=5, scopes=["team/sync"])
        assert same_hits(hits, local)


@pytest.mark.slow
async def test_retries_wait_out_a_rate_limit(tmp_path: Path, redis_url: str) -> None:
    """With retries the client honours Retry-After on 429 (nothing was done, so it is safe);
    without, it raises RateLimited, an Unavailable."""
    async with opened(tmp_path, redis_url, writers=0) as bus:
        transport = httpx.ASGITransport(app=create_app(bus, KEYS, Limits(rate_per_s=2, burst=1)))
        async with Client("http://membus", ALICE, transport=transport) as once:
            await once.publish("a", "team/a")
            with pytest.raises(RateLimited) as err:
                await once.publish("b", "team/a")
            assert isinstance(err.value, Unavailable) and err.value.retry_after_s > 0
        async with Client("http://membus", ALICE, transport=transport, retries=2) as patient:
            t0 = time.monotonic()
            await patient.publish("c", "team/a")
            assert time.monotonic() - t0 >= 0.5


async def test_unreachable_service_is_unavailable() -> None:
    """A service that does not answer raises Unavailable, not an httpx error."""
    from tests.redis_proc import free_port

    async with Client(f"http://127.0.0.1:{free_port()}", ALICE, timeout_s=2) as remote:
        with pytest.raises(Unavailable):
            await remote.publish("x", "team/a")
        with pytest.raises(Unavailable):
            async for _ in remote.subscribe(reconnect=False):
                pass


@pytest.mark.parametrize(
    "exc",
    [
        InvalidInput("bad", [{"field": "scope", "reason": "no"}]),
        PermissionDenied("bob", "recall", "team/x", "acme"),
        Unauthenticated("unknown API key"),
        TooLarge(1024),
        RateLimited("slow down", 2.5),
        Backpressure("writers behind", 1.0, "backpressure"),
        Unavailable("redis down"),
        Conflict("clash"),
        StoreLocked("locked"),
    ],
)
def test_errors_round_trip_through_the_wire(exc: membus.MembusError) -> None:
    """Every error type survives error_body -> JSON -> error_from_body with type and message."""
    back = error_from_body(status_of(exc), error_body(exc))
    assert type(back) is type(exc)
    assert (back.code, str(back)) == (exc.code, str(exc))
    assert back.to_dict() == exc.to_dict()


@pytest.mark.slow
async def test_clients_pass_recall_options_and_read_access(tmp_path: Path, redis_url: str) -> None:
    """working, as_of and access() through both clients, same answers as in process."""
    async with opened(tmp_path, redis_url, writers=0) as bus:
        transport = httpx.ASGITransport(app=create_app(bus, KEYS))
        local = bus.agent("alice", "acme")
        await local.publish("the coffee order goes out at 10", "team/office")
        async with Client("http://membus", ALICE, transport=transport) as remote:
            assert await remote.recall("coffee order") == []
            [h] = await remote.recall("coffee order", working=True, scopes="team/office")
            assert h.working and h.memory.content == "the coffee order goes out at 10"
            past = datetime.now(UTC) - timedelta(days=1)
            assert await remote.recall("coffee order", working=True, as_of=past) == []
            assert await remote.access([h.memory.id]) == {}  # not a memory yet

    async with opened(tmp_path, redis_url) as bus:
        await bus.drain(10)
        app = create_app(bus, KEYS)
        async with running(app) as url:

            def work() -> tuple[list[membus.Hit], dict[str, Access]]:
                with SyncClient(url, ALICE) as agent:
                    hits = agent.recall("coffee order", working=True)
                    return hits, agent.access([x.memory.id for x in hits])

            hits, stats = await anyio.to_thread.run_sync(work)
        assert [(x.memory.content, x.working) for x in hits] == [
            ("the coffee order goes out at 10", False)
        ]
        assert stats == await bus.agent("alice", "acme").access([hits[0].memory.id])
        assert stats[hits[0].memory.id].count == 1


@pytest.mark.slow
async def test_a_feed_read_until_now_ends_and_carries_nothing_erased(
    tmp_path: Path, redis_url: str
) -> None:
    """Issue 15.2: ``subscribe(until_now=True)`` (in process and over SSE) reads the feed as it
    is now and ends, so a surface can serve "the latest changes" without keeping a copy:
    after a forget the erased content is not in it, only the content-free delete notice."""
    async with opened(tmp_path, redis_url) as bus:
        app = create_app(bus, KEYS)
        local = bus.agent("alice", "acme")
        async with Client("http://membus", ALICE, transport=httpx.ASGITransport(app=app)) as c:
            r = await local.publish("badge pin zq-pin-31", "team/ops")
            await local.publish("lunch at one", "team/ops")
            await bus.drain(10)
            for read in (
                lambda: local.subscribe(start="0", until_now=True),
                lambda: c.subscribe(start="0", until_now=True),
            ):
                with anyio.fail_after(5):
                    before = [x.content async for x in read()]
                assert before == ["badge pin zq-pin-31", "lunch at one"]
            await local.forget(memory_ids=[point_id("acme", r.event_id)])
            for read in (
                lambda: local.subscribe(start="0", until_now=True),
                lambda: c.subscribe(start="0", until_now=True),
            ):
                with anyio.fail_after(5):
                    after = [(x.op, x.content) async for x in read()]
                assert after == [("upsert", "lunch at one"), ("delete", None)]
