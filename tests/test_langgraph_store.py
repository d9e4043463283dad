"""``MembusStore``: a LangGraph store whose namespaces are scopes, with read-your-writes puts,
newest-version gets and searches, deletes that forget every version, and the gate in force; in
sync graphs and async ones, with large values, refused TTLs and errors that name the item."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import anyio
import orjson
import pytest

import membus
from membus.access.gate import Gate
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.bus.draft import Draft
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig
from membus.errors import InvalidInput, PermissionDenied
from membus.integrations.port import AgentPort

pytest.importorskip("langgraph.store.base")

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore, InvalidNamespaceError, PutOp
from langgraph.store.memory import InMemoryStore

from membus.integrations.langgraph import (
    ITEM_KIND,
    PART_KIND,
    VALUE_FIELD,
    MembusStore,
    scope_of,
)

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

SUPPORT = ("team", "support")


@asynccontextmanager
async def opened(
    tmp_path: Path, redis_url: str, *, gate: Gate | None = None, **kw: Any
) -> AsyncIterator[tuple[membus.Bus, MembusStore]]:
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), ranking=EVERY_HIT
    )
    async with membus.open(tmp_path / "bus", cfg, gate=gate) as bus:
        yield bus, MembusStore(AgentPort(bus.agent("alice", "acme")), **kw)


class DeadPort:
    """A port for checks that must refuse before any call reaches the bus."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store called port.{name}")


def dead_store() -> MembusStore:
    return MembusStore(DeadPort())


@pytest.mark.slow
async def test_put_is_read_your_writes(tmp_path: Path, redis_url: str) -> None:
    """get right after put returns the value: no drain, no sleep."""
    async with opened(tmp_path, redis_url) as (_, store):
        value = {"text": "customer prefers e-mail", "lang": "en", "n": [1, {"x": None}]}
        await store.aput(SUPPORT, "pref-42", value)
        item = await store.aget(SUPPORT, "pref-42")
        assert item is not None
        assert (item.namespace, item.key, item.value) == (SUPPORT, "pref-42", value)
        assert await store.aget(SUPPORT, "missing") is None
        assert await store.aget(("team",), "pref-42") is None  # exact namespace, not subtree


@pytest.mark.slow
async def test_overwrite_returns_the_newest_everywhere(tmp_path: Path, redis_url: str) -> None:
    """After two puts of one key, get and search show only the second value, and the item keeps
    its first creation time."""
    async with opened(tmp_path, redis_url) as (_, store):
        await store.aput(SUPPORT, "sla", {"text": "first response within 8 hours"})
        await store.aput(SUPPORT, "sla", {"text": "first response within 4 hours"})
        item = await store.aget(SUPPORT, "sla")
        assert item is not None and item.value == {"text": "first response within 4 hours"}
        assert item.created_at < item.updated_at
        found = await store.asearch(SUPPORT, query="first response within 8 hours")
        assert [(f.key, f.value["text"]) for f in found] == [
            ("sla", "first response within 4 hours")
        ]
        listed = await store.asearch(SUPPORT)
        assert [(f.key, f.value["text"]) for f in listed] == [
            ("sla", "first response within 4 hours")
        ]


@pytest.mark.slow
async def test_search_covers_the_subtree_with_filters(tmp_path: Path, redis_url: str) -> None:
    """search(prefix) sees the namespace and everything below it, never siblings; filter,
    limit and offset behave as in LangGraph's own stores; no query lists newest first."""
    async with opened(tmp_path, redis_url) as (_, store):
        await store.aput(SUPPORT, "a", {"text": "refund policy for damaged goods", "lang": "en"})
        await store.aput((*SUPPORT, "tier1"), "b", {"text": "refund escalation", "lang": "de"})
        await store.aput(("team", "sales"), "c", {"text": "refund discount", "lang": "en"})
        hits = await store.asearch(SUPPORT, query="refund policy", limit=10)
        assert {(h.namespace, h.key) for h in hits} == {(SUPPORT, "a"), ((*SUPPORT, "tier1"), "b")}
        assert hits[0].key == "a" and hits[0].score is not None
        assert hits[0].score >= hits[1].score  # type: ignore[operator]
        de = await store.asearch(SUPPORT, query="refund", filter={"lang": "de"})
        assert [h.key for h in de] == ["b"]
        assert [h.key for h in await store.asearch((), filter={"lang": {"$ne": "de"}})] == [
            "c",
            "a",
        ]
        assert [h.key for h in await store.asearch(("team",))] == ["c", "b", "a"]
        assert [h.key for h in await store.asearch(("team",), limit=1, offset=1)] == ["b"]


