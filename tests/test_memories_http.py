"""The memory operations over HTTP (membus/service/app.py) and through ``membus.Client`` and
``SyncClient``: the same answers as the in-process ``Agent``, behind the same gate.

No policy: the default gate, so each agent reaches only its own ``agent/<name>`` scopes and
every other agent's memories are private to it; the attacker tests use that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import membus
from membus.bus.api import Bus
from membus.core.config import MembusConfig, RedisConfig
from membus.core.keys import TenantKeys
from membus.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from membus.service.app import create_app
from membus.service.auth import ApiKeys
from membus.service.client import Client, SyncClient
from tests.test_service import FAST, auth, running

pytestmark = pytest.mark.anyio

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
RESTORE = "restore-key-0123456789"  # alice again, in a clean tenant
KEYS = ApiKeys.from_keys(
    {ALICE: ("acme", "alice"), BOB: ("acme", "bob"), RESTORE: ("restore", "alice")}
)
T0 = datetime(2024, 3, 1, 9, tzinfo=UTC)
ABSENT = "00000000-0000-0000-0000-000000000000"


@asynccontextmanager
async def private(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Bus, httpx.AsyncClient]]:
    """A bus without a policy and its app, driven in process."""
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST)
    async with membus.open(tmp_path, cfg) as bus:
        transport = httpx.ASGITransport(app=create_app(bus, KEYS))
        async with httpx.AsyncClient(transport=transport, base_url="http://membus") as http:
            yield bus, http


async def seed(bus: Bus) -> None:
    """Alice: three versions of a keyed fact and a note; bob: one note of his own."""
    alice = bus.agent("alice", "acme")
    for n, tier in enumerate(["bronze", "silver", "gold"]):
        await alice.publish(
            f"customer 42 is on the {tier} tier",
            "agent/alice/crm",
            kind="fact",
            subject="customer:42",
            key="tier",
            created_at=T0 + timedelta(days=n),
        )
    await alice.publish("the office plant needs water", "agent/alice", created_at=T0)
    await bus.agent("bob", "acme").publish("bob's own note", "agent/bob")
    await bus.drain(timeout_s=15)


def client(http: httpx.AsyncClient, key: str) -> Client:
    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    return Client("http://membus", key, transport=transport)


@pytest.mark.slow
async def test_the_client_answers_like_the_agent(tmp_path: Path, redis_url: str) -> None:
    """list, get, history, scopes and export through the client equal the in-process answers;
    update, retract and delete go through the log the same way."""
    async with private(tmp_path, redis_url) as (bus, http):
        await seed(bus)
        local = bus.agent("alice", "acme")
        async with client(http, ALICE) as remote:
            assert await remote.list() == await local.list()
            assert (await remote.list(limit=2)).cursor is not None
            page = await remote.list(scopes="agent/alice/crm", kinds=["fact"], since=T0)
            assert page == await local.list(scopes=["agent/alice/crm"], kinds=["fact"], since=T0)
            assert [m.content.split()[-2] for m in page.memories] == ["gold"]
            # the next page from the cursor, as in process
            first = await remote.list(limit=1)
            assert await remote.list(limit=1, cursor=first.cursor) == await local.list(
                limit=1, cursor=first.cursor
            )
            gold = page.memories[0]
            assert await remote.get(gold.id) == await local.get(gold.id)
            versions = await remote.history(subject="customer:42", key="tier")
            assert versions == await local.history(subject="customer:42", key="tier")
            assert [v.history for v in versions] == [False, True, True]
            assert await remote.history(versions[2].id, limit=2) == versions[:2]
            assert await remote.scopes() == await local.scopes()
            assert await remote.scopes() == ["agent/alice", "agent/alice/crm"]
            exported = [m async for m in remote.export()]
            assert exported == [m async for m in local.export()] and len(exported) == 4
            then = [m async for m in remote.export(as_of=T0 + timedelta(days=1, hours=1))]
            assert {m.content for m in then} == {
                "customer 42 is on the silver tier",
                "the office plant needs water",
            }
            with pytest.raises(InvalidInput) as remote_err:
                await remote.history(gold.id, subject="customer:42")
            with pytest.raises(InvalidInput) as local_err:
                await local.history(gold.id, subject="customer:42")
            assert str(remote_err.value) == str(local_err.value)
            with pytest.raises(Conflict):  # an old version is not what one updates
                await remote.update(versions[1].id, "customer 42 is on the tin tier")

            receipt = await remote.update(gold.id, "customer 42 is on the platinum tier")
            assert receipt.scope == "agent/alice/crm"
            [plant] = (await remote.list(kinds=["observation"])).memories
            await remote.update(plant.id, "the plant needs water twice a week", label="internal")
            await bus.drain(timeout_s=15)
            now = await remote.history(subject="customer:42", key="tier")
            assert now[0].content == "customer 42 is on the platinum tier"
            [plant] = (await remote.list(kinds=["observation"])).memories
            assert plant.content == "the plant needs water twice a week"

            await remote.retract(scope="agent/alice/crm", subject="customer:42", key="tier")
            await bus.drain(timeout_s=15)
            assert (await remote.list(kinds=["fact"])).memories == []
            report = await remote.delete(plant.id)
            assert report.memories == 1 and report.memory_ids == [plant.id]
            with pytest.raises(NotFound):
                await remote.get(plant.id)


@pytest.mark.slow
async def test_export_then_import_over_http_restores_once(tmp_path: Path, redis_url: str) -> None:
    """GET /v1/export streams JSON lines that POST /v1/import reads back, idempotently; a bad
    line is a 400 naming it; importing into scopes one may not write is a 403, nothing sent."""
    async with private(tmp_path, redis_url) as (bus, http):
        await seed(bus)
        r = await http.get("/v1/export", headers=auth(ALICE))
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = r.content.splitlines()
        assert len(lines) == 4
        assert membus.parse_jsonl(lines) == [m async for m in bus.agent("alice", "acme").export()]

        body, ndjson = r.content, {"content-type": "application/x-ndjson"}
        first = await http.post("/v1/import", content=body, headers={**auth(RESTORE), **ndjson})
        assert first.status_code == 200, first.text
        assert (first.json()["published"], first.json()["skipped"]) == (4, 0)
        await bus.drain(timeout_s=15)
        async with client(http, RESTORE) as remote:
            again = await remote.import_memories(membus.parse_jsonl(lines))
            assert (again.published, again.skipped, again.tenant) == (0, 4, "restore")
            restored = [m async for m in remote.export()]
            assert sorted(m.content for m in restored) == sorted(
                m.content for m in membus.parse_jsonl(lines)
            )
            empty = await remote.import_memories([])
            assert (empty.published, empty.tenant) == (0, "restore")

        bad = await http.post(
            "/v1/import", content=lines[0] + b'\n{"id": "x"}\n', headers=auth(RESTORE)
        )
        assert bad.status_code == 400 and "line 2" in bad.json()["error"]["message"]
        # bob may not write alice's scopes: refused whole, before anything is published
        before = await bus.redis.xlen(TenantKeys("acme").events)
        refused = await http.post("/v1/import", content=body, headers=auth(BOB))
        assert refused.status_code == 403, refused.text
        assert await bus.redis.xlen(TenantKeys("acme").events) == before


@pytest.mark.slow
async def test_another_agent_cannot_see_change_or_probe_private_memories(
    tmp_path: Path, redis_url: str
) -> None:
    """Bob, holding only his own key, tries every memory route on alice's private memories:
    each answers exactly as for an id that does not exist (status and body, the id aside),
    lists and exports leave them out, and nothing of alice's changes."""
    async with private(tmp_path, redis_url) as (bus, http):
        await seed(bus)
        alice = bus.agent("alice", "acme")
        [gold] = (await alice.list(kinds=["fact"])).memories
        before = await alice.history(gold.id)
        events_before = await bus.redis.xlen(TenantKeys("acme").events)
        bob = auth(BOB)

        async def probe(method: str, path: str, **kw: Any) -> tuple[int, str]:
            hidden = await http.request(method, path.format(id=gold.id), headers=bob, **kw)
            absent = await http.request(method, path.format(id=ABSENT), headers=bob, **kw)
            assert hidden.status_code == absent.status_code == 404, (path, hidden.text)
            assert hidden.text.replace(gold.id, "X") == absent.text.replace(ABSENT, "X")
            assert hidden.headers.get("content-type") == absent.headers.get("content-type")
            return hidden.status_code, hidden.text

        await probe("GET", "/v1/memories/{id}")
        await probe("GET", "/v1/memories/{id}/history")
        await probe("GET", "/v1/history?memory_id={id}")
        await probe("PATCH", "/v1/memories/{id}", json={"content": "bob was here"})
        await probe("DELETE", "/v1/memories/{id}")
        retracts = [
            await http.post("/v1/retract", json={"memory_id": target}, headers=bob)
            for target in (gold.id, ABSENT)
        ]
        assert [r.status_code for r in retracts] == [404, 404]
        assert retracts[0].text.replace(gold.id, "X") == retracts[1].text.replace(ABSENT, "X")

        # listing, exporting and history by key leave alice's memories out
        r = await http.get("/v1/memories", headers=bob)
        assert [m["content"] for m in r.json()["memories"]] == ["bob's own note"]
        r = await http.get("/v1/export", headers=bob)
        assert [m.content for m in membus.parse_jsonl(r.content.splitlines())] == ["bob's own note"]
        r = await http.get("/v1/history?subject=customer:42&key=tier", headers=bob)
        assert r.status_code == 200 and r.json() == {"memories": []}
        assert (await http.get("/v1/scopes", headers=bob)).json() == {"scopes": ["agent/bob"]}
        # naming her scope outright is refused, as recall refuses it (it says nothing of ids)
        for path in (
            "/v1/memories?scope=agent/alice",
            "/v1/export?scope=agent/alice",
            "/v1/history?subject=customer:42&key=tier&scope=agent/alice/crm",
        ):
            r = await http.get(path, headers=bob)
            assert r.status_code == 403, (path, r.text)

        # identity comes from the key alone: a tenant in the query is ignored, in a body refused
        r = await http.get("/v1/memories?tenant=restore", headers=bob)
        assert [m["content"] for m in r.json()["memories"]] == ["bob's own note"]
        for body in ({"content": "x", "tenant": "acme"}, {"content": "x", "agent": "alice"}):
            r = await http.patch(f"/v1/memories/{gold.id}", json=body, headers=auth(ALICE))
            assert r.status_code == 400, r.text
        r = await http.post(
            "/v1/retract", json={"memory_id": gold.id, "agent": "alice"}, headers=bob
        )
        assert r.status_code == 400, r.text

        # the client raises the same NotFound for both
        async with client(http, BOB) as remote:
            with pytest.raises(NotFound) as hidden:
                await remote.get(gold.id)
            with pytest.raises(NotFound) as absent:
                await remote.get(ABSENT)
            assert str(hidden.value).replace(gold.id, "X") == str(absent.value).replace(ABSENT, "X")
            with pytest.raises(NotFound):  # an id is one path segment, never a route
                await remote.get("../../v1/whoami")
            with pytest.raises(PermissionDenied):
                await remote.list(scopes=["agent/alice"])

        # nothing of alice's changed, and bob published nothing
        assert await alice.history(gold.id) == before
        assert await bus.redis.xlen(TenantKeys("acme").events) == events_before


