"""Erasure at the byte level: after ``forget``, no byte of an erased canary is left anywhere.

Canaries of every shape (plain with metadata; keyed, with history and a conflict; uncommitted,
undelivered and pending; parked in the DLQ; redelivered after the forget; in working memory;
published over HTTP and MCP) are forgotten by each criterion (ids, subject, agent, scope). Then
we scan, and find none of their bytes in: ``DUMP`` of every Redis key of every type (and every
key name), every file under the data directory once the AOF rewrite that forget starts is done
(AOF base and increments, Redis's log, the Edge shard's WAL and segments), every store point, the
change feed from 0 over Python, SSE and MCP, working memory, the metrics page, and the logs.

What makes it hold: streams with one entry per node (``stream-node-max-entries 1``: XDEL frees
the entry's bytes), the AOF rewrite, and crypto-shredding in the store (``SealedStore``: what the
engine persists is sealed under per-memory keys that forget destroys, so Edge's WAL and segments
keep only ciphertext nobody can open).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import redis.asyncio as raw_redis

import membus
from membus.bus.api import Bus
from membus.bus.erasure import forget
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, WorkerConfig
from membus.core.envelope import new_event_id
from membus.core.keys import TenantKeys
from membus.core.redis import Redis
from membus.integrations.port import AgentPort
from membus.runtime.embedded import EmbeddedRedis
from membus.runtime.host import make_writers
from membus.service.app import create_app
from membus.service.auth import ApiKeys
from membus.store.port import point_id
from membus.store.sealed import SealedStore
from membus.writer.worker import Writer
from tests.log_capture import capture_logs
from tests.test_service import running

mcp = pytest.importorskip("mcp")
from mcp import Client  # noqa: E402

from membus.integrations.mcp import CHANGES_URI, build_server  # noqa: E402

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TENANT = "acme"
SECRET = "team/secret"
LEAKY_KEY = "leaky-key-0123456789"
FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=20, tenants_refresh_s=0.1
)


def canary(shape: str) -> str:
    """A string that occurs nowhere by chance, naming its shape so a failure says which."""
    return f"zq{shape}{secrets.token_hex(6)}"


@dataclass
class World:
    bus: Bus
    writer: Writer
    root: Path
    needles: dict[str, str]  # shape -> canary
    owned: dict[str, str]  # needles only the erased memories carry, whatever the criterion
    events: list[str] = field(default_factory=list)  # every canary event id
    replay: dict[str, str] = field(default_factory=dict)  # a canary entry's raw fields


async def settle(writer: Writer) -> None:
    """Run the writer until it has nothing left to read."""
    for _ in range(50):
        if await writer.step() == 0:
            return
    raise AssertionError("the writer kept finding work")


async def feed_from_zero(bus: Bus) -> str:
    """Everything the Python change feed yields from position 0, as JSON."""
    got: list[str] = []
    agent = bus.agent("auditor", TENANT)
    with anyio.move_on_after(1.0):
        async for change in agent.subscribe(start="0"):
            got.append(change.model_dump_json())
    return "\n".join(got)


async def sse_from_zero(url: str) -> str:
    got: list[str] = []
    async with httpx.AsyncClient(base_url=url) as http:
        with anyio.move_on_after(1.0):
            headers = {"Authorization": f"Bearer {LEAKY_KEY}"}
            async with http.stream("GET", "/v1/changes?from=0", headers=headers) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    got.append(line)
    return "\n".join(got)


async def mcp_changes(client: Client) -> str:
    result = await client.read_resource(CHANGES_URI)
    return "\n".join(getattr(c, "text", "") for c in result.contents)


async def dump_every_key(root: Path) -> bytes:
    """Key names and ``DUMP`` of every key, whatever its type: the serialized value Redis holds
    (stream listpacks included, with any entry only flagged as deleted)."""
    sock = EmbeddedRedis(root / "redis").socket
    client = raw_redis.Redis(unix_socket_path=str(sock))
    out = bytearray()
    try:
        async for key in client.scan_iter(count=1000):
            out += key + b"\0" + (await client.dump(key) or b"") + b"\0"
    finally:
        await client.aclose()
    return bytes(out)


async def aof_rewritten(redis: Redis) -> None:
    with anyio.fail_after(10):
        while True:
            info: Any = await redis.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                return
            await anyio.sleep(0.05)


def files_holding(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and not f.is_socket():
            body = f.read_bytes()
            hits += [f"{f.relative_to(root)}: {n}" for n in needles if n.encode() in body]
    return hits


def absent(where: str, haystack: str | bytes, needles: list[str]) -> list[str]:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    return [f"{where}: {n}" for n in needles if n.encode() in data]


@pytest.fixture(autouse=True)
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every membus log event of the whole run, at every level (set up before ``world``)."""
    with capture_logs() as events:
        yield events


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[World, Client, str]]:
    """An embedded bus (its own redis-server and Edge shard under ``tmp_path``) and one writer we
    step by hand, so that some canaries can stay uncommitted; HTTP and MCP doors open on it."""
    root = tmp_path / "bus"
    subject, key = canary("subject"), canary("key")
    needles = {
        s: canary(s)
        for s in ("plain", "meta", "hist", "conflict", "late", "ghost", "dlq", "replay", "http")
    }
    needles["mcp"] = canary("mcp")
    needles |= {"subject": subject, "key": key}
    keys = ApiKeys.from_keys({LEAKY_KEY: (TENANT, "leaky")})
    # the open mode: the canaries cross agents and shared scopes; this test is about bytes
    config = MembusConfig(
        worker=FAST, writers=0, policy=PolicyConfig(mode="open"), ranking=EVERY_HIT
    )
    async with membus.open(root, config) as bus:
        assert isinstance(bus.store, SealedStore)
        (writer,) = make_writers(
            bus.redis, bus.store, bus.embedder, bus.config, 1, bus.gate, bus.keys
        )
        leaky, rival = bus.agent("leaky", TENANT), bus.agent("rival", TENANT)
        w = World(bus, writer, root, needles, owned={})
        mcp_server = build_server(AgentPort(leaky))
        async with (
            running(create_app(bus, keys)) as url,
            Client(mcp_server, mode="auto", cache=None) as client,
        ):
            secret: dict[str, Any] = {"scope": SECRET, "subject": subject}
            put = [
                await leaky.publish(
                    needles["plain"],
                    **secret,
                    metadata={"note": needles["meta"], "importance": 0.5},
                ),
                await leaky.publish(needles["replay"], **secret),
                await leaky.publish(f"{needles['hist']} v1", **secret, key=key, kind="fact"),
                await leaky.publish(f"{needles['conflict']} v2", **secret, key=key, kind="fact"),
            ]
            await settle(writer)
            # a rival's value for the same key, moments later: a conflict that supersedes v2
            put.append(await rival.publish("the rival's value", **secret, key=key, kind="fact"))
            r = await httpx.AsyncClient(base_url=url).post(
                "/v1/publish",
                json={"content": needles["http"], **secret},
                headers={"Authorization": f"Bearer {LEAKY_KEY}"},
            )
            assert r.status_code == 201, r.text
            remembered = await client.call_tool(
                "remember",
                # this test steps the writer by hand: nothing commits while the call waits
                {"content": needles["mcp"], **secret, "metadata": {"via": "mcp"}, "wait": False},
            )
            assert not remembered.is_error, remembered.content
            w.events += [p.event_id for p in put]
            w.events += [r.json()["event_id"], remembered.structured_content["event_id"]]
            # an invalid event (an unknown label) is parked in the DLQ by the writer
            bad_id = new_event_id()
            bad = {"id": bad_id, "tenant": TENANT, "agent": "leaky", "content": needles["dlq"]}
            bad |= secret | {"label": "not-a-label"}
            await bus.redis.xadd(TenantKeys(TENANT).events, {"e": orjson.dumps(bad)})
            await settle(writer)
            await bus.agent("keeper", TENANT).publish("an ordinary note", scope="team/open")
            await settle(writer)
            assert await bus.redis.xlen(TenantKeys(TENANT).dlq) >= 1
            # the replayed entry: its raw fields, as an attacker with stream access would resend
            raw: Any = await bus.redis.xrange(TenantKeys(TENANT).events)
            w.replay = next(dict(f) for i, f in raw if needles["replay"] in str(f))
            # uncommitted: one never delivered, one pending on a consumer that never acks
            late = await leaky.publish(needles["late"], **secret)
            ghost = await leaky.publish(needles["ghost"], **secret)
            w.events += [bad_id, late.event_id, ghost.event_id]
            await bus.redis.xreadgroup(
                "writers", "ghost", {TenantKeys(TENANT).events: ">"}, count=1
            )
            working = await leaky.recall(needles["late"], k=20, working=True)
            assert any(needles["late"] in h.memory.content for h in working), "not in working"
            # the context door reads them too (its audit record and heat bumps included)
            ctx = await leaky.context(needles["late"], budget_tokens=5000, subjects=[subject])
            assert needles["late"] in ctx.render(), "not in the context"
            w.owned = {k: v for k, v in needles.items() if k not in ("subject", "key")}
            yield w, client, url


