"""Read your writes: ``publish(wait=True)`` returns once writers committed, or says why not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

import membus
from membus.bus.api import Bus
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig, WorkerConfig
from membus.core.keys import TenantKeys
from membus.core.redis import redis_client
from membus.embed.hashing import HashingEmbedder
from membus.errors import InvalidInput, NotCommitted, Parked, Unavailable
from membus.integrations.port import ClientPort
from membus.service.app import create_app
from membus.service.auth import ApiKeys
from membus.service.client import Client, _Req
from membus.store.port import point_id
from membus.stream.committed import wait_committed
from membus.stream.ops import beat, ensure_group

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=30
)


def config(url: str, writers: int = 1, worker: WorkerConfig = FAST) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=url), worker=worker, writers=writers
    )


class _Unused:
    """The store of a door without writers: waiting never touches it."""


async def test_a_waited_publish_is_searchable_at_once_even_a_repeat(
    redis_url: str, tmp_path: Path
) -> None:
    """wait=True returns only once the memory is in the store: a recall right after finds it.
    An exact repeat folds into the first memory (no point of its own): waiting still ends."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        r = await alice.publish("the invoice for acme was paid late", "team/x", wait=True)
        [hit] = await alice.recall("invoice paid late", k=1, scopes=["team/x"])
        assert r.event_id in hit.memory.source_events
        again = await alice.publish("the invoice for acme was paid late", "team/x", wait=True)
        assert await bus.store.get("acme", [point_id("acme", again.event_id)]) == []
        receipts = await alice.publish_many(
            [membus.Draft(content=f"batch note {i}", scope="team/x") for i in range(20)],
            wait=True,
        )
        found = await bus.store.get("acme", [point_id("acme", x.event_id) for x in receipts])
        assert len(found) == 20


@pytest.mark.slow
async def test_first_write_to_a_new_tenant_is_committed_promptly(
    redis_url: str, tmp_path: Path
) -> None:
    """Writers learn of a new tenant from the door's announcement, not their periodic refresh
    (30 s here): its first event is committed in well under a second."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        await anyio.sleep(0.2)  # writers up, blocked on their read
        for n in range(3):
            t0 = time.monotonic()
            await bus.agent("alice", f"fresh{n}").publish("hello", wait=True, timeout_s=5)
            assert time.monotonic() - t0 < 0.5


@pytest.mark.slow
async def test_no_writer_is_named_after_the_timeout(redis_url: str) -> None:
    """No writer consumes the tenant: the typed error says so, with the ids, and the events stay
    published (not a 503-like 'nothing happened')."""
    client = redis_client(redis_url)
    try:
        bus = Bus(client, _Unused(), HashingEmbedder(64), config(redis_url, writers=0))  # type: ignore[arg-type]
        t0 = time.monotonic()
        with pytest.raises(NotCommitted) as caught:
            await bus.agent("alice", "acme").publish("x", "agent/alice", wait=True, timeout_s=0.3)
        assert 0.3 <= time.monotonic() - t0 < 2
        err = caught.value
        assert err.cause == "no_writer" and "no writer is running" in str(err)
        assert isinstance(err, Unavailable) and len(err.event_ids) == 1
        assert await client.xlen(TenantKeys("acme").events) == 1
        # a group whose consumers left long ago is no running writer either; and with no
        # writer at all, a long wait gives up after a short grace, not its whole timeout
        await ensure_group(client, TenantKeys("acme").events, "writers")
        t0 = time.monotonic()
        with pytest.raises(NotCommitted, match="no writer is running"):
            await bus.agent("alice", "acme").publish("y", wait=True, timeout_s=30)
        assert time.monotonic() - t0 < 3
    finally:
        await client.aclose()


async def test_a_parked_event_raises_parked_with_its_reason(redis_url: str, tmp_path: Path) -> None:
    """Writers dead-letter a retraction that names nothing: the waiting publisher gets
    ``Parked`` (an InvalidInput) naming the event and the DLQ reason, not a silent return."""
    async with membus.open(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        ok = membus.Draft(content="fine", scope="team/x")
        bad = membus.Draft(content="withdraw nothing", scope="team/x", kind="retraction")
        with pytest.raises(Parked) as caught:
            await alice.publish_many([ok, bad], wait=True, timeout_s=5)
        err = caught.value
        assert isinstance(err, InvalidInput) and err.code == "parked"
        assert len(err.parked) == 1 and err.reason == "invalid"
        assert "retraction needs subject and key" in err.parked[0][2]
        [r_ok] = await alice.publish_many([ok], wait=True)  # the rest was committed
        assert r_ok.scope == "team/x"


async def test_waiting_on_entries_still_pending_is_behind_not_no_writer(redis_url: str) -> None:
    """Delivered to a live consumer but not acknowledged: 'behind', with the writer's error."""
    client = redis_client(redis_url)
    try:
        keys = TenantKeys("acme")
        await ensure_group(client, keys.events, "writers")
        pos = str(await client.xadd(keys.events, {"e": "{}"}))
        await beat(client, "writers", "w1")  # a live writer, which took the entry
        await client.xreadgroup("writers", "w1", {keys.events: ">"})
        await client.hset(keys.dlq_errors, pos, "ValueError: boom")
        with pytest.raises(NotCommitted) as caught:
            await wait_committed(client, "acme", {pos: "E1"}, "writers", timeout_s=0.05)
        assert caught.value.cause == "behind" and "boom" in str(caught.value)
        await client.xack(keys.events, "writers", pos)
        await wait_committed(client, "acme", {pos: "E1"}, "writers", timeout_s=1)
    finally:
        await client.aclose()