@pytest.mark.slow
async def test_sync_client_and_sync_agent_manage_memories(tmp_path: Path, redis_url: str) -> None:
    """SyncClient against a real server and SyncAgent in process: the same operations, the
    same answers, without an event loop of their own."""
    async with private(tmp_path, redis_url) as (bus, _http):
        await seed(bus)
        local = bus.agent("alice", "acme")
        want_page = await local.list()
        want_versions = await local.history(subject="customer:42", key="tier")
        app = create_app(bus, KEYS)
        async with running(app) as url:

            def work() -> tuple[Any, ...]:
                with SyncClient(url, ALICE) as agent:
                    page = agent.list()
                    one = agent.get(page.memories[0].id)
                    versions = agent.history(subject="customer:42", key="tier")
                    exported = list(agent.export())
                    with pytest.raises(NotFound):
                        agent.get(ABSENT)
                    report = agent.import_memories(exported)  # still here: all skipped
                    changes = list(agent.subscribe(start="0", until_now=True))
                    return page, one, versions, exported, agent.scopes(), report, changes

            page, one, versions, exported, scopes, report, changes = await anyio.to_thread.run_sync(
                work
            )
        assert len(changes) >= 4 and {c.scope for c in changes} <= {
            "agent/alice",
            "agent/alice/crm",
        }
        assert page == want_page and one == want_page.memories[0]
        assert versions == want_versions
        assert exported == [m async for m in local.export()]
        assert scopes == ["agent/alice", "agent/alice/crm"]
        assert (report.published, report.skipped) == (0, 4)


