"""``membus mcp``: the MCP tools act as the connection's identity only, through the gate, with
provenance in their structured results, and committed changes are announced to subscribers."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import membus
from membus.access.gate import Gate
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig
from membus.integrations.port import AgentPort

mcp = pytest.importorskip("mcp")

from mcp import Client  # noqa: E402
from mcp_types import CallToolResult  # noqa: E402

from membus.integrations.mcp import CHANGES_URI, build_server  # noqa: E402

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

TENANT = "acme"


@asynccontextmanager
async def connected(
    tmp_path: Path, redis_url: str, *, gate: Gate | None = None, mode: str = "auto", **kw: Any
) -> AsyncIterator[tuple[membus.Bus, Client]]:
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), ranking=EVERY_HIT
    )
    async with membus.open(tmp_path / "bus", cfg, gate=gate) as bus:
        server = build_server(AgentPort(bus.agent("alice", TENANT)))
        async with Client(server, mode=mode, cache=None, **kw) as client:
            yield bus, client


async def call(client: Client, tool: str, **args: Any) -> CallToolResult:
    result = await client.call_tool(tool, args)
    assert isinstance(result, CallToolResult)
    return result


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    body = result.structured_content
    assert isinstance(body, dict)
    return body


async def test_tools_declare_no_identity_arguments(tmp_path: Path, redis_url: str) -> None:
    """No tool lets the caller name an agent or tenant, and none accepts undeclared arguments.
    forget's ``agent`` is a filter (what that agent contributed), never who acts."""
    from importlib.metadata import version

    async with connected(tmp_path, redis_url) as (_, client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {
            "remember",
            "recall",
            "forget",
            "list_scopes",
            "list_memories",
            "get_memory",
            "memory_history",
            "get_context",
        }
        for tool in tools.values():
            props = tool.input_schema.get("properties", {})
            assert "tenant" not in props, tool.name
            assert "agent" not in props or tool.name == "forget", tool.name
            assert tool.input_schema.get("additionalProperties") is False, tool.name
        assert "filter" in tools["forget"].input_schema["properties"]["agent"]["description"]
        # and the server says which membus it is (it used to report an empty version)
        info = client.server_info
        assert info is not None and info.version == version("membus") != ""


@pytest.mark.slow
async def test_remember_then_recall_returns_provenance(tmp_path: Path, redis_url: str) -> None:
    """remember publishes as the bound agent and waits by default: recall right after finds
    it with its source; without a scope it goes to the agent's private scope."""
    async with connected(tmp_path, redis_url) as (_, client):
        receipt = ok(
            await call(
                client,
                "remember",
                content="Refunds over 500 EUR need a lead's approval.",
                scope="team/support",
                kind="fact",
                subject="refunds",
            )
        )
        assert receipt["tenant"] == TENANT and receipt["scope"] == "team/support"
        assert receipt["searchable"] is True
        found = ok(await call(client, "recall", query="refund approval", scopes=["team/support"]))
        [mem] = found["memories"]
        assert mem["content"].startswith("Refunds over 500 EUR")
        assert (mem["kind"], mem["subject"]) == ("fact", "refunds")
        assert mem["provenance"]["agents"] == ["alice"]
        assert mem["provenance"]["source_events"] == [receipt["event_id"]]
        # the text content carries the same JSON for hosts that ignore structured content (one
        # call: scores carry recency, so two calls a moment apart differ in the last digits)
        res = await call(client, "recall", query="refund")
        assert orjson.loads(found_text(res)) == ok(res)
        assert ok(await call(client, "list_scopes")) == {"scopes": ["team/support"]}
        mine = ok(await call(client, "remember", content="my own note", wait=False))
        assert mine["scope"] == "agent/alice" and mine["searchable"] is False


def found_text(result: CallToolResult) -> str:
    block = result.content[0]
    assert block.type == "text"
    return block.text


async def test_forged_agent_or_tenant_is_refused(tmp_path: Path, redis_url: str) -> None:
    """Arguments naming an agent or tenant are refused outright and nothing is published;
    so is any undeclared argument."""
    async with connected(tmp_path, redis_url) as (bus, client):
        for forged in ({"agent": "bob"}, {"tenant": "globex"}, {"agent_id": "bob"}):
            res = await call(client, "remember", content="I am bob", scope="team/x", **forged)
            assert res.is_error
            assert "alice@acme" in found_text(res) and "refused" in found_text(res)
        res = await call(client, "recall", query="x", tenant="globex")
        assert res.is_error
        res = await call(client, "remember", content="x", scope="team/x", bogus=1)
        assert res.is_error and "InvalidInput" in found_text(res)
        stats = await bus.stats()
        assert stats["tenants"].get(TENANT, {}).get("events", 0) == 0
        assert "globex" not in stats["tenants"]


@pytest.mark.slow
async def test_forget_erases_a_memory(tmp_path: Path, redis_url: str) -> None:
    """forget by memory id removes it; recall no longer finds it; no criterion is an error."""
    async with connected(tmp_path, redis_url) as (_, client):
        ok(
            await call(
                client, "remember", content="temp door code 4711", scope="team/ops", wait=True
            )
        )
        [mem] = ok(await call(client, "recall", query="door code"))["memories"]
        gone = ok(await call(client, "forget", memory_ids=[mem["id"]]))
        assert gone == {"forgotten": 1, "memory_ids": [mem["id"]]}
        assert ok(await call(client, "recall", query="door code"))["memories"] == []
        assert (await call(client, "forget")).is_error


async def test_the_gate_applies_to_tools(tmp_path: Path, redis_url: str) -> None:
    """Where the policy does not let the bound agent write or read, the tool returns an error
    result naming the denial, not a protocol failure."""
    gate = CasbinGate(MemorySource("p, alice, acme, team/support/*, publish|recall, allow\n"))
    async with connected(tmp_path, redis_url, gate=gate) as (_, client):
        denied = await call(client, "remember", content="reorg plan", scope="org/plans")
        assert denied.is_error
        assert denied.structured_content is not None
        assert denied.structured_content["error"] == "PermissionDenied"
        assert "org/plans" in found_text(denied)
        assert (await call(client, "recall", query="plan", scopes=["org"])).is_error
        ok(await call(client, "remember", content="queue is long", scope="team/support"))
        assert (await call(client, "forget", scope="team/support")).is_error


@pytest.mark.slow
async def test_changes_are_announced_to_listeners(tmp_path: Path, redis_url: str) -> None:
    """A 2026-07-28 client listening on membus://changes hears of a committed memory and reads
    it from the resource."""
    async with connected(tmp_path, redis_url) as (bus, client):
        async with client.listen(resource_subscriptions=[CHANGES_URI]) as sub:
            ok(await call(client, "remember", content="deploy at noon", scope="team/ops"))
            await bus.drain(10)
            with anyio.fail_after(10):
                async for event in sub:
                    assert getattr(event, "uri", None) == CHANGES_URI
                    break
        body = await client.read_resource(CHANGES_URI)
        text = body.contents[0].text  # type: ignore[union-attr]
        changes = orjson.loads(text)["changes"]
        assert [c["content"] for c in changes] == ["deploy at noon"]


async def resource_text(client: Client) -> str:
    body = await client.read_resource(CHANGES_URI)
    return str(body.contents[0].text)  # type: ignore[union-attr]


async def announced(bus: membus.Bus, sub: Any) -> None:
    await bus.drain(10)
    with anyio.fail_after(10):
        async for event in sub:
            assert getattr(event, "uri", None) == CHANGES_URI
            return


@pytest.mark.slow
async def test_the_changes_resource_serves_nothing_erased_or_no_longer_readable(
    tmp_path: Path, redis_url: str
) -> None:
    """Issue 15.2: membus://changes keeps no copy of the changes it announced. After a forget
    its read no longer carries the erased text (only a content-free delete notice), and after
    the reader's subscribe right is revoked it serves nothing of what it announced before."""
    canary = "zq-mcp-canary-91c"
    may_read = "p, alice, acme, team/*, publish|recall|subscribe|forget, allow"
    gate = CasbinGate(MemorySource(may_read + "\n"))
    async with connected(tmp_path, redis_url, gate=gate) as (bus, client):
        async with client.listen(resource_subscriptions=[CHANGES_URI]) as sub:
            ok(await call(client, "remember", content=f"door code {canary}", scope="team/ops"))
            await announced(bus, sub)
            assert canary in await resource_text(client)  # served while it exists
            [mem] = ok(await call(client, "recall", query="door code"))["memories"]
            ok(await call(client, "forget", memory_ids=[mem["id"]]))
            after = orjson.loads(await resource_text(client))["changes"]
            assert canary not in orjson.dumps(after).decode()
            assert [(c["op"], c["memory_id"], c["content"]) for c in after] == [
                ("delete", mem["id"], None)
            ]
            ok(await call(client, "remember", content="rota changed", scope="team/ops"))
            await announced(bus, sub)
            assert "rota changed" in await resource_text(client)
        await gate.remove_policy(may_read)
        await gate.add_policy("p, alice, acme, team/*, publish|recall, allow")
        revoked = orjson.loads(await resource_text(client))
        assert revoked["changes"] == []  # it still reads agent/alice, where nothing happened
        assert "rota changed" not in orjson.dumps(revoked).decode()


@pytest.mark.slow
async def test_legacy_resource_subscribers_are_notified(tmp_path: Path, redis_url: str) -> None:
    """A pre-2026 client using resources/subscribe gets notifications/resources/updated."""
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updated.set()

    legacy = connected(tmp_path, redis_url, mode="legacy", message_handler=on_message)
    async with legacy as (bus, client):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is deprecated in 2026-07-28
            await client.subscribe_resource(CHANGES_URI)
        ok(await call(client, "remember", content="pager rotation changed", scope="team/ops"))
        await bus.drain(10)
        with anyio.fail_after(10):
            await updated.wait()


@pytest.mark.slow
async def test_over_the_service_client(tmp_path: Path, redis_url: str) -> None:
    """The same server over ClientPort (an API key against the HTTP service): the key is the
    identity, remember(wait) is read-your-write, and forging is refused the same way."""
    import httpx

    from membus.integrations.port import ClientPort
    from membus.service.app import create_app
    from membus.service.auth import ApiKeys
    from membus.service.client import Client as HttpClient

    key = "mcp-key-0123456789abcdef"
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), ranking=EVERY_HIT
    )
    async with membus.open(tmp_path / "bus", cfg) as bus:
        app = create_app(bus, ApiKeys.from_keys({key: ("acme", "carol")}))
        transport = httpx.ASGITransport(app=app)
        http = HttpClient("http://membus", key, transport=transport)
        async with http, Client(build_server(ClientPort(http)), cache=None) as client:
            ok(
                await call(
                    client, "remember", content="cutover friday", scope="team/ops", wait=True
                )
            )
            [mem] = ok(await call(client, "recall", query="cutover"))["memories"]
            assert mem["provenance"]["agents"] == ["carol"]
            forged = await call(client, "recall", query="x", agent="alice")
            assert forged.is_error and "carol@acme" in found_text(forged)
            # scopes over HTTP (GET /v1/scopes), as in process
            assert ok(await call(client, "list_scopes")) == {"scopes": ["team/ops"]}