def test_the_sync_facade_waits_by_default(redis_url: str, tmp_path: Path) -> None:
    with membus.open_sync(tmp_path, config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        r = alice.publish("sync note about the roadmap")  # no scope: private, and waited for
        assert r.scope == "agent/alice"
        [hit] = alice.recall("roadmap", k=1)
        assert r.event_id in hit.memory.source_events
        quick = alice.publish("not waited for", wait=False)
        assert quick.scope == "agent/alice"


# -- over HTTP ------------------------------------------------------------------------------------

KEY = "alice-key-0123456789"


@asynccontextmanager
async def served(tmp_path: Path, redis_url: str, writers: int = 1) -> AsyncIterator[Client]:
    async with membus.open(tmp_path, config(redis_url, writers=writers)) as bus:
        app = create_app(bus, ApiKeys.from_keys({KEY: ("acme", "alice")}))
        transport = httpx.ASGITransport(app=app)
        async with Client("http://membus", KEY, transport=transport) as client:
            yield client


@pytest.mark.slow
async def test_http_publish_waits_when_asked_and_says_why_not(
    tmp_path: Path, redis_url: str
) -> None:
    """The publish routes take ``wait``: a waited publish is recallable at once; a parked one
    comes back as ``Parked`` with its reason; the wait is bounded."""
    async with served(tmp_path, redis_url) as client:
        r = await client.publish("vendor contract renews in may", "team/x", wait=True)
        [hit] = await client.recall("contract renews", k=1)
        assert r.event_id in hit.memory.source_events
        bad = membus.Draft(content="withdraw nothing", scope="team/x", kind="retraction")
        with pytest.raises(Parked) as caught:
            await client.publish_many([bad], wait=True)
        assert caught.value.parked[0][:2] == (str(caught.value.event_id), "invalid")
        with pytest.raises(InvalidInput, match="timeout_s"):
            await client._call(_Req("POST", "/v1/publish", {"content": "x", "timeout_s": 1e6}))
        mine = await client.publish("no scope given")  # not waited: the HTTP default
        assert mine.scope == "agent/alice"


@pytest.mark.slow
async def test_http_wait_without_writers_is_504_not_committed(
    tmp_path: Path, redis_url: str
) -> None:
    """Not a 503: a client retrying 503s would publish the event twice."""
    async with served(tmp_path, redis_url, writers=0) as client:
        with pytest.raises(NotCommitted) as caught:
            await client.publish("x", "team/x", wait=True, timeout_s=0.2)
        assert caught.value.cause == "no_writer" and len(caught.value.event_ids) == 1
        resp = await client._http.post(
            "/v1/publish", json={"content": "y", "wait": True, "timeout_s": 0.1}
        )
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "not_committed"


@pytest.mark.slow
async def test_langgraph_delete_over_http_is_visible_when_it_returns(
    tmp_path: Path, redis_url: str
) -> None:
    """ClientPort waited by polling recall for kind 'retraction', which never matched, so a
    delete returned before it was visible; it now waits on the commit signal."""
    pytest.importorskip("langgraph.store.base")
    from membus.integrations.langgraph import MembusStore

    async with served(tmp_path, redis_url) as client:
        store = MembusStore(ClientPort(client))
        await store.aput(("team", "x"), "pref", {"text": "prefers e-mail"})
        assert await store.aget(("team", "x"), "pref") is not None
        await store.adelete(("team", "x"), "pref")
        assert await store.aget(("team", "x"), "pref") is None


@pytest.mark.slow
async def test_the_http_agent_example_reads_its_own_writes(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``agents/http_agent.py`` waits for its own events (``wait=True``), not for any hit."""
    import agents.http_agent as example

    async with membus.open(tmp_path, config(redis_url)) as bus:
        app = create_app(bus, ApiKeys.from_keys({KEY: ("acme", "alice")}))
        transport = httpx.ASGITransport(app=app)
        real = Client

        def through_app(url: str, key: str, retries: int) -> Client:
            return real(url, key, retries=retries, transport=transport)

        monkeypatch.setattr(membus, "Client", through_app)  # what the example constructs
        await example.main("http://membus", KEY)
    out = capsys.readouterr().out
    assert out.count("published and committed") == 3
    assert "dana covers the weekend" in out
