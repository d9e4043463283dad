"""The casbin gate: one test per permission rule, plus reload and cross-process propagation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from membus.access.gate import Gate, Identity
from membus.access.policy import CasbinGate
from membus.access.watch import FileSource, MemorySource, PolicySet, PolicyWatcher, RedisSource
from membus.errors import InvalidInput, PermissionDenied

EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "example.csv"
ACME = "acme"


def who(agent: str, tenant: str = ACME) -> Identity:
    return Identity(tenant=tenant, agent=agent)


@pytest.fixture
async def gate() -> CasbinGate:
    g = CasbinGate(MemorySource(EXAMPLE.read_text()))
    await g.reload()
    return g


async def eventually(cond: Callable[[], Awaitable[bool]], within: float) -> None:
    with anyio.fail_after(within):
        while True:
            if await cond():
                return
            await anyio.sleep(0.01)


async def allowed(g: CasbinGate, agent: str, action: str, scope: str, tenant: str = ACME) -> bool:
    return (await g.decision(who(agent, tenant), action, scope)).allowed  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_gate_implements_the_port(gate: CasbinGate) -> None:
    assert isinstance(gate, Gate)


@pytest.mark.anyio
async def test_private_by_default_nothing_outside_own_scope(gate: CasbinGate) -> None:
    for scope in ["team/support", "team/support/x", "agent/alice", "agent/alice/scratch", "misc"]:
        assert not await allowed(gate, "zed", "recall", scope)
        assert not await allowed(gate, "zed", "publish", scope)
    with pytest.raises(PermissionDenied) as err:
        await gate.check(who("zed"), "publish", "team/support")
    assert (err.value.agent, err.value.action, err.value.tenant) == ("zed", "publish", ACME)


@pytest.mark.anyio
async def test_own_scope_and_below_allowed_but_not_admin(gate: CasbinGate) -> None:
    for action in ["publish", "recall", "subscribe", "forget"]:
        assert await allowed(gate, "zed", action, "agent/zed")
        assert await allowed(gate, "zed", action, "agent/zed/scratch/deep")
    assert not await allowed(gate, "zed", "admin", "agent/zed")
    assert not await allowed(gate, "zed", "recall", "agent/zedd")  # a prefix is not a subtree
    d = await gate.decision(who("zed"), "recall", "agent/zed/scratch")
    assert d.rule is not None and "agent/{self}/*" in d.rule


@pytest.mark.anyio
async def test_erase_is_a_right_of_its_own(gate: CasbinGate) -> None:
    """``erase`` (forget beyond one's read grant) is held only by a role that names it: not by
    the built-in own-scope rule, not by ``forget`` (carol), only by erin's data-protection role."""
    assert not await allowed(gate, "zed", "erase", "agent/zed")
    assert not await allowed(gate, "carol", "erase", "team/support/tickets")
    assert await allowed(gate, "erin", "erase", "team/support/billing")
    assert not await allowed(gate, "erin", "erase", "org/accounts")
    assert not await allowed(gate, "erin", "recall", "team/support/billing")
    grant = await gate.grant(who("erin"), "erase", None)
    assert grant.covers("team/anything") and not grant.covers("org")


@pytest.mark.anyio
async def test_role_inheritance_within_tenant(gate: CasbinGate) -> None:
    # carol is support-lead, which inherits support
    assert await allowed(gate, "carol", "publish", "team/support/tickets")
    assert await allowed(gate, "carol", "forget", "team/support/tickets")
    assert not await allowed(gate, "alice", "forget", "team/support/tickets")
    assert await allowed(gate, "carol", "recall", "team/support-leads/plans")
    assert not await allowed(gate, "alice", "recall", "team/support-leads/plans")


@pytest.mark.anyio
async def test_deny_overrides_allow(gate: CasbinGate) -> None:
    assert await allowed(gate, "alice", "recall", "team/support/billing/q3")
    d = await gate.decision(who("bob"), "recall", "team/support/billing/q3")
    assert not d.allowed and d.rule is not None and d.rule.endswith("deny")
    assert await allowed(gate, "bob", "publish", "team/support/billing/q3")  # deny names recall
    grant = await gate.grant(who("bob"), "recall", None)
    assert "team/support" in grant.include and grant.exclude == ["team/support/billing"]
    assert not grant.covers("team/support/billing/q3") and grant.covers("team/support/x")


@pytest.mark.anyio
async def test_cross_tenant_never() -> None:
    g = CasbinGate(
        MemorySource(
            EXAMPLE.read_text() + "p, *, globex, org/*, *, allow\ng, alice, role:support, globex\n"
        )
    )
    assert not await allowed(g, "alice", "recall", "team/support/x", tenant="globex")
    assert not await allowed(g, "zed", "publish", "org/x")  # globex's line does not reach acme
    assert await allowed(g, "zed", "publish", "org/x", tenant="globex")
    assert (await g.grant(who("alice", "globex"), "recall", None)).include == [
        "agent/alice",
        "org",
    ]
    with pytest.raises(InvalidInput):
        PolicySet.parse("p, *, *, org/*, recall, allow")  # no wildcard tenants


@pytest.mark.anyio
async def test_self_reference_resolves_to_the_requesting_agent() -> None:
    g = CasbinGate(MemorySource("p, role:x, t, inbox/{self}/*, recall, allow\ng, a, role:x, t\n"))
    assert await allowed(g, "a", "recall", "inbox/a/mail", tenant="t")
    assert not await allowed(g, "a", "recall", "inbox/b/mail", tenant="t")
    assert (await g.grant(who("a", "t"), "recall", ["inbox"])).include == ["inbox/a"]


@pytest.mark.anyio
async def test_exact_pattern_is_only_that_scope(gate: CasbinGate) -> None:
    assert await allowed(gate, "carol", "recall", "agent/bob/handover")
    assert not await allowed(gate, "carol", "recall", "agent/bob/handover/x")
    grant = await gate.grant(who("carol"), "recall", ["agent"])
    assert grant.exact == ["agent/bob/handover"] and grant.include == ["agent/carol"]
    assert grant.covers("agent/bob/handover") and not grant.covers("agent/bob/handover/x")


@pytest.mark.anyio
async def test_sensitivity_needs_clearance_even_in_readable_scope(gate: CasbinGate) -> None:
    levels = {"zed": 1, "alice": 1, "carol": 2, "dana": 3}
    for agent, level in levels.items():
        grant = await gate.grant(who(agent), "recall", None)
        assert grant.clearance == level == await gate.clearance(who(agent))
    alice = await gate.grant(who("alice"), "recall", None)
    carol = await gate.grant(who("carol"), "recall", None)
    assert alice.admits("team/support/x", 1) and not alice.admits("team/support/x", 2)
    assert carol.admits("team/support/x", 2) and not carol.admits("team/support/x", 3)
    bare = CasbinGate(MemorySource(""))
    assert (await bare.grant(who("a", "t"), "recall", None)).clearance == 0  # public by default


CONFUSING = [
    "team/support/../x",
    "team/support/..",
    "team/support*",
    "team/support/*",
    "team/support/",
    "/team/support",
    "team//support",
    "team/supp\u043ert",  # cyrillic o
    "team/support\u200b",  # zero-width space
    "TEAM/support",
    " team/support",
    "",
]


@pytest.mark.anyio
@pytest.mark.parametrize("scope", CONFUSING)
async def test_confusing_scope_strings_never_match(gate: CasbinGate, scope: str) -> None:
    for action in ["recall", "publish", "forget"]:
        assert not await allowed(gate, "carol", action, scope)
    grant = await gate.grant(who("carol"), "recall", [scope])
    assert grant.empty and not grant.covers(scope)


@pytest.mark.parametrize(
    "pattern", ["team/a*", "team/*/x", "*", "team/a/../b", "team/a/", "t\u00e9am/*", "a/x{self}/*"]
)
def test_confusing_patterns_are_rejected_at_load(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        PolicySet.parse(f"p, *, acme, {pattern}, recall, allow")


@pytest.mark.parametrize(
    "line",
    [
        "p, *, acme, org/*, read, allow",  # unknown action
        "p, *, acme, org/*, recall, maybe",  # unknown effect
        "g, alice, support, acme",  # roles are role:<name>
        "g2, alice, secret, acme",  # unknown label
        "p, Alice, acme, org/*, recall, allow",  # not a valid name
        "x, y, z",
    ],
)
def test_malformed_lines_are_rejected_with_line_numbers(line: str) -> None:
    with pytest.raises(InvalidInput) as err:
        PolicySet.parse(f"p, *, acme, org/*, recall\n{line}\n")
    assert err.value.problems[0]["field"] == "line 2"


def test_example_policy_loads() -> None:
    policy = PolicySet.parse(EXAMPLE.read_text())
    assert policy.tenants() == {ACME}


@pytest.mark.anyio
async def test_reload_invalidates_cached_decisions(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("p, *, acme, org/*, recall\n")
    g = CasbinGate(FileSource(path))
    v1 = await g.reload()
    assert await allowed(g, "zed", "recall", "org/x")  # now cached
    assert (await g.grant(who("zed"), "recall", None)).include == ["agent/zed", "org"]
    path.write_text("p, *, acme, org/*, recall, allow\np, zed, acme, org/*, recall, deny\n")
    assert await g.refresh() and g.version == v1 + 1
    assert not await allowed(g, "zed", "recall", "org/x")
    assert (await g.grant(who("zed"), "recall", None)).include == ["agent/zed"]
    assert not await g.refresh()  # unchanged source: no reload


@pytest.mark.anyio
async def test_runtime_add_and_remove_lines(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("# keep me\n")
    g = CasbinGate(FileSource(path))
    await g.add_policy("p,*,acme,org/*,recall,allow")
    assert await allowed(g, "zed", "recall", "org/x")
    with pytest.raises(InvalidInput):
        await g.add_policy("p, *, acme, org/a*, recall, allow")
    await g.remove_policy("p, *, acme, org/*, recall, allow")
    assert not await allowed(g, "zed", "recall", "org/x")
    assert path.read_text().startswith("# keep me")


@pytest.mark.anyio
async def test_watcher_propagates_a_change_between_gates_within_a_second(redis_url: str) -> None:
    ra = aioredis.Redis.from_url(redis_url, decode_responses=True)
    rb = aioredis.Redis.from_url(redis_url)  # bytes client: messages decode either way
    try:
        await RedisSource(ra).seed(EXAMPLE.read_text())
        a = CasbinGate(RedisSource(ra), watcher=PolicyWatcher(ra))
        b = CasbinGate(RedisSource(rb), watcher=PolicyWatcher(rb))
        async with anyio.create_task_group() as tg:
            await tg.start(a.watch)
            await tg.start(b.watch)
            assert not await allowed(b, "zed", "recall", "team/support/x")  # cached in b
            await a.add_policy("p, zed, acme, team/support/*, recall, allow")
            await eventually(lambda: allowed(b, "zed", "recall", "team/support/x"), within=1.0)
            await a.remove_policy("p, zed, acme, team/support/*, recall, allow")

            async def denied_to_b() -> bool:
                return not await allowed(b, "zed", "recall", "team/support/x")

            await eventually(denied_to_b, within=1.0)
            tg.cancel_scope.cancel()
    finally:
        await ra.aclose()
        await rb.aclose()


class SlowLoad(RedisSource):
    """The revoking process's own reload is slow (a big policy, a busy host)."""

    delay_s = 0.0

    async def load(self) -> str:
        await anyio.sleep(self.delay_s)
        return await super().load()


@pytest.mark.anyio
async def test_a_revocation_is_announced_before_the_revoking_process_reloads(
    redis_url: str,
) -> None:
    """Other processes hear of a revocation as soon as it is stored: a slow reload in the
    process that made it does not hold the revocation back everywhere else."""
    ra = aioredis.Redis.from_url(redis_url, decode_responses=True)
    rb = aioredis.Redis.from_url(redis_url, decode_responses=True)
    grant = "p, zed, acme, team/support/*, recall, allow"
    try:
        await RedisSource(ra).seed(EXAMPLE.read_text() + grant + "\n")
        a = CasbinGate(RedisSource(ra), watcher=PolicyWatcher(ra))
        slow = SlowLoad(rb)
        b = CasbinGate(slow, watcher=PolicyWatcher(rb))
        async with anyio.create_task_group() as tg:
            await tg.start(a.watch)
            await b.reload()
            slow.delay_s = 0.3
            assert await allowed(a, "zed", "recall", "team/support/x")
            revoking = anyio.Event()

            async def revoke() -> None:
                await b.remove_policy(grant)
                revoking.set()

            tg.start_soon(revoke)

            async def denied_to_a() -> bool:
                return not await allowed(a, "zed", "recall", "team/support/x")

            await eventually(denied_to_a, within=1.0)
            assert not revoking.is_set(), "a waited for b's own reload"
            with anyio.fail_after(2):
                await revoking.wait()
            assert not await allowed(b, "zed", "recall", "team/support/x")
            tg.cancel_scope.cancel()
    finally:
        await ra.aclose()
        await rb.aclose()


@pytest.mark.anyio
async def test_resync_picks_up_changes_whose_announcement_was_missed(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        g = CasbinGate(RedisSource(r), watcher=PolicyWatcher(r, resync_s=0.05))
        async with anyio.create_task_group() as tg:
            await tg.start(g.watch)
            await RedisSource(r).add(["p, *, acme, org/*, recall, allow"])  # no announcement
            await eventually(lambda: allowed(g, "zed", "recall", "org"), within=2.0)
            tg.cancel_scope.cancel()
    finally:
        await r.aclose()