async def test_api_key_binds_the_identity(tmp_path: Path, redis_url: str) -> None:
    """`membus mcp` with MEMBUS_API_KEY on an embedded bus: the service's key file maps the key
    to its agent; an unknown key fails at start."""
    from membus.integrations.mcp import open_port
    from membus.service.auth import hash_key
    from membus.service.wire import Unauthenticated

    key = "mbk_" + "k" * 32
    keys = tmp_path / "keys.json"
    keys.write_bytes(
        orjson.dumps({"keys": [{"sha256": hash_key(key), "agent": "dana", "tenant": "acme"}]})
    )
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), ranking=EVERY_HIT
    )
    async with open_port(cfg, key, path=tmp_path / "bus", api_keys_file=keys) as port:
        who = await port.whoami()
        assert (who.agent, who.tenant) == ("dana", "acme")
    with pytest.raises(Unauthenticated):
        async with open_port(cfg, "mbk_wrong", path=tmp_path / "bus", api_keys_file=keys):
            pass


@pytest.mark.slow
async def test_the_example_runs(tmp_path: Path) -> None:
    """agents/mcp_example.py works offline: remember, notification, recall, refusal, scopes."""
    from agents.mcp_example import run_example

    out = await run_example(tmp_path / "example")
    assert out["tools"] == [
        "forget",
        "get_context",
        "get_memory",
        "list_memories",
        "list_scopes",
        "memory_history",
        "recall",
        "remember",
    ]
    assert out["notified"] == CHANGES_URI
    assert out["recall"][0]["provenance"]["agents"] == ["alice"]
    assert out["forged_refused"] is True
    assert out["scopes"] == {"scopes": ["team/ops"]}