@pytest.mark.slow
async def test_delete_forgets_every_version(tmp_path: Path, redis_url: str) -> None:
    """delete erases all versions of the key (and only that key)."""
    async with opened(tmp_path, redis_url) as (bus, store):
        await store.aput(SUPPORT, "tmp", {"text": "v1"})
        await store.aput(SUPPORT, "tmp", {"text": "v2"})
        await store.aput(SUPPORT, "keep", {"text": "stays"})
        await store.adelete(SUPPORT, "tmp")
        assert await store.aget(SUPPORT, "tmp") is None
        assert [h.key for h in await store.asearch(SUPPORT, query="v2")] == ["keep"]
        assert await bus.store.count("acme") == 1


@pytest.mark.slow
async def test_list_namespaces_from_scopes(tmp_path: Path, redis_url: str) -> None:
    """Namespaces are the scopes holding memories, with prefix, suffix and max_depth."""
    async with opened(tmp_path, redis_url) as (_, store):
        for ns in [SUPPORT, (*SUPPORT, "tier1"), ("team", "sales"), ("org", "tier1")]:
            await store.aput(ns, "k", {"text": "x"})
        assert await store.alist_namespaces() == [
            ("org", "tier1"),
            ("team", "sales"),
            SUPPORT,
            (*SUPPORT, "tier1"),
        ]
        assert await store.alist_namespaces(prefix=("team",), max_depth=2) == [
            ("team", "sales"),
            SUPPORT,
        ]
        assert await store.alist_namespaces(suffix=("tier1",)) == [
            ("org", "tier1"),
            (*SUPPORT, "tier1"),
        ]
        assert await store.alist_namespaces(prefix=("*", "support")) == [
            SUPPORT,
            (*SUPPORT, "tier1"),
        ]
        assert await store.alist_namespaces(limit=1, offset=1) == [("team", "sales")]


async def test_namespaces_are_encoded_into_scopes(tmp_path: Path, redis_url: str) -> None:
    """Labels are ids: plain ones stay, others (mixed case, e-mail, '/', '..') are encoded into
    one segment each and shown back as given. Refused: empty labels, non-strings, more than 8
    labels; the error is both membus InvalidInput and LangGraph's InvalidNamespaceError."""
    assert scope_of(("team", "support-2", "t_1")) == "team/support-2/t_1"
    assert scope_of(("users", "Alice@x.org")) == "users/x--_41_lice_40_x_2e_org"
    assert scope_of(("a/b",)) == "x--a_2f_b" and scope_of(("a", "..x")) == "a/x--_2e__2e_x"
    for bad in [("",), ("a", ""), (1,), ("x",) * 9]:
        with pytest.raises(InvalidInput) as err:
            scope_of(bad)  # type: ignore[arg-type]
        assert isinstance(err.value, InvalidNamespaceError)
    async with opened(tmp_path, redis_url) as (_, store):
        user = ("users", "User-123", "alice@example")  # LangGraph itself refuses "."
        await store.aput(user, "k", {"text": "mixed case and e-mail labels"})
        got = await store.aget(user, "k")
        assert got is not None and got.namespace == user
        assert await store.alist_namespaces(prefix=("users",)) == [user]
        assert await store.aget(("users", "user-123", "alice@example"), "k") is None
        with pytest.raises(InvalidNamespaceError):
            await store.asearch(("x",) * 9)


@pytest.mark.slow
async def test_concurrent_and_sync_calls(tmp_path: Path, redis_url: str) -> None:
    """Concurrent puts are batched into one publish and all land; the sync API works from a
    worker thread (LangGraph runs sync nodes in threads)."""
    async with opened(tmp_path, redis_url) as (_, store):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(store.aput, SUPPORT, f"k{i}", {"i": i})
        got = [await store.aget(SUPPORT, f"k{i}") for i in range(8)]
        assert [g.value["i"] if g else None for g in got] == list(range(8))

        def sync_roundtrip() -> Any:
            store.put(SUPPORT, "sync", {"from": "thread"})
            item = store.get(SUPPORT, "sync")
            return item.value if item else None

        assert await anyio.to_thread.run_sync(sync_roundtrip) == {"from": "thread"}