@pytest.mark.slow
def test_sync_agent_has_every_memory_operation(tmp_path: Path, redis_url: str) -> None:
    """open_sync: SyncAgent retracts, reads access statistics, lists, gets, exports, deletes."""
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST)
    with membus.open_sync(tmp_path, cfg) as bus:
        alice = bus.agent("alice", "acme")
        alice.publish("Ana lives in Lyon", "agent/alice", kind="fact", subject="ana", key="city")
        alice.publish("a note", "agent/alice")
        bus.drain(timeout_s=15, merges=False)
        [hit] = alice.recall("where does Ana live", k=1, kinds=["fact"])
        assert alice.access([hit.memory.id])[hit.memory.id].count == 1
        assert alice.get(hit.memory.id) == hit.memory
        assert alice.scopes() == ["agent/alice"]
        assert len(list(alice.export())) == len(alice.list().memories) == 2
        alice.retract(scope="agent/alice", subject="ana", key="city", reason="moved away")
        bus.drain(timeout_s=15)
        assert [m.content for m in alice.list().memories] == ["a note"]
        assert alice.delete(alice.list().memories[0].id).memories == 1
        assert alice.list().memories == []


def test_openapi_documents_the_memory_routes() -> None:
    """The schema lists every memory route, the 404 of those taking an id, and JSON lines
    where export writes and import reads them."""
    from tests.test_parity import http_spec

    spec = http_spec()
    paths = spec["paths"]
    for path in ("/v1/memories/{memory_id}", "/v1/memories/{memory_id}/history"):
        assert "404" in paths[path]["get"]["responses"]
    assert "404" in paths["/v1/memories/{memory_id}"]["patch"]["responses"]
    assert "404" in paths["/v1/memories/{memory_id}"]["delete"]["responses"]
    assert "404" not in paths["/v1/memories"]["get"]["responses"]
    assert "application/x-ndjson" in paths["/v1/export"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in paths["/v1/import"]["post"]["requestBody"]["content"]
    assert {"/v1/scopes", "/v1/retract", "/v1/history"} <= set(paths)
