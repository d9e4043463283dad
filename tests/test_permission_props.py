"""Property, end to end through the real bus: every door on every surface delivers exactly what
the policy permits — nothing more (no leak, not even from another tenant with the same agent
and scope names) and nothing less (everything permitted is reachable).

Each example builds a small random policy (roles with inheritance, allows, denies, ``{self}``
patterns, clearances) for a fresh tenant on one shared bus (real redis-server, Qdrant Edge,
writer task, Redis-backed casbin gate) and checks it against a plain-Python reference model that
shares no code with the gate, on every surface: the in-process ``Agent``, HTTP through
``membus.Client`` (an API key per agent) and its SSE feed, the MCP tools over the in-process and
the service port, and the LangGraph store over both ports. The doors:

- publish: each memory goes in through one surface in turn; a publish the policy forbids must
  raise ``PermissionDenied`` on every surface and leave the stream untouched;
- recall (plain and narrowed to a scope), working recall (before and after the writers), MCP
  recall, LangGraph search and get, and the context for the prompt (in process, HTTP, MCP
  ``get_context`` over either port, with a budget that holds everything): exactly the readable
  memories, by content;
- subscribe: the in-process feed (alone and in same-named groups), the SSE feed from 0, and the
  MCP changes resource (which may lag, never leak);
- list of scopes: ``Agent.scopes``, ``GET /v1/scopes``, the MCP tool and LangGraph
  ``alist_namespaces`` over both ports;
- the memory operations: ``list`` in process and over HTTP, ``export`` and ``get`` by every
  stored id over HTTP (``NotFound`` exactly for the memories the agent may not read);
- forget, last: aimed on every surface at only what the agent may not erase (nothing may go,
  nothing be counted), then for real, one agent per surface in turn, erasing and reporting
  exactly what it may recall there, or anything within an ``erase`` grant.

Confusing scope strings must be refused with ``InvalidInput``.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp import Client as McpClient
from mcp_types import CallToolResult

import membus
from membus.access.policy import CasbinGate
from membus.bus.api import Agent, Bus
from membus.core.config import (
    ConsolidationConfig,
    MembusConfig,
    PolicyConfig,
    RankingConfig,
    RedisConfig,
    WorkerConfig,
)
from membus.core.keys import TenantKeys
from membus.errors import InvalidInput, NotFound, PermissionDenied
from membus.integrations.langgraph import MembusStore
from membus.integrations.mcp import CHANGES_URI, build_server
from membus.integrations.port import AgentPort, ClientPort
from membus.service.app import create_app
from membus.service.auth import ApiKeys
from membus.service.client import Client
from membus.store.port import RecallFilter, point_id

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

AGENTS = ["a", "b", "c", "d", "e"]  # "e" is named by no line: only built-ins and "*" apply
ROLES = ["role:r1", "role:r2"]
# A small vocabulary, so patterns, holes and memories overlap often (that is where leaks live);
# agent names double as segments so {self} and plain segments can collide.
FIRST = ["org", "team", "agent"]
INNER = ["x", "y", "a", "b"]
SEGMENTS = [*FIRST, *INNER]
ACTIONS = ["publish", "recall", "subscribe", "forget", "erase", "admin"]
LABELS = ["public", "internal", "confidential", "restricted"]
# Strings built to confuse a matcher: dot segments, globs, trailing/double slashes, Cyrillic
# a (U+0430) and fullwidth look-alikes, case, whitespace, another tenant's hash tag.
CONFUSING = [
    "team/a/../b",
    "team/a/./b",
    "team/a*",
    "team/*",
    "team/a/",
    "/team/a",
    "team//a",
    "te\u0430m/a",
    "agent/\u0430",
    "\uff54eam/a",
    "Team/a",
    "team/a ",
    " team/a",
    "team/a\n",
    "team/{self}",
    "team/a/%2e%2e",
    "{t2}:events",
    "",
]
QUERY = "memo"
MAX_K = 1000
GRACE_S = 0.25  # how long a subscription keeps listening for a leak after the wanted set


@dataclass(frozen=True)
class Line:
    sub: str
    pattern: str
    actions: str
    allow: bool

    def text(self, tenant: str) -> str:
        eft = "allow" if self.allow else "deny"
        return f"p, {self.sub}, {tenant}, {self.pattern}, {self.actions}, {eft}"


@dataclass(frozen=True)
class Mem:
    author: str
    scope: str
    label: str


@dataclass(frozen=True)
class World:
    ps: list[Line]
    gs: list[tuple[str, str]]  # (member, role)
    cs: list[tuple[str, str]]  # (member or *, label)
    memories: list[Mem]
    asked: list[str]  # one narrowing scope per agent, for recall(scopes=[...])
    confusing: str

    def csv(self, tenant: str) -> list[str]:
        return [
            *(p.text(tenant) for p in self.ps),
            *(f"g, {m}, {r}, {tenant}" for m, r in self.gs),
            *(f"g2, {m}, {lbl}, {tenant}" for m, lbl in self.cs),
        ]

    # -- the reference model: restated from policies/README.md, no code shared with the gate --

    def subjects(self, agent: str) -> set[str]:
        out, todo = {agent, "*"}, [agent]
        while todo:
            m = todo.pop()
            for member, role in self.gs:
                if member == m and role not in out:
                    out.add(role)
                    todo.append(role)
        return out

    def permitted(self, agent: str, action: str, scope: str) -> bool:
        if not valid(scope):
            return False
        subs = self.subjects(agent)
        hits = [
            p
            for p in self.ps
            if p.sub in subs
            and (p.actions == "*" or action in p.actions.split("|"))
            and matches(p.pattern, scope, agent)
        ]
        # the built-in own-scope rule grants neither admin nor erase (policies/README.md)
        own = action not in ("admin", "erase") and matches("agent/{self}/*", scope, agent)
        return (own or any(p.allow for p in hits)) and all(p.allow for p in hits)

    def clearance(self, agent: str) -> int:
        subs = self.subjects(agent)
        return max((LABELS.index(lbl) for m, lbl in self.cs if m in subs), default=0)

    def readable(self, agent: str, action: str, m: Mem) -> bool:
        return self.permitted(agent, action, m.scope) and LABELS.index(m.label) <= self.clearance(
            agent
        )

    def erasable(self, agent: str, m: Mem) -> bool:
        """``forget`` erases what the agent may also recall; ``erase`` erases anything."""
        return self.permitted(agent, "erase", m.scope) or (
            self.permitted(agent, "forget", m.scope) and self.readable(agent, "recall", m)
        )


def valid(scope: str) -> bool:
    segs = scope.split("/")
    return len(segs) <= 8 and all(re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", s) for s in segs)


def legal_pattern(pattern: str) -> bool:
    """``a/b`` or ``a/b/*``, with ``{self}`` only as a whole segment (policies/README.md)."""
    body = pattern.removesuffix("/*")
    return valid("/".join("x" if seg == "{self}" else seg for seg in body.split("/")))


def under(scope: str, root: str) -> bool:
    return scope == root or scope.startswith(root + "/")


def matches(pattern: str, scope: str, agent: str) -> bool:
    root = pattern.removesuffix("/*").replace("{self}", agent)
    return under(scope, root) if pattern.endswith("/*") else scope == root


# -- strategies --------------------------------------------------------------------------------

plain_scopes = st.builds(
    lambda first, rest: "/".join([first, *rest]),
    st.sampled_from(FIRST),
    st.lists(st.sampled_from(INNER), max_size=2),
)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from([*FIRST, "{self}"]))
    rest = draw(st.lists(st.sampled_from([*INNER, "{self}"]), max_size=2))
    return "/".join([first, *rest]) + draw(st.sampled_from(["", "/*", "/*"]))


actions = st.one_of(
    st.sampled_from(["*", "recall|subscribe", "recall", "subscribe", "publish|recall|subscribe"]),
    st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3, unique=True).map("|".join),
)
lines = st.builds(
    Line,
    st.sampled_from([*AGENTS[:4], *ROLES, "*"]),
    patterns(),
    actions,
    st.sampled_from([True, True, True, False]),  # mostly allows, so there is something to read
)
links = st.tuples(st.sampled_from([*AGENTS[:4], *ROLES]), st.sampled_from(ROLES))
clearances = st.tuples(st.sampled_from([*AGENTS[:4], *ROLES, "*"]), st.sampled_from(LABELS))


def near(ps: list[Line], agent: str) -> st.SearchStrategy[str]:
    """Scopes at, under and above the policy's roots (where decisions flip), and elsewhere."""
    roots = [p.pattern.removesuffix("/*").replace("{self}", agent) for p in ps]
    roots.append(f"agent/{agent}")
    at = st.tuples(st.sampled_from(roots), st.sampled_from(["", "", "/a", "/x/b"])).map("".join)
    parents = st.sampled_from(roots).map(lambda r: r.rsplit("/", 1)[0])
    holes = [p.pattern.removesuffix("/*").replace("{self}", agent) for p in ps if not p.allow]
    in_holes = st.tuples(st.sampled_from(holes or roots), st.sampled_from(["", "/b"]))
    return st.one_of(at, at, in_holes.map("".join), parents, plain_scopes).filter(valid)


CURATOR = "w"  # may publish everywhere, read nothing: puts memories where readers' lines are


def curator_lines() -> list[Line]:
    return [Line(CURATOR, f"{s}/*", "publish", True) for s in sorted({*SEGMENTS, *AGENTS})]


@st.composite
def memories(draw: st.DrawFn, ps: list[Line]) -> Mem:
    author = draw(st.sampled_from([CURATOR, CURATOR, CURATOR, *AGENTS]))
    scope_for = author if author != CURATOR else draw(st.sampled_from(AGENTS))
    label = draw(st.sampled_from(["public", *LABELS]))
    return Mem(author, draw(near(ps, scope_for)), label)


@st.composite
def carve_outs(draw: st.DrawFn, ps: list[Line]) -> Line:
    """A deny inside some line's pattern: the holes a read filter must keep (must_not)."""
    base = draw(st.sampled_from([p for p in ps if p.allow] or ps))
    sub = draw(st.sampled_from([base.sub, base.sub, base.sub, "*", *AGENTS[:4], *ROLES]))
    hole = base.pattern.removesuffix("/*") + "/" + draw(st.sampled_from([*INNER, "{self}"]))
    acts = draw(st.sampled_from([base.actions, base.actions, "recall|subscribe", "recall", "*"]))
    return Line(sub, hole + draw(st.sampled_from(["", "/*", "/*"])), acts, False)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    ps = draw(st.lists(lines, max_size=6))
    if ps:
        ps += draw(st.lists(carve_outs(ps), max_size=3))
    return World(
        ps=[*curator_lines(), *ps],
        gs=draw(st.lists(links, max_size=4)),
        cs=draw(st.lists(clearances, max_size=3)),
        memories=draw(st.lists(memories(ps), min_size=1, max_size=14)),
        asked=[draw(near(ps, a)) for a in AGENTS],
        confusing=draw(st.sampled_from(CONFUSING)),
    )


# -- one example, against the running bus -------------------------------------------------------


# Always-run examples: the shapes random policies hit only now and then.
HOLES = World(  # denies carved out of allowed subtrees (subtree and exact), memories in them
    ps=[
        *curator_lines(),
        Line("*", "team/*", "recall|subscribe", True),
        Line("*", "team/x/*", "recall", False),
        Line("a", "team/y", "recall|subscribe", False),
        Line("b", "org/{self}/*", "*", True),
        Line("b", "org/b/x", "subscribe", False),
    ],
    gs=[],
    cs=[("*", "internal")],
    memories=[
        Mem(CURATOR, "team", "public"),
        Mem(CURATOR, "team/x", "public"),
        Mem(CURATOR, "team/x/a", "internal"),
        Mem(CURATOR, "team/y", "public"),
        Mem(CURATOR, "team/y/a", "confidential"),
        Mem("b", "org/b/x", "public"),
        Mem("b", "org/b", "internal"),
        Mem("a", "org/a", "public"),
    ],
    asked=["team", "team/x", "org", "org/b", "team/y"],
    confusing="team/a/../b",
)
ROLES_AND_CLEARANCE = World(  # inheritance (with a cycle), per-role clearances, label edges
    ps=[
        *curator_lines(),
        Line("role:r1", "team/*", "recall|subscribe", True),
        Line("role:r2", "org/*", "*", True),
        Line("role:r2", "org/x/*", "subscribe", False),
    ],
    gs=[("a", "role:r2"), ("role:r2", "role:r1"), ("role:r1", "role:r2"), ("c", "role:r1")],
    cs=[("role:r2", "confidential"), ("c", "restricted")],
    memories=[Mem(CURATOR, s, lbl) for s in ("team/a", "org/x", "org") for lbl in LABELS],
    asked=["org/x", "team", "org", "agent/d", "team/a"],
    confusing="te\u0430m/a",
)


def decoy_lines(tenant: str) -> list[str]:
    """The other tenant lets everyone do everything everywhere, at every clearance."""
    firsts = sorted({*SEGMENTS, *AGENTS})  # every first segment a scope here can have
    return [f"p, *, {tenant}, {s}/*, *, allow" for s in firsts] + [f"g2, *, restricted, {tenant}"]


async def refuses_confusing(bus: Bus, gate: CasbinGate, tenant: str, bad: str) -> None:
    """A confusing scope is an input error at every door, never a (non-)match."""
    who = bus.agent("a", tenant)
    with pytest.raises(InvalidInput):
        await who.publish("memo confusing", bad)
    with pytest.raises(InvalidInput):
        await who.recall(QUERY, scopes=[bad])
    with pytest.raises(InvalidInput):
        await who.recall(QUERY, scopes=["org", bad])
    feed = who.subscribe([bad], start="0")
    try:
        with pytest.raises(InvalidInput):
            await feed.__anext__()
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput):
        await bus.forget(who.identity, scope=bad)
    # as a policy pattern too, unless the README grammar makes it one (``team/*``, ``{self}``);
    # surrounding blanks are trimmed from policy lines by design
    for pattern in (bad, bad + "/*"):
        if bad == bad.strip() and not legal_pattern(pattern):
            with pytest.raises(InvalidInput):
                await gate.add_policy(f"p, a, {tenant}, {pattern}, recall, allow")
    # look-alike tenant ids are accepted as other tenants (encoded: membus/core/ids.py), whose
    # names carry no hash-tag brace, and which reach nothing of this one
    for tenant_name in (tenant.replace("t", "\u0442"), tenant.upper(), "*", f"{tenant}}}"):
        other = bus.agent("a", tenant_name)
        assert other.tenant != tenant and not {"{", "}"} & set(other.tenant)
        assert await other.recall(QUERY) == []


async def delivered(who: Agent, wanted: set[str], group: str | None = None) -> set[str] | None:
    """Memory ids the change feed delivers from the beginning; None if the subscribe is refused.
    ``group``: as a consumer of that group (every agent of the example asks for the same name).

    Everything is committed before we subscribe, so the wanted set arrives in the first read;
    we then keep listening a grace period so a leak further down the same read shows up too.
    """
    got: set[str] = set()
    feed = who.subscribe(None, start="0", group=group)
    try:
        with anyio.CancelScope(deadline=anyio.current_time() + 5.0) as scope:
            if not wanted:
                scope.deadline = anyio.current_time() + GRACE_S
            async for change in feed:
                assert change.tenant == who.tenant, change
                got.add(change.memory_id)
                if got >= wanted:
                    scope.deadline = min(scope.deadline, anyio.current_time() + GRACE_S)
    except PermissionDenied:
        return None
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
    return got


# -- every surface of one agent --------------------------------------------------------------


def api_key(tenant: str, agent: str) -> str:
    return f"probe-{tenant}-{agent}-0123456789"


@dataclass
class Doors:
    """One agent of one example on every surface: in process, over HTTP (recall, forget, the
    SSE feed), as MCP tools over either port, and as a LangGraph store over either port."""

    agent: Agent
    http: Client
    mcp: McpClient  # over AgentPort (in process)
    mcp_remote: McpClient  # over ClientPort (the service)
    graph: MembusStore  # over AgentPort
    graph_remote: MembusStore  # over ClientPort


@asynccontextmanager
async def surfaces(
    bus: Bus, tenant: str, names: list[str] | None = None
) -> AsyncIterator[dict[str, Doors]]:
    """Every agent of the example (the curator too) on every surface, with an API key each.
    The app is built per example because its keys name the example's tenant; it is cheap."""
    names = names or [*AGENTS, CURATOR]
    keys = ApiKeys.from_keys({api_key(tenant, a): (tenant, a) for a in names})
    transport = httpx.ASGITransport(app=create_app(bus, keys))
    async with AsyncExitStack() as stack:
        doors = {}
        for a in names:
            http = Client("http://membus", api_key(tenant, a), transport=transport)
            await stack.enter_async_context(http)
            local, remote = AgentPort(bus.agent(a, tenant)), ClientPort(http)
            doors[a] = Doors(
                agent=bus.agent(a, tenant),
                http=http,
                mcp=await stack.enter_async_context(McpClient(build_server(local), cache=None)),
                mcp_remote=await stack.enter_async_context(
                    McpClient(build_server(remote), cache=None)
                ),
                graph=MembusStore(local, shared_memories=True, wait_s=30),
                graph_remote=MembusStore(remote, shared_memories=True, wait_s=30),
            )
        yield doors


async def tool(client: McpClient, name: str, **args: Any) -> dict[str, Any]:
    """An MCP tool's structured result; a membus error comes back as that exception."""
    result = await client.call_tool(name, args)
    assert isinstance(result, CallToolResult)
    body = result.structured_content
    assert isinstance(body, dict), result.content
    if result.is_error:
        if body.get("error") == "PermissionDenied":
            raise PermissionDenied("?", name, "?", "?")
        raise AssertionError(f"{name} failed: {body}")
    return body


TAG = re.compile(r"\bmemo (\d+) by ")


def index(content: str | None) -> int:
    """Which of the example's memories a content is (-1: a decoy, or anything else)."""
    found = TAG.search(content or "")
    return int(found.group(1)) if found else -1


def item_key(i: int) -> str:
    return f"k{i}"


PUBLISHERS = ["agent", "http", "mcp", "mcp_remote", "graph"]


async def publish_on(d: Doors, surface: str, i: int, m: Mem, content: str) -> None:
    """Publish memory ``i`` on one surface; MCP and LangGraph carry no label (public only)."""
    if surface == "agent":
        await d.agent.publish(content, m.scope, label=m.label)
    elif surface == "http":
        await d.http.publish(content, m.scope, label=m.label)
    elif surface in ("mcp", "mcp_remote"):
        assert m.label == "public"
        await tool(getattr(d, surface), "remember", content=content, scope=m.scope)
    else:
        assert surface == "graph" and m.label == "public"
        ns = tuple(m.scope.split("/"))
        await d.graph.aput(ns, item_key(i), {"text": content})


def surface_for(i: int, m: Mem, n: int) -> str:
    choices = PUBLISHERS if m.label == "public" else PUBLISHERS[:2]
    return choices[(i + n) % len(choices)]


async def refused_everywhere(d: Doors, i: int, m: Mem, content: str) -> None:
    """A publish the policy forbids is refused on every surface (none writes; checked after)."""
    for surface in PUBLISHERS:
        if surface in ("mcp", "mcp_remote", "graph") and m.label != "public":
            continue
        with pytest.raises(PermissionDenied):
            await publish_on(d, surface, i, m, content)
    with pytest.raises(PermissionDenied):  # the LangGraph store over the service too
        await d.graph_remote.aput(tuple(m.scope.split("/")), item_key(i), {"text": content})


async def refused_as_empty(read: Awaitable[set[int]]) -> set[int]:
    """A read refused outright (narrowed to scopes it may not read at all) found nothing."""
    try:
        return await read
    except PermissionDenied:
        return set()


async def recalled(d: Doors, scope: str | None) -> dict[str, set[int]]:
    """What one agent's recall finds on every surface (all of them, or under ``scope``)."""
    scopes = [scope] if scope else None
    ns = tuple(scope.split("/")) if scope else ()

    async def agent(working: bool) -> set[int]:
        hits = await d.agent.recall(QUERY, k=MAX_K, scopes=scopes, working=working)
        return {index(h.memory.content) for h in hits}

    async def http(working: bool) -> set[int]:
        hits = await d.http.recall(QUERY, k=MAX_K, scopes=scopes, working=working)
        return {index(h.memory.content) for h in hits}

    async def mcp(client: McpClient) -> set[int]:
        args: dict[str, Any] = {"query": QUERY, "k": 100}
        if scopes:
            args["scopes"] = scopes
        body = await tool(client, "recall", **args)
        return {index(m["content"]) for m in body["memories"]}

    async def graph(store: MembusStore) -> set[int]:
        found = await store.asearch(ns, query=QUERY, limit=MAX_K)
        return {index(str(it.value.get("text") or it.value.get("content"))) for it in found}

    # a context large enough for everything: its recall tier reaches every readable memory
    async def context(remote: bool) -> set[int]:
        src = d.http if remote else d.agent
        got = await src.context(QUERY, budget_tokens=100_000, scopes=scopes)
        return {index(it.content) for it in got.items}

    async def mcp_context(client: McpClient) -> set[int]:
        args: dict[str, Any] = {"query": QUERY, "budget_tokens": 100_000}
        if scopes:
            args["scopes"] = scopes
        body = await tool(client, "get_context", **args)
        return {index(it["content"]) for it in body["items"]}

    return {
        "agent": await refused_as_empty(agent(False)),
        "agent working": await refused_as_empty(agent(True)),
        "http": await refused_as_empty(http(False)),
        "http working": await refused_as_empty(http(True)),
        "mcp": await refused_as_empty(mcp(d.mcp)),
        "mcp remote": await refused_as_empty(mcp(d.mcp_remote)),
        "langgraph": await refused_as_empty(graph(d.graph)),
        "langgraph remote": await refused_as_empty(graph(d.graph_remote)),
        "context": await refused_as_empty(context(False)),
        "context http": await refused_as_empty(context(True)),
        "mcp get_context": await refused_as_empty(mcp_context(d.mcp)),
        "mcp remote get_context": await refused_as_empty(mcp_context(d.mcp_remote)),
    }


async def sse_delivers(d: Doors) -> set[str] | None:
    """Memory ids the client's SSE feed delivers from the beginning up to now (None: refused)."""
    got = set()
    try:
        with anyio.fail_after(10):
            async for change in d.http.subscribe(None, start="0", until_now=True):
                assert change.tenant == d.agent.tenant, change
                got.add(change.memory_id)
    except PermissionDenied:
        return None
    return got


FORGETTERS = ["agent", "http", "mcp", "mcp_remote"]


async def forget_on(d: Doors, surface: str, ids: list[str], scope: str | None) -> set[str]:
    """Forget on one surface; the ids its report says it erased (refused: none)."""
    try:
        if surface == "agent":
            return set((await d.agent.forget(memory_ids=ids or None, scope=scope)).memory_ids)
        if surface == "http":
            return set((await d.http.forget(memory_ids=ids or None, scope=scope)).memory_ids)
        args: dict[str, Any] = {"scope": scope} if scope else {}
        if ids:
            args["memory_ids"] = ids
        body = await tool(getattr(d, surface), "forget", **args)
        assert body["forgotten"] == len(body["memory_ids"]), body
        return set(body["memory_ids"])
    except PermissionDenied:
        return set()


async def run_example(bus: Bus, w: World, n: int) -> list[str]:
    """Checks one world on every surface; returns what it exercised (shown with -s)."""
    seen: list[str] = []
    gate = bus.gate
    assert isinstance(gate, CasbinGate)
    tenant, other = f"pt{n}", f"po{n}"
    await gate.add_policy(*w.csv(tenant), *decoy_lines(other))
    await refuses_confusing(bus, gate, tenant, w.confusing)
    async with surfaces(bus, tenant) as doors:
        seen += await check_example(bus, w, n, tenant, other, doors)
    return sorted({s for s in seen if s})


async def check_example(
    bus: Bus, w: World, n: int, tenant: str, other: str, doors: dict[str, Doors]
) -> list[str]:
    seen: list[str] = []
    # publish, each memory on one surface in turn: allowed ones go through, forbidden ones
    # fail at once on every surface and reach no stream
    events = TenantKeys(tenant).events
    published: dict[int, Mem] = {}
    for i, m in enumerate(w.memories):
        content = f"{QUERY} {i} by {m.author} in {m.scope}"
        if w.permitted(m.author, "publish", m.scope):
            surface = surface_for(i, m, n)
            await publish_on(doors[m.author], surface, i, m, content)
            published[i] = m
            seen.append(f"published via {surface}")
        else:
            before = await bus.redis.xlen(events)
            with pytest.raises(PermissionDenied) as denied:
                await doors[m.author].agent.publish(content, m.scope, label=m.label)
            assert (denied.value.agent, denied.value.action) == (m.author, "publish")
            await refused_everywhere(doors[m.author], i, m, content)
            assert await bus.redis.xlen(events) == before
            seen.append("publish refused")
    # decoys: the same agent names publish into the same scopes of another tenant
    decoys = set()
    for name, scope in sorted({(m.author, m.scope) for m in w.memories}):
        r = await bus.agent(name, other).publish(f"{QUERY} decoy by {name} in {scope}", scope)
        decoys.add(point_id(other, r.event_id))
    # working memory, before the writers got to everything: never more than the agent may read
    for agent in AGENTS:
        for hits in (
            await doors[agent].agent.recall(QUERY, k=MAX_K, working=True),
            await doors[agent].http.recall(QUERY, k=MAX_K, working=True),
        ):
            got_w = {index(h.memory.content) for h in hits}
            leaked = {i for i in got_w if i not in published}
            leaked |= {i for i in got_w - leaked if not w.readable(agent, "recall", published[i])}
            assert not leaked, {"agent": agent, "working memory leaked": leaked}
    await bus.drain(timeout_s=30)

    # the writers' admission agrees with the door: nothing parked, everything stored
    assert await bus.redis.xlen(TenantKeys(tenant).dlq) == 0
    # k=MAX_K returns every point (search is exhaustive on a small store): checked without the
    # gate, so a "missing" memory below is the policy's doing, not the index's
    everything = await bus.store.search(
        bus.embedder.embed([QUERY]), RecallFilter(tenant=tenant), MAX_K
    )
    ids = {index(h.memory.content): h.memory.id for h in everything}
    assert set(ids) == set(published), {"stored": sorted(ids), "published": sorted(published)}
    stored = {ids[i]: m for i, m in published.items()}

    for agent, asked in zip(AGENTS, w.asked, strict=True):
        d = doors[agent]
        want = {i for i, m in published.items() if w.readable(agent, "recall", m)}
        seen.append("recall reads some but not all" if 0 < len(want) < len(published) else "")
        for surface, got in (await recalled(d, None)).items():
            assert got == want, {
                "agent": agent,
                "surface": surface,
                "leaked": [published.get(i, "other tenant") for i in got - want],
                "unreachable": [published[i] for i in want - got],
            }
        want_n = {i for i in want if under(published[i].scope, asked)}
        for surface, got in (await recalled(d, asked)).items():
            assert got == want_n, {
                "agent": agent,
                "surface": surface,
                "asked": asked,
                "leaked": [published.get(i, "other tenant") for i in got - want_n],
                "unreachable": [published[i] for i in want_n - got],
            }
        # recall statistics answer for readable memories only (the rest "do not exist")
        # (HTTP refuses an empty id list where the in-process call answers {}: not asked here)
        for surface, stats in (
            ("agent", await d.agent.access(sorted(stored))),
            ("http", await d.http.access(sorted(stored)) if stored else {}),
        ):
            want_a = {ids[i] for i in want}
            assert set(stats) == want_a, {
                "agent": agent,
                "surface": f"{surface} access",
                "leaked": [stored.get(i, "other tenant") for i in set(stats) - want_a],
            }
        # list of scopes on every surface: in process, the service's /v1/scopes, MCP and
        # LangGraph over either port
        want_s = sorted({published[i].scope for i in want})
        for surface, got_s in (
            ("agent", await d.agent.scopes()),
            ("http", await d.http.scopes()),
            ("mcp", (await tool(d.mcp, "list_scopes"))["scopes"]),
            ("mcp over http", (await tool(d.mcp_remote, "list_scopes"))["scopes"]),
        ):
            assert got_s == want_s, {"agent": agent, "surface": surface, "scopes": got_s}
        for store in (d.graph, d.graph_remote):
            spaces = await store.alist_namespaces(limit=MAX_K)
            assert spaces == sorted({tuple(s.split("/")) for s in want_s}), agent
        # the memory operations read through recall's gate: list and export hold exactly the
        # readable memories, get finds exactly those, and the rest are NotFound like an absent id
        want_m = {ids[i] for i in want}
        for surface, got_m in (
            ("agent list", {m.id for m in (await d.agent.list(limit=MAX_K)).memories}),
            ("http list", {m.id for m in (await d.http.list(limit=MAX_K)).memories}),
            ("http export", {m.id async for m in d.http.export()}),
        ):
            assert got_m == want_m, {
                "agent": agent,
                "surface": surface,
                "leaked": [stored.get(j, "other tenant") for j in got_m - want_m],
                "unreachable": [stored[j] for j in want_m - got_m],
            }
        for j, m in stored.items():
            try:
                found = (await d.http.get(j)).id == j
            except NotFound:
                found = False
            assert found == (j in want_m), {"agent": agent, "surface": "http get", "memory": m}
        seen.append("memory operations" if want_m else "")
        # LangGraph get of every item: there iff readable, on either port
        for i, m in published.items():
            if surface_for(i, m, n) != "graph":
                continue
            for store in (d.graph, d.graph_remote):
                try:
                    item = await store.aget(tuple(m.scope.split("/")), item_key(i))
                except PermissionDenied:
                    item = None
                assert (item is not None) == (i in want), {"agent": agent, "get": m}
            seen.append("langgraph get")

    # the other tenant sees its own decoys, all of them: isolation is not emptiness
    got_o = {h.memory.id for h in await bus.agent("a", other).recall(QUERY, k=MAX_K)}
    assert got_o == decoys

    wanted = {a: {i for i, m in stored.items() if w.readable(a, "subscribe", m)} for a in AGENTS}
    seen += await feeds_match(bus, tenant, wanted, stored)
    for agent in AGENTS:  # the service's SSE feed, read up to now
        got_f = await sse_delivers(doors[agent])
        if got_f is None:
            assert not wanted[agent], {"agent": agent, "SSE refused but may read": wanted[agent]}
            continue
        assert got_f == wanted[agent], {
            "agent": agent,
            "surface": "sse",
            "leaked": [stored.get(i, "other tenant") for i in got_f - wanted[agent]],
            "unreachable": [stored[i] for i in wanted[agent] - got_f],
        }
        # MCP's changes resource: what its follower saw since the session opened, read again
        # through the live grant; the follower may lag behind (then empty), never leak
        for client in (doors[agent].mcp, doors[agent].mcp_remote):
            body = await client.read_resource(CHANGES_URI)
            text = body.contents[0].text  # type: ignore[union-attr]
            got_r = {c["memory_id"] for c in orjson.loads(text)["changes"]}
            assert got_r in (set(), wanted[agent]), {
                "agent": agent,
                "surface": "mcp changes",
                "leaked": [stored.get(i, "other tenant") for i in got_r - wanted[agent]],
            }
            seen.append("mcp changes resource delivers" if got_r else "")
    seen += await forgets_match(bus, w, n, tenant, doors, stored)
    return seen


async def forgets_match(
    bus: Bus, w: World, n: int, tenant: str, doors: dict[str, Doors], stored: dict[str, Mem]
) -> list[str]:
    """forget erases (and reports) exactly what the agent may erase: first aimed only at what
    it may not (every surface; nothing may go), then for real, one agent per surface in turn."""
    seen: list[str] = []

    async def left() -> set[str]:
        hits = await bus.store.search(
            bus.embedder.embed([QUERY]), RecallFilter(tenant=tenant), MAX_K
        )
        return {h.memory.id for h in hits}

    for agent in AGENTS:
        out = sorted(i for i, m in stored.items() if not w.erasable(agent, m))
        if not out:
            continue
        scope = stored[out[0]].scope
        in_scope = [i for i in out if stored[i].scope == scope]
        for surface in FORGETTERS:  # every surface takes a list of ids (MCP too, now)
            gone = await forget_on(doors[agent], surface, out, None)
            assert not gone, {"agent": agent, "surface": surface, "erased": gone}
            gone = await forget_on(doors[agent], surface, in_scope, scope)
            assert not gone, {"agent": agent, "surface": surface, "scope": scope, "erased": gone}
        seen.append("forget aimed at what it may not erase")
    assert await left() == set(stored)  # nothing went

    remaining = dict(stored)
    for k, (agent, asked) in enumerate(zip(AGENTS, w.asked, strict=True)):
        surface = FORGETTERS[(n + k) % len(FORGETTERS)]
        want = {i for i, m in remaining.items() if under(m.scope, asked) and w.erasable(agent, m)}
        gone = await forget_on(doors[agent], surface, [], asked)
        assert gone == want, {
            "agent": agent,
            "surface": surface,
            "scope": asked,
            "erased but may not": [stored.get(i, "?") for i in gone - want],
            "kept but may erase": [stored[i] for i in want - gone],
        }
        seen.append("forget erased some" if want else "")
        for i in want:
            del remaining[i]
    assert await left() == set(remaining)
    return seen


async def feeds_match(
    bus: Bus, tenant: str, wanted: dict[str, set[str]], stored: dict[str, Mem]
) -> list[str]:
    """Every agent's change feed delivers exactly ``wanted[agent]``: alone, then with every
    agent joining a group of the same name at once (a group is its agent's: nobody takes, nor
    acknowledges, another agent's deliveries)."""
    seen: list[str] = []
    for group in (None, "shared-name"):
        feeds: dict[str, set[str] | None] = {}

        async def follow(agent: str, group: str | None, into: dict[str, set[str] | None]) -> None:
            into[agent] = await delivered(bus.agent(agent, tenant), wanted[agent], group)

        async with anyio.create_task_group() as tg:
            for agent in wanted:
                tg.start_soon(follow, agent, group, feeds)
        for agent, want in wanted.items():
            got_f = feeds[agent]
            if got_f is None:  # refused outright: only fine if nothing was readable
                assert not want, {"agent": agent, "refused but may read": want}
                seen.append("subscribe refused")
                continue
            seen.append(("group feed" if group else "feed") + " delivers some" if want else "")
            assert got_f == want, {
                "agent": agent,
                "group": group,
                "leaked": [stored.get(i, "other tenant") for i in got_f - want],
                "unreachable": [stored[i] for i in want - got_f],
            }
    return seen


async def run_guarded(bus: Bus, w: World, n: int) -> list[str]:
    # pytest.raises fails with a BaseException, which would take the portal's loop down with it
    # (and hide the message); as an AssertionError it travels back to hypothesis like any other
    # the MCP sessions nest a task group each: a failure inside them arrives wrapped deeper than
    # a traceback shows, so it is unwrapped to the first failure itself
    try:
        return await run_example(bus, w, n)
    except pytest.fail.Exception as exc:
        raise AssertionError(str(exc)) from None
    except BaseExceptionGroup as group:
        raise AssertionError(str(first_leaf(group))) from first_leaf(group)


def first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


FAST = WorkerConfig(
    min_idle_ms=1000, reclaim_every_s=1.0, max_deliveries=3, block_ms=20, tenants_refresh_s=0.05
)


@asynccontextmanager
async def shared_bus(path: Path, url: str) -> AsyncIterator[Bus]:
    # near-duplicate merging off: the decoys of two agents in one scope read alike, and this
    # property counts one memory per permitted publish (consolidation has its own tests)
    folding = ConsolidationConfig(near_duplicate=None)
    cfg = MembusConfig(
        redis=RedisConfig(url=url),
        worker=FAST,
        policy=PolicyConfig(shared=True),
        consolidation=folding,
        ranking=EVERY_HIT,
    )
    async with membus.open(path, cfg) as bus:
        yield bus


@pytest.mark.slow
def test_every_door_on_every_surface_delivers_exactly_what_the_policy_permits(
    redis_url: str, tmp_path: Path
) -> None:
    """Zero leaks, full reachability, across random policies, tenants, labels and agents, on
    every surface (25 random examples and 2 fixed ones, each checking every door on all)."""
    counter = itertools.count()
    exercised: Counter[str] = Counter()
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(shared_bus(tmp_path / "bus", redis_url)) as bus,
    ):

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(w=worlds())
        @example(w=HOLES)
        @example(w=ROLES_AND_CLEARANCE)
        def check(w: World) -> None:
            exercised.update(portal.call(run_guarded, bus, w, next(counter)))

        check()
    print("exercised (examples):", dict(exercised))  # shown with -s


# -- no policy: private by default ---------------------------------------------------------------

# names that prefix one another, so a matcher comparing strings instead of segments leaks
PRIVATE_AGENTS = ["al", "alice", "alice-2", "b"]
own_scopes = st.builds(
    lambda name, rest: "/".join(["agent", name, *rest]),
    st.sampled_from([*PRIVATE_AGENTS, "alice2", "alic"]),
    st.lists(st.sampled_from(INNER), max_size=2),
)
any_scopes = st.one_of(own_scopes, plain_scopes)


def own(agent: str, scope: str) -> bool:
    """The reference for the no-policy default: ``agent/<self>`` and below, by whole segments."""
    return under(scope, f"agent/{agent}")


@st.composite
def private_worlds(draw: st.DrawFn) -> tuple[list[Mem], list[str]]:
    mems = st.builds(
        Mem,
        author=st.sampled_from(PRIVATE_AGENTS),
        scope=any_scopes,
        label=st.sampled_from(LABELS),
    )
    n = len(PRIVATE_AGENTS)
    asked = draw(st.lists(st.one_of(any_scopes, st.just("agent")), min_size=n, max_size=n))
    return draw(st.lists(mems, min_size=1, max_size=8)), asked


async def run_private(bus: Bus, memories: list[Mem], asked: list[str], n: int) -> list[str]:
    """One example on a bus without a policy: the doors, the writers, recall (stored and
    working), the feed alone and in groups all hold each agent to its own ``agent/<self>``, on
    every surface."""
    tenant = f"pp{n}"
    async with surfaces(bus, tenant, PRIVATE_AGENTS) as doors:
        return await check_private(bus, memories, asked, tenant, doors)


async def check_private(
    bus: Bus, memories: list[Mem], asked: list[str], tenant: str, doors: dict[str, Doors]
) -> list[str]:
    seen: list[str] = []
    events = TenantKeys(tenant).events
    stored: dict[str, Mem] = {}
    at: dict[str, int] = {}  # memory id -> its index in ``memories`` (what surfaces compare)
    for i, m in enumerate(memories):
        author = bus.agent(m.author, tenant)
        content = f"{QUERY} {i} by {m.author} in {m.scope}"
        if own(m.author, m.scope):
            r = await author.publish(content, m.scope, label=m.label)
            stored[point_id(tenant, r.event_id)] = m
            at[point_id(tenant, r.event_id)] = i
            continue
        before = await bus.redis.xlen(events)
        with pytest.raises(PermissionDenied, match="MEMBUS_POLICY_MODE=open") as denied:
            await author.publish(content, m.scope, label=m.label)
        assert "policies/README.md" in str(denied.value)
        await refused_everywhere(doors[m.author], i, m, content)
        assert await bus.redis.xlen(events) == before
        seen.append("publish refused" + (" (agent/...)" if m.scope.startswith("agent/") else ""))
    for agent in PRIVATE_AGENTS:  # uncommitted or stored, never another agent's
        for hits in (
            await bus.agent(agent, tenant).recall(QUERY, k=MAX_K, working=True),
            await doors[agent].http.recall(QUERY, k=MAX_K, working=True),
        ):
            assert all(own(agent, h.memory.scope) for h in hits), [h.memory.scope for h in hits]
    await bus.drain(timeout_s=30)
    assert await bus.redis.xlen(TenantKeys(tenant).dlq) == 0  # writers agree with the doors
    wanted = {a: {i for i, m in stored.items() if own(a, m.scope)} for a in PRIVATE_AGENTS}
    for agent, ask in zip(PRIVATE_AGENTS, asked, strict=True):
        who = bus.agent(agent, tenant)
        got = {h.memory.id for h in await who.recall(QUERY, k=MAX_K)}
        assert got == wanted[agent], {
            "agent": agent,
            "leaked": [stored[i] for i in got - wanted[agent]],
        }
        want_n = {i for i in wanted[agent] if under(stored[i].scope, ask)}
        try:
            got_n = {h.memory.id for h in await who.recall(QUERY, k=MAX_K, scopes=[ask])}
        except PermissionDenied:
            got_n = set()
            seen.append("narrowed recall refused")
        assert got_n == want_n, {"agent": agent, "asked": ask, "leaked": got_n - want_n}
        assert not (await bus.gate.decision(who.identity, "admin", f"agent/{agent}")).allowed
        # the same on every other surface, by content
        for narrowed, ids in ((None, wanted[agent]), (ask, want_n)):
            for surface, got_s in (await recalled(doors[agent], narrowed)).items():
                assert got_s == {at[i] for i in ids}, {
                    "agent": agent,
                    "surface": surface,
                    "asked": narrowed,
                    "leaked": [memories[j] for j in got_s - {at[i] for i in ids} if j >= 0],
                }
        scopes = sorted({stored[i].scope for i in wanted[agent]})
        assert (await tool(doors[agent].mcp, "list_scopes"))["scopes"] == scopes, agent
        assert await doors[agent].http.scopes() == scopes, agent
        # list, export and get over HTTP: its own memories, and not one of a prefix-named agent
        http = doors[agent].http
        listed = {m.id for m in (await http.list(limit=MAX_K)).memories}
        exported = {m.id async for m in http.export()}
        for surface, got_m in (("http list", listed), ("http export", exported)):
            assert got_m == wanted[agent], {
                "agent": agent,
                "surface": surface,
                "leaked": [stored.get(i, "?") for i in got_m - wanted[agent]],
            }
        for i, m in stored.items():
            try:
                found = (await http.get(i)).id == i
            except NotFound:
                found = False
            assert found == (i in wanted[agent]), {"agent": agent, "http get": m}
        got_f = await sse_delivers(doors[agent])
        assert got_f == wanted[agent] or (got_f is None and not wanted[agent]), {
            "agent": agent,
            "surface": "sse",
            "leaked": [stored.get(i, "?") for i in (got_f or set()) - wanted[agent]],
        }
    seen += await feeds_match(bus, tenant, wanted, stored)
    return sorted({s for s in seen if s})


@pytest.mark.slow
def test_without_a_policy_each_agent_reaches_only_its_own_scopes(
    redis_url: str, tmp_path: Path
) -> None:
    """No policy configured (the default): every door refuses what is outside the caller's own
    ``agent/<self>`` subtree, with an error that says how to grant it; recall, working memory,
    the feed (alone or in same-named groups), and list, export, get and scopes over HTTP
    deliver exactly the caller's own memories, whatever their label, never those of an agent
    whose name extends or prefixes its own."""
    counter = itertools.count()
    exercised: Counter[str] = Counter()
    folding = ConsolidationConfig(near_duplicate=None)
    cfg = MembusConfig(
        redis=RedisConfig(url=redis_url), worker=FAST, consolidation=folding, ranking=EVERY_HIT
    )
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(membus.open(tmp_path / "bus", cfg)) as bus,
    ):

        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(world=private_worlds())
        def check(world: tuple[list[Mem], list[str]]) -> None:
            exercised.update(portal.call(private_guarded, bus, *world, next(counter)))

        check()
    print("exercised (examples):", dict(exercised))  # shown with -s


async def private_guarded(bus: Bus, memories: list[Mem], asked: list[str], n: int) -> list[str]:
    try:  # see run_guarded
        return await run_private(bus, memories, asked, n)
    except pytest.fail.Exception as exc:
        raise AssertionError(str(exc)) from None
    except BaseExceptionGroup as group:
        raise AssertionError(str(first_leaf(group))) from first_leaf(group)