@pytest.mark.slow
async def test_the_gate_applies(tmp_path: Path, redis_url: str) -> None:
    """A namespace the agent may not write raises PermissionDenied; reads see only what the
    policy allows."""
    gate = CasbinGate(MemorySource("p, alice, acme, team/support/*, publish|recall, allow\n"))
    async with opened(tmp_path, redis_url, gate=gate) as (bus, store):
        with pytest.raises(PermissionDenied):
            await store.aput(("org",), "k", {"text": "x"})
        await store.aput(SUPPORT, "k", {"text": "x"})
        await bus.agent("bob", "acme").publish("bob's own", "agent/bob")
        await bus.drain(10)
        assert await store.alist_namespaces() == [SUPPORT]
        with pytest.raises(PermissionDenied):
            await store.adelete(SUPPORT, "k")  # no forget permission


@pytest.mark.slow
async def test_without_a_policy_namespaces_of_other_agents_are_private(
    tmp_path: Path, redis_url: str
) -> None:
    """Attack, no policy configured (the default): bob's graph reads, searches, lists and
    overwrites alice's namespace ``("agent", "alice", "notes")``. Reads find nothing, a direct
    read or a write is refused; alice's own graph keeps full use of it (per-user isolation out
    of the box, as a Mem0 user expects)."""
    notes = ("agent", "alice", "notes")
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), ranking=EVERY_HIT)
    async with membus.open(tmp_path / "bus", cfg) as bus:
        alice = MembusStore(AgentPort(bus.agent("alice", "acme")))
        bob = MembusStore(AgentPort(bus.agent("bob", "acme")))
        await alice.aput(notes, "pref", {"text": "customer c-7 prefers e-mail"})
        item = await alice.aget(notes, "pref")
        assert item is not None and item.value == {"text": "customer c-7 prefers e-mail"}
        await bus.drain(10)
        assert await bob.asearch((), query="customer prefers e-mail") == []
        assert notes not in await bob.alist_namespaces()
        for attempt in (
            bob.aget(notes, "pref"),
            bob.asearch(notes, query="customer prefers e-mail"),
            bob.asearch(("agent", "alice")),
            bob.aput(notes, "pref", {"text": "overwritten by bob"}),
            bob.adelete(notes, "pref"),
        ):
            with pytest.raises(PermissionDenied):
                await attempt
        assert [i.key for i in await alice.asearch(notes)] == ["pref"]
        assert await alice.alist_namespaces() == [notes]


@pytest.mark.slow
async def test_the_example_runs(tmp_path: Path) -> None:
    """agents/langgraph_example.py: a compiled graph reads and overwrites through the store, and
    a second agent's graph sees the newest value at once."""
    from agents.langgraph_example import run_example

    out = await run_example(tmp_path / "example")
    assert out["replies"][0].startswith("Noted: I prefer e-mail.")
    assert out["replies"][2].startswith("Noted: Actually I prefer a phone call.")
    assert out["namespaces"] == [("team", "support", "customers")]


# -- sync and async graphs ----------------------------------------------------------------------

NOTES = ("agent", "alice", "notes")


class Turn(TypedDict, total=False):
    customer: str
    message: str
    reply: str


def _store_of(runtime: Runtime[None]) -> BaseStore:
    assert runtime.store is not None
    return runtime.store


def learn(state: Turn, runtime: Runtime[None]) -> Turn:
    _store_of(runtime).put(NOTES, state["customer"], {"text": state["message"]})
    return {}


def answer(state: Turn, runtime: Runtime[None]) -> Turn:
    store = _store_of(runtime)
    item = store.get(NOTES, state["customer"])
    found = store.search(NOTES, query=state["message"])
    listed = store.search(NOTES)
    assert item is not None and [h.key for h in found] == [h.key for h in listed]
    return {"reply": f"{item.value['text']} ({len(listed)} known)"}


async def alearn(state: Turn, runtime: Runtime[None]) -> Turn:
    await _store_of(runtime).aput(NOTES, state["customer"], {"text": state["message"]})
    return {}