CRITERIA: dict[str, Callable[[World, list[str]], dict[str, Any]]] = {
    "subject": lambda w, ids: {"subject": w.needles["subject"]},
    "agent": lambda w, ids: {"agent": "leaky"},
    "scope": lambda w, ids: {"scope": SECRET},
    "memory_ids": lambda w, ids: {"memory_ids": ids},
}


async def canary_memories(w: World) -> list[str]:
    """Every memory holding a canary (the rival's version of the key included)."""
    found, offset = [], None
    while True:
        page, offset = await w.bus.store.scroll(TENANT, 256, offset)
        found += [m.id for m in page if any(n in m.model_dump_json() for n in w.needles.values())]
        if offset is None:
            return found


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
async def test_no_byte_of_an_erased_canary_is_left_anywhere(
    world: tuple[World, Client, str], criterion: str, logged: list[dict[str, Any]]
) -> None:
    """Forget by ``criterion``; a replay of an erased entry arrives after it and is dropped. Then
    no canary's bytes in DUMP of any key, any file of the data directory after the AOF rewrite,
    any store point, the Python / SSE / MCP feeds from 0; the keeper's memory is still there."""
    w, client, url = world
    bus = w.bus
    ids = await canary_memories(w) + [point_id(TENANT, e) for e in w.events]
    report = await forget(bus.redis, bus.store, TENANT, **CRITERIA[criterion](w, ids))
    assert report.keys >= 1 and report.aof_rewrite in ("started", "in_progress")
    assert report.stream_node_entries == 1  # the embedded redis-server's configuration
    # a copy of an erased entry comes back after the forget: dropped, deleted, never stored
    await bus.redis.xadd(TenantKeys(TENANT).events, w.replay)  # type: ignore[arg-type]
    await settle(w.writer)
    # the replayed entry was written to the AOF before the writer deleted it: the writer asks
    # for another rewrite (after the forget's own), so no later forget is needed
    await aof_rewritten(bus.redis)
    await settle(w.writer)
    await aof_rewritten(bus.redis)
    again = await forget(bus.redis, bus.store, TENANT, **CRITERIA[criterion](w, ids))
    assert again.memories == 0 and again.aof_rewrite == "skipped"  # idempotent, and nothing to do

    # the rival's memory keeps the subject and key when only leaky's are forgotten
    needles = list(w.owned.values() if criterion == "agent" else w.needles.values())
    leaks = absent("DUMP", await dump_every_key(w.root), needles)
    opened = []
    offset: str | None = None
    while True:
        page, offset = await bus.store.scroll(TENANT, 256, offset)
        opened += [m.model_dump_json() for m in page]
        if offset is None:
            break
    leaks += absent("store", "\n".join(opened), needles)
    leaks += absent("feed", await feed_from_zero(bus), needles)
    leaks += absent("sse", await sse_from_zero(url), needles)
    leaks += absent("mcp", await mcp_changes(client), needles)
    async with httpx.AsyncClient(base_url=url) as http:
        leaks += absent("metrics", (await http.get("/metrics")).text, needles)
    working = await bus.agent("leaky", TENANT).recall(w.needles["late"], k=20, working=True)
    leaks += absent("working", "\n".join(h.memory.model_dump_json() for h in working), needles)
    ctx = await bus.agent("leaky", TENANT).context(
        w.needles["late"], budget_tokens=5000, subjects=[w.needles["subject"]]
    )
    # the items and their render (the query field is the caller's own text, echoed back)
    leaks += absent("context", ctx.model_dump_json(exclude={"query"}), needles)
    # what was not erased still reads back, opened from its sealed payload
    kept = await bus.agent("keeper", TENANT).recall("an ordinary note", k=5)
    assert [h.memory.content for h in kept][:1] == ["an ordinary note"]
    # files last: the AOF history files go once the rewrite is done (Redis unlinks them in a
    # background thread, hence the short wait), the Edge WAL and segments hold only ciphertext
    for _ in range(50):
        if not (on_disk := files_holding(w.root, needles)):
            break
        await anyio.sleep(0.1)
    leaks += on_disk
    # the logs of the whole run, every level: no content, subject or key, ever
    text = "\n".join(repr(e) for e in logged)
    assert "erasure.done" in text  # the logs were captured, so it means something
    leaks += absent("logs", text, list(w.needles.values()))
    assert not leaks, "; ".join(leaks)