@pytest.mark.slow
async def test_list_get_and_history_tools(tmp_path: Path, redis_url: str) -> None:
    """Browse without a query, read one memory by id and a fact's versions; labels, filters
    and a forget by ids and contributor, all as the bound agent."""
    policy = (
        "p, alice, acme, team/*, publish|recall|forget, allow\n"
        "p, bob, acme, team/*, publish, allow\n"
        "p, carol, acme, team/*, recall, allow\n"
        "g2, alice, internal, acme\n"
    )
    async with connected(tmp_path, redis_url, gate=CasbinGate(MemorySource(policy))) as (
        bus,
        client,
    ):
        for plan in ("basic", "pro"):
            ok(
                await call(
                    client,
                    "remember",
                    content=f"acme is on the {plan} plan",
                    scope="team/crm",
                    subject="acme",
                    key="plan",
                    label="internal",
                )
            )
            await bus.drain(10)
        ok(await call(client, "remember", content="call acme on monday", scope="team/crm"))
        await bus.drain(10)
        # bob's, in a scope alice reads: recall's agents filter leaves it out
        await bus.agent("bob", TENANT).publish("bob was here", "team/crm")
        await bus.drain(10)

        page = ok(await call(client, "list_memories", limit=2))
        assert len(page["memories"]) == 2 and page["cursor"]
        rest = ok(await call(client, "list_memories", cursor=page["cursor"]))
        everything = page["memories"] + rest["memories"]
        assert {m["content"] for m in everything} == {
            "acme is on the pro plan",
            "call acme on monday",
            "bob was here",
        }
        mine = ok(await call(client, "list_memories", agents=["alice"], kinds=["observation"]))
        assert {m["content"] for m in mine["memories"]} == {
            "acme is on the pro plan",
            "call acme on monday",
        }
        [pro] = [m for m in everything if m["key"] == "plan"]
        got = ok(await call(client, "get_memory", memory_id=pro["id"]))
        assert got["content"] == "acme is on the pro plan" and got["valid_to"] is None
        assert got["provenance"]["agents"] == ["alice"]
        missing = await call(client, "get_memory", memory_id="00000000-0000-5000-8000-000000000000")
        assert missing.is_error and "NotFound" in found_text(missing)
        versions = ok(await call(client, "memory_history", subject="acme", key="plan"))
        assert [v["content"] for v in versions["versions"]] == [
            "acme is on the pro plan",
            "acme is on the basic plan",
        ]
        assert versions["versions"][1]["valid_to"] is not None
        by_id = ok(await call(client, "memory_history", memory_id=pro["id"]))
        assert len(by_id["versions"]) == 2
        # the label took: carol, not cleared for internal, does not see the plan
        carols = await bus.agent("carol", TENANT).list()
        assert "plan" not in {m.key for m in carols.memories} and carols.memories

        found = ok(await call(client, "recall", query="acme", agents=["bob"]))
        assert [m["content"] for m in found["memories"]] == ["bob was here"]
        past = ok(
            await call(
                client, "recall", query="acme plan", as_of=versions["versions"][1]["valid_from"]
            )
        )
        assert "acme is on the basic plan" in [m["content"] for m in past["memories"]]
        later = ok(await call(client, "recall", query="acme", since="2999-01-01T00:00:00Z"))
        assert later["memories"] == []

        # forget by ids AND contributor: bob's memory is not alice's contribution, so nothing
        gone = ok(await call(client, "forget", memory_ids=[pro["id"]], agent="bob"))
        assert gone["forgotten"] == 0
        bobs = next(m for m in everything if m["content"] == "bob was here")
        gone = ok(await call(client, "forget", memory_ids=[bobs["id"]], agent="bob"))
        assert gone == {"forgotten": 1, "memory_ids": [bobs["id"]]}