async def aanswer(state: Turn, runtime: Runtime[None]) -> Turn:
    item = await _store_of(runtime).aget(NOTES, state["customer"])
    assert item is not None
    return {"reply": f"{item.value['text']} ({len(await _store_of(runtime).asearch(NOTES))} known)"}


def graph_of(store: BaseStore, *nodes: Any) -> Any:
    graph = StateGraph(Turn)
    graph.add_node("learn", nodes[0])
    graph.add_node("answer", nodes[1])
    graph.add_edge(START, "learn")
    graph.add_edge("learn", "answer")
    graph.add_edge("answer", END)
    return graph.compile(store=store)


def config_for(redis_url: str) -> MembusConfig:
    return MembusConfig(redis=RedisConfig(url=redis_url))


@pytest.mark.slow
def test_open_serves_sync_and_async_graphs(tmp_path: Path, redis_url: str) -> None:
    """``MembusStore.open(path, agent=...)`` from plain sync code: a sync graph run with
    ``graph.invoke`` puts, gets and searches through it; an async graph on another event loop
    (``asyncio.run``) uses the same store; a reopen finds what was written."""
    path = tmp_path / "bus"
    with MembusStore.open(path, agent="alice", tenant="acme", config=config_for(redis_url)) as s:
        out = graph_of(s, learn, answer).invoke({"customer": "c-1", "message": "prefers e-mail"})
        assert out["reply"] == "prefers e-mail (1 known)"
        agraph = graph_of(s, alearn, aanswer)
        out = asyncio.run(agraph.ainvoke({"customer": "c-2", "message": "prefers phone"}))
        assert out["reply"] == "prefers phone (2 known)"
        assert s.list_namespaces() == [NOTES]
        s.delete(NOTES, "c-1")
        assert s.get(NOTES, "c-1") is None
    with MembusStore.open(path, agent="alice", tenant="acme", config=config_for(redis_url)) as s:
        item = s.get(NOTES, "c-2")
        assert item is not None and item.value == {"text": "prefers phone"}


SCRIPT = """
import sys
from membus.core.config import MembusConfig, RedisConfig
from membus.integrations.langgraph import MembusStore

store = MembusStore.open(sys.argv[1], agent="alice", config=MembusConfig(
    redis=RedisConfig(url=sys.argv[2])))
store.put(("agent", "alice"), "k", {"text": "kept"})
print(store.get(("agent", "alice"), "k").value["text"])
"""


