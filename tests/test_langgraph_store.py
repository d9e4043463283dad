"""``MembusStore``: a LangGraph store whose namespaces are scopes, with read-your-writes puts,
newest-version gets and searches, deletes that forget every version, and the gate in force."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import membus
from membus.access.gate import Gate
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig
from membus.errors import InvalidInput, PermissionDenied
from membus.integrations.port import AgentPort

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import InvalidNamespaceError

from membus.integrations.langgraph import MembusStore, scope_of

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
