"""Property: the casbin gate answers exactly like a tiny reference model, with zero leaks.

Random tenants, roles (with inheritance, cycles allowed), allows, denies and scopes, including
``{self}`` patterns and confusing strings. For random requests the gate's decision equals the
reference, and ``grant()`` (what recall filters by) covers a scope iff the reference allows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membus.access.policy import Snapshot, default_model_path
from membus.access.watch import ACTIONS, PolicySet

TENANTS = ["t1", "t2"]
AGENTS = ["a", "b", "c"]
ROLES = ["role:r1", "role:r2"]
SEGMENTS = ["org", "team", "agent", "a", "b"]
CONFUSING = ["team/x/../a", "team/x*", "team/x/", "te\u0430m/x", "", "agent/a/"]
MODEL = default_model_path().read_text()

scopes = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from([*SEGMENTS, "{self}"]), min_size=1, max_size=3))
    return "/".join(segs) + draw(st.sampled_from(["", "/*"]))


@dataclass(frozen=True)
class P:
    sub: str
    tenant: str
    pattern: str
    actions: str
    allow: bool


p_lines = st.builds(
    P,
    st.sampled_from([*AGENTS, *ROLES, "*"]),
    st.sampled_from(TENANTS),
    patterns(),
    st.one_of(
        st.just("*"),
        st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3, unique=True).map("|".join),
    ),
    st.booleans(),
)
g_lines = st.tuples(
    st.sampled_from([*AGENTS, *ROLES]), st.sampled_from(ROLES), st.sampled_from(TENANTS)
)


def near(ps: list[P], agent: str) -> st.SearchStrategy[str]:
    """Scopes at, under and above the policy's pattern roots: where the decisions flip."""
    roots = [p.pattern.removesuffix("/*").replace("{self}", agent) for p in ps]
    roots += [f"agent/{agent}"]
    around = st.tuples(st.sampled_from(roots), st.sampled_from(["", "/a", "/b/org"])).map(
        lambda t: t[0] + t[1]
    )
    parents = st.sampled_from(roots).map(lambda r: r.rsplit("/", 1)[0])
    return st.one_of(around, parents, scopes, st.sampled_from(CONFUSING))


# -- the reference model: plain Python, no casbin, no shared code with the gate -----------------


def closure(agent: str, tenant: str, gs: list[tuple[str, str, str]]) -> set[str]:
    out, todo = {agent, "*"}, [agent]
    while todo:
        m = todo.pop()
        for member, role, t in gs:
            if t == tenant and member == m and role not in out:
                out.add(role)
                todo.append(role)
    return out


def valid(scope: str) -> bool:
    """The scope grammar, restated: 1-8 segments of [a-z0-9][a-z0-9_-]*, ASCII only."""
    segs = scope.split("/")
    return len(segs) <= 8 and all(re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", s) for s in segs)


def matches(pattern: str, scope: str, agent: str) -> bool:
    root = pattern.removesuffix("/*").replace("{self}", agent)
    if pattern.endswith("/*"):
        return scope == root or scope.startswith(root + "/")
    return scope == root


def reference(
    ps: list[P], gs: list[tuple[str, str, str]], agent: str, tenant: str, action: str, scope: str
) -> bool:
    if not valid(scope):
        return False
    subjects = closure(agent, tenant, gs)
    hits = [
        p
        for p in ps
        if p.tenant == tenant
        and p.sub in subjects
        and (p.actions == "*" or action in p.actions.split("|"))
        and matches(p.pattern, scope, agent)
    ]
    # the built-in own-scope line grants neither admin nor erase (forget beyond one's reads)
    own = action not in ("admin", "erase") and matches("agent/{self}/*", scope, agent)
    return (own or any(p.allow for p in hits)) and not any(not p.allow for p in hits)


def csv(ps: list[P], gs: list[tuple[str, str, str]]) -> str:
    lines = [
        f"p, {p.sub}, {p.tenant}, {p.pattern}, {p.actions}, {'allow' if p.allow else 'deny'}"
        for p in ps
    ]
    lines += [f"g, {m}, {r}, {t}" for m, r, t in gs]
    return "\n".join(lines)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ps=st.lists(p_lines, max_size=8), gs=st.lists(g_lines, max_size=6), data=st.data())
def test_gate_equals_reference_and_grants_never_leak(
    ps: list[P], gs: list[tuple[str, str, str]], data: st.DataObject
) -> None:
    snap = Snapshot(1, "r", MODEL, PolicySet.parse(csv(ps, gs)), cache_max=1000)
    snap.warm()
    for _ in range(12):
        agent = data.draw(st.sampled_from(AGENTS))
        tenant = data.draw(st.sampled_from(TENANTS))
        action = data.draw(st.sampled_from(ACTIONS))
        aimed: P | None = None
        aim: bool = bool(ps) and data.draw(st.booleans())
        if aim:  # aim at a line, so allows and denies do fire
            line = aimed = data.draw(st.sampled_from(ps))
            tenant = line.tenant
            holders = [a for a in AGENTS if line.sub in closure(a, tenant, gs)]
            if holders:
                agent = data.draw(st.sampled_from(holders))
            if line.actions != "*":
                action = data.draw(st.sampled_from(line.actions.split("|")))
        scope = data.draw(near(ps, agent))
        if aimed is not None and data.draw(st.booleans()):
            root = aimed.pattern.removesuffix("/*").replace("{self}", agent)
            scope = root + data.draw(st.sampled_from(["", "", "/a", "/b/org"]))
        asked = data.draw(st.one_of(near(ps, agent), scopes).filter(bool))
        want = reference(ps, gs, agent, tenant, action, scope)
        t = snap.tenant(tenant)
        assert t.decide(agent, action, scope).allowed == want, (agent, tenant, action, scope)
        # grant(None) covers exactly what is allowed: no leaks, nothing unreachable
        assert t.grant(agent, action, None).covers(scope) == want, (agent, tenant, action, scope)
        # narrowed to a requested subtree: the intersection, still exact
        narrowed = t.grant(agent, action, [asked]).covers(scope)
        inside = scope == asked or scope.startswith(asked + "/")
        assert narrowed == (want and inside), (agent, tenant, action, scope, asked)