@pytest.mark.slow
def test_a_store_never_closed_lets_the_program_exit(tmp_path: Path, redis_url: str) -> None:
    """The README's three lines, with no close: the program still exits, promptly and
    cleanly (the store's loop thread does not hold it up), and the write is there."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "bus"), redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stdout.strip()) == (0, "kept"), run.stderr
    with MembusStore.open(tmp_path / "bus", agent="alice", config=config_for(redis_url)) as s:
        item = s.get(("agent", "alice"), "k")
        assert item is not None and item.value == {"text": "kept"}


def test_open_needs_an_identity(tmp_path: Path) -> None:
    """A directory needs the agent the graph acts as; a URL needs its API key."""
    with pytest.raises(InvalidInput, match="agent="):
        MembusStore.open(tmp_path / "bus")
    with pytest.raises(InvalidInput, match="api_key="):
        MembusStore.open("http://127.0.0.1:9")


async def test_sync_calls_on_the_stores_own_loop_are_refused() -> None:
    """As with LangGraph's own async stores: a sync call from the loop it would block says
    which async method to use instead of deadlocking."""
    with pytest.raises(asyncio.InvalidStateError, match="aget"):
        dead_store().get(SUPPORT, "k")


# -- TTL ----------------------------------------------------------------------------------------


async def test_a_ttl_is_refused_like_langgraphs_own_stores() -> None:
    """membus cannot honour a per-item TTL (nor refresh one on read), so, like InMemoryStore,
    the store says so (``supports_ttl`` False, ``NotImplementedError``) on every path, before
    anything is written."""
    reference = InMemoryStore()
    with pytest.raises(NotImplementedError) as theirs:
        reference.put(SUPPORT, "k", {"text": "x"}, ttl=5)
    store = dead_store()
    assert store.supports_ttl is False
    with pytest.raises(NotImplementedError) as ours:
        await store.aput(SUPPORT, "k", {"text": "x"}, ttl=5)
    assert str(ours.value) == str(theirs.value).replace("InMemoryStore", "MembusStore")
    with pytest.raises(NotImplementedError):
        await store.abatch([PutOp(SUPPORT, "k", {"text": "x"}, ttl=1.0)])

    def sync_put() -> None:
        store.put(SUPPORT, "k", {"text": "x"}, ttl=0.5)

    with pytest.raises(NotImplementedError):
        await anyio.to_thread.run_sync(sync_put)


# -- values, keys and errors ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_one_megabyte_value_round_trips(tmp_path: Path, redis_url: str) -> None:
    """A 1 MB value (hard to compress) is put and read back whole, by get and by search; an
        overwrite with a small value and a delete leave no part of it current. A value past what
    an item holds is refused by name."""
    big = {"text": "large note", "blob": secrets.token_urlsafe(768 * 1024)}
    assert len(big["blob"]) >= 1_000_000
    async with opened(tmp_path, redis_url) as (bus, store):
        await store.aput(SUPPORT, "big", big)
        item = await store.aget(SUPPORT, "big")
        assert item is not None and item.value == big
        [listed] = await store.asearch(SUPPORT)
        assert listed.key == "big" and listed.value == big
        [found] = await store.asearch(SUPPORT, query="large note")
        assert found.value == big
        await store.aput(SUPPORT, "big", {"text": "small now"})
        item = await store.aget(SUPPORT, "big")
        assert item is not None and item.value == {"text": "small now"}
        await store.adelete(SUPPORT, "big")
        assert await store.aget(SUPPORT, "big") is None
        who = bus.agent("alice", "acme")
        assert (await who.list(kinds=[ITEM_KIND, PART_KIND])).memories == []
        huge = {"blob": secrets.token_urlsafe(2 * 1024 * 1024)}
        with pytest.raises(InvalidInput, match=r"'huge': the value is .* kB"):
            await store.aput(SUPPORT, "huge", huge)


async def test_bad_items_are_refused_by_name() -> None:
    """A key membus cannot hold, a value JSON cannot carry: each error names
    the namespace and key, in LangGraph's terms, before anything is written."""
    store = dead_store()
    with pytest.raises(InvalidInput, match=r"\('team', 'support'\) / 'kkkk.*longer than 128"):
        await store.aput(SUPPORT, "k" * 129, {"text": "x"})
    with pytest.raises(InvalidInput, match=r"'ctl\\x00': the key contains control"):
        await store.aput(SUPPORT, "ctl\x00", {"text": "x"})
    with pytest.raises(InvalidInput, match=r"'bad'.*not JSON"):
        await store.aput(SUPPORT, "bad", {"n": {1: "non-string key"}})


@pytest.mark.slow
async def test_refusals_name_the_item(tmp_path: Path, redis_url: str) -> None:
    """A write or read the gate refuses names the item or namespace, and stays a
    PermissionDenied."""
    gate = CasbinGate(MemorySource("p, alice, acme, team/support/*, publish|recall, allow\n"))
    async with opened(tmp_path, redis_url, gate=gate) as (_, store):
        with pytest.raises(PermissionDenied, match=r"item \('org', 'x'\) / 'k': agent 'alice'"):
            await store.aput(("org", "x"), "k", {"text": "x"})
        with pytest.raises(PermissionDenied, match=r"item \('org',\) / 'k'"):
            await store.aget(("org",), "k")
        with pytest.raises(PermissionDenied, match=r"search of namespace \('org',\)"):
            await store.asearch(("org",))


# -- past recall's cap ----------------------------------------------------------------------------


class CountingPort(AgentPort):
    """An AgentPort that counts recalls: get and a search without a query must not need one."""

    recalls = 0

    async def recall(self, query: str, **kw: Any) -> Any:
        self.recalls += 1
        return await super().recall(query, **kw)


async def publish_items(bus: membus.Bus, ns: Sequence[str], n: int) -> None:
    """``n`` items straight through the bus (faster than n puts), then committed."""
    drafts = [
        Draft(
            content=f"note {i}",
            scope="/".join(ns),
            kind=ITEM_KIND,
            subject=f"k{i}",
            key=f"k{i}",
            metadata={VALUE_FIELD: f'{{"i": {i}}}'},
        )
        for i in range(n)
    ]
    await bus.agent("alice", "acme").publish_many(drafts)
    await bus.drain(60)


@pytest.mark.slow
async def test_search_without_a_query_pages_past_a_thousand(tmp_path: Path, redis_url: str) -> None:
    """1,100 items: a search without a query returns every one (newest first, offset and
    filter honoured) by paging through list, and get finds any key, with no recall at all."""
    cfg = MembusConfig(policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url))
    async with membus.open(tmp_path / "bus", cfg) as bus:
        await publish_items(bus, SUPPORT, 1100)
        port = CountingPort(bus.agent("alice", "acme"))
        store = MembusStore(port)
        everything = await store.asearch(SUPPORT, limit=2000)
        assert sorted(it.value["i"] for it in everything) == list(range(1100))
        assert [it.updated_at for it in everything] == sorted(
            (it.updated_at for it in everything), reverse=True
        )
        tail = await store.asearch(SUPPORT, limit=10, offset=1095)
        assert [it.key for it in tail] == [it.key for it in everything[1095:]]
        assert [it.value for it in await store.asearch((), filter={"i": 3})] == [{"i": 3}]
        item = await store.aget(SUPPORT, "k0")
        assert item is not None and item.value == {"i": 0}
        assert port.recalls == 0


@pytest.mark.slow
async def test_over_the_service(tmp_path: Path, redis_url: str) -> None:
    """The same store over HTTP (ClientPort, an API key as identity): a 1 MB value goes in
    requests under the service's body limit and comes back whole; get, list and delete work;
    a refusal names the item."""
    import httpx

    from membus.integrations.port import ClientPort
    from membus.service.app import create_app
    from membus.service.auth import ApiKeys
    from membus.service.client import Client

    key = "lg-key-0123456789abcdef"
    gate = CasbinGate(MemorySource("p, carol, acme, team/support/*, publish|recall|forget\n"))
    cfg = MembusConfig(redis=RedisConfig(url=redis_url))
    async with membus.open(tmp_path / "bus", cfg, gate=gate) as bus:
        app = create_app(bus, ApiKeys.from_keys({key: ("acme", "carol")}))
        async with Client("http://membus", key, transport=httpx.ASGITransport(app=app)) as http:
            store = MembusStore(ClientPort(http))
            big = {"text": "large note", "blob": secrets.token_urlsafe(768 * 1024)}
            await store.aput(SUPPORT, "big", big)
            await store.aput(SUPPORT, "small", {"text": "small note"})
            item = await store.aget(SUPPORT, "big")
            assert item is not None and item.value == big
            assert [(it.key, it.value) for it in await store.asearch(SUPPORT)] == [
                ("small", {"text": "small note"}),
                ("big", big),
            ]
            await store.adelete(SUPPORT, "big")
            await bus.drain(10)  # a delete over HTTP does not wait for its commit yet (fix apart)
            assert await store.aget(SUPPORT, "big") is None
            with pytest.raises(PermissionDenied, match=r"item \('org',\) / 'k': agent 'carol'"):
                await store.aput(("org",), "k", {"text": "x"})


@pytest.mark.slow
async def test_a_read_during_a_large_put_sees_one_whole_value(
    tmp_path: Path, redis_url: str
) -> None:
    """A large put writes its parts, then the item: a read between the two (or after a put
    that failed between them) still gets the earlier value whole, from the parts' history."""
    first = {"blob": secrets.token_urlsafe(24 * 1024)}
    second = {"blob": secrets.token_urlsafe(24 * 1024)}
    async with opened(tmp_path, redis_url) as (bus, store):
        await store.aput(SUPPORT, "big", first)
        # the first half of a put of `second`: its parts replace the current ones
        await store._publish_parts(
            "team/support", PutOp(SUPPORT, "big", second), orjson.dumps(second).decode()
        )
        await bus.drain(10)
        item = await store.aget(SUPPORT, "big")
        assert item is not None and item.value == first
        await store.aput(SUPPORT, "big", second)
        item = await store.aget(SUPPORT, "big")
        assert item is not None and item.value == second
