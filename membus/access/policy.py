"""The casbin permission engine: tenants are domains, scopes are paths, deny overrides allow.

The line grammar lives in membus/access/watch.py and policies/README.md. In short: ``p`` lines
allow or deny actions on an exact scope ``team/support`` or a subtree ``team/support/*`` (with
``{self}`` for the requesting agent), ``g`` lines give roles, ``g2`` lines give clearances. Every
agent may publish, recall, subscribe and forget in ``agent/{self}/*`` (a built-in line) and
nothing else unless a line allows it.

Speed: casbin's ``enforce`` evaluates the matcher once per policy line, so each tenant gets its
own enforcer holding only its lines (which is also why tenants cannot leak into each other), role
closures are computed once (casbin's default domain role manager rebuilds quadratically), and
decisions and grants are cached in a snapshot that every reload replaces whole. Read grants are
compiled in plain Python from the same lines; tests/test_policy_props.py checks both against a
reference model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import casbin
from anyio.abc import TaskStatus

from membus.access.gate import Action, Decision, Identity, ReadGrant
from membus.access.watch import (
    ACTIONS,
    ANY,
    FileSource,
    PolicySet,
    PolicySource,
    PolicyWatcher,
    own_scope_rule,
    parse_pattern,
    policy_lines,
    under,
    valid_scope,
)
from membus.core.logs import get_logger
from membus.errors import MembusError, PermissionDenied

# membus/access/policy.py: the repository keeps policies/ beside membus/, a wheel inside it
_PACKAGE = Path(__file__).resolve().parent.parent
_REPO_MODEL = _PACKAGE.parent / "policies" / "model.conf"
_PACKAGED_MODEL = _PACKAGE / "policies" / "model.conf"
# casbin logs every denial at WARNING on a shared logger; we log decisions ourselves.
_QUIET = logging.Logger("membus.policy.casbin", level=logging.CRITICAL + 1)


def default_model_path() -> Path:
    return _PACKAGED_MODEL if _PACKAGED_MODEL.exists() else _REPO_MODEL


# -- roles ---------------------------------------------------------------------------------------


class Roles:
    """A casbin role manager for one tenant: closures by BFS, cached (cycles are harmless)."""

    def __init__(self) -> None:
        self._edges: dict[str, set[str]] = {}
        self._closure: dict[str, frozenset[str]] = {}

    def closure(self, name: str) -> frozenset[str]:
        """Every role ``name`` holds, directly or inherited (not including itself)."""
        got = self._closure.get(name)
        if got is None:
            seen: set[str] = set()
            todo = list(self._edges.get(name, ()))
            while todo:
                r = todo.pop()
                if r not in seen:
                    seen.add(r)
                    todo.extend(self._edges.get(r, ()))
            seen.discard(name)
            got = self._closure[name] = frozenset(seen)
        return got

    # casbin RoleManager interface (domain arguments ignored: one instance per tenant)
    def clear(self) -> None:
        self._edges.clear()
        self._closure.clear()

    def add_link(self, name1: str, name2: str, *domain: str) -> None:
        self._edges.setdefault(name1, set()).add(name2)
        self._closure.clear()

    def delete_link(self, name1: str, name2: str, *domain: str) -> None:
        self._edges.get(name1, set()).discard(name2)
        self._closure.clear()

    def has_link(self, name1: str, name2: str, *domain: str) -> bool:
        return name1 == name2 or name2 in self.closure(name1)

    def get_roles(self, name: str, *domain: str) -> list[str]:
        return sorted(self._edges.get(name, ()))

    def get_users(self, name: str, *domain: str) -> list[str]:
        return sorted(u for u, rs in self._edges.items() if name in rs)

    def print_roles(self) -> None:
        return None


# -- per-tenant engine ---------------------------------------------------------------------------


def _act_match(requested: str, allowed: str) -> bool:
    return allowed == ANY or requested == allowed or requested in allowed.split("|")


def _scope_match(scope: str, pattern: str, agent: str) -> bool:
    try:
        return parse_pattern(pattern).matches(scope, agent)
    except ValueError:
        return False


@dataclass
class _View:
    allow: list[tuple[str, bool, str]]  # (root, subtree, rule text)
    deny: list[tuple[str, bool, str]]
    clearance: int


class TenantPolicy:
    """One tenant's enforcer, roles and caches; immutable once built except for its caches."""

    def __init__(self, model_text: str, tenant: str, policy: PolicySet, cache_max: int) -> None:
        self.tenant, self.cache_max = tenant, cache_max
        self.rules = [own_scope_rule(tenant), *policy.rules.get(tenant, [])]
        self.roles = Roles()
        self.clearances = policy.clearances.get(tenant, [])
        e = casbin.Enforcer(casbin.Enforcer.new_model(text=model_text))
        e.logger = _QUIET
        e.add_function("actMatch", _act_match)
        e.add_function("scopeMatch", _scope_match)
        e.set_role_manager(self.roles)
        e.set_named_role_manager("g2", Roles())
        rows = {tuple(r.text.split(", ")[1:]): None for r in self.rules}  # dedup, keep order
        e.model.add_policies("p", "p", [list(r) for r in rows])
        links = {(m, r, tenant): None for m, r in policy.links.get(tenant, [])}
        if links:
            e.model.add_policies("g", "g", [list(x) for x in links])
        e.build_role_links()
        self.enforcer = e
        self.decisions: dict[tuple[str, str, str], Decision] = {}
        self.views: dict[tuple[str, str], _View] = {}
        self.grants: dict[tuple[str, str, tuple[str, ...] | None], ReadGrant] = {}

    def decide(self, agent: str, action: str, scope: str) -> Decision:
        key = (agent, action, scope)
        got = self.decisions.get(key)
        if got is None:
            if not valid_scope(scope) or action not in ACTIONS:
                got = Decision(allowed=False)
            else:
                ok, line = self.enforcer.enforce_ex(agent, self.tenant, scope, action)
                got = Decision(allowed=ok, rule=", ".join(["p", *line]) if line else None)
            if len(self.decisions) >= self.cache_max:
                self.decisions.clear()  # crude but bounded; hot keys refill in microseconds
            self.decisions[key] = got
        return got

    def view(self, agent: str, action: str) -> _View:
        key = (agent, action)
        got = self.views.get(key)
        if got is None:
            subjects = {agent, ANY, *self.roles.closure(agent)}
            allow: list[tuple[str, bool, str]] = []
            deny: list[tuple[str, bool, str]] = []
            for r in self.rules:
                if r.sub in subjects and r.acts(action):
                    entry = (r.pattern.resolve(agent), r.pattern.subtree, r.text)
                    (allow if r.allow else deny).append(entry)
            levels = [lvl for m, lvl in self.clearances if m in subjects]
            got = _View(allow, deny, max(levels, default=0))
            if len(self.views) >= self.cache_max:
                self.views.clear()
            self.views[key] = got
        return got

    def grant(self, agent: str, action: str, scopes: Sequence[str] | None) -> ReadGrant:
        key = (agent, action, None if scopes is None else tuple(scopes))
        got = self.grants.get(key)
        if got is None:
            got = self._compile(agent, action, scopes)
            if len(self.grants) >= self.cache_max:
                self.grants.clear()
            self.grants[key] = got
        return got

    def _compile(self, agent: str, action: str, scopes: Sequence[str] | None) -> ReadGrant:
        v = self.view(agent, action)
        wanted = None if scopes is None else [s for s in scopes if valid_scope(s)]
        include: dict[str, str] = {}  # root -> rule text
        exact: dict[str, str] = {}
        for root, subtree, text in v.allow:
            for s in [root] if wanted is None else wanted:
                if subtree and under(s, root):
                    include.setdefault(s, text)
                elif under(root, s):
                    (include if subtree else exact).setdefault(root, text)
        # keep only outermost roots; exact scopes already inside a subtree add nothing
        include = {r: t for r, t in include.items() if not _covered(r, include, strict=True)}
        exact = {r: t for r, t in exact.items() if not _covered(r, include)}
        exclude: dict[str, str] = {}
        exclude_exact: dict[str, str] = {}
        decisive: set[str] = set()  # deny lines that removed something: the audit names them
        for root, subtree, text in v.deny:
            if subtree:
                gone = [r for r in include if under(r, root)]
                for r in gone:
                    del include[r]
                gone_exact = [r for r in exact if under(r, root)]
                for r in gone_exact:
                    del exact[r]
                if gone or gone_exact:
                    decisive.add(text)
                if gone or _covered(root, include):
                    exclude.setdefault(root, text)
            else:
                if exact.pop(root, None) is not None:
                    decisive.add(text)
                    exclude_exact.setdefault(root, text)
                elif _covered(root, include):
                    exclude_exact.setdefault(root, text)
        exclude = {r: t for r, t in exclude.items() if _covered(r, include)}
        exclude_exact = {r: t for r, t in exclude_exact.items() if _covered(r, include)}
        rules = {
            *include.values(),
            *exact.values(),
            *exclude.values(),
            *exclude_exact.values(),
            *decisive,
        }
        return ReadGrant(
            include=sorted(include),
            exact=sorted(exact),
            exclude=sorted(exclude),
            exclude_exact=sorted(exclude_exact),
            clearance=v.clearance,
            rules=sorted(rules),
        )


def _covered(scope: str, roots: dict[str, str], *, strict: bool = False) -> bool:
    return any(under(scope, r) and not (strict and r == scope) for r in roots)


@dataclass
class Snapshot:
    """Everything one load produced; a reload builds a new one and swaps it in whole."""

    version: int
    revision: str
    model_text: str
    policy: PolicySet
    cache_max: int
    tenants: dict[str, TenantPolicy] = field(default_factory=dict)

    def tenant(self, name: str) -> TenantPolicy:
        got = self.tenants.get(name)
        if got is None:  # tenants without lines still get the built-in own-scope rule
            got = self.tenants[name] = TenantPolicy(
                self.model_text, name, self.policy, self.cache_max
            )
        return got

    def warm(self) -> None:
        """Build every known tenant's enforcer and role closures now, not on a request."""
        for name in self.policy.tenants():
            t = self.tenant(name)
            for member, _ in self.policy.links.get(name, []):
                t.roles.closure(member)


# -- the gate ------------------------------------------------------------------------------------


class CasbinGate:
    """The ``Gate`` port on casbin, plus ``grant`` (read filters) and ``decision`` (audit)."""

    def __init__(
        self,
        source: PolicySource,
        *,
        model: Path | None = None,
        watcher: PolicyWatcher | None = None,
        cache_max: int = 100_000,
    ) -> None:
        self.source, self.watcher, self.cache_max = source, watcher, cache_max
        self.model_path = model or default_model_path()
        self._snap: Snapshot | None = None
        self._version = 0
        self._lock = anyio.Lock()
        self._log = get_logger("membus.policy")

    @classmethod
    def from_file(cls, policy: Path, **kwargs: Any) -> CasbinGate:
        return cls(FileSource(policy), **kwargs)

    @property
    def version(self) -> int:
        """Bumped by every reload; cached decisions belong to one version."""
        return self._version

    # -- loading -------------------------------------------------------------------------------

    async def reload(self) -> int:
        """Load the source now (a new snapshot, warmed off the event loop); returns the version."""
        async with self._lock:
            revision = await self.source.revision()  # before load: never claim to be newer
            text = await self.source.load()
            model_text = await anyio.Path(self.model_path).read_text(encoding="utf-8")
            policy = PolicySet.parse(text)
            snap = Snapshot(self._version + 1, revision, model_text, policy, self.cache_max)
            await anyio.to_thread.run_sync(snap.warm)
            self._snap, self._version = snap, snap.version
            self._log.info("policy.loaded", version=snap.version, lines=len(policy.lines))
            return snap.version

    async def refresh(self) -> bool:
        """Reload if the source changed since the last load; True if it did."""
        snap = self._snap
        if snap is not None and await self.source.revision() == snap.revision:
            return False
        await self.reload()
        return True

    async def _current(self) -> Snapshot:
        if self._snap is None:
            await self.reload()
        assert self._snap is not None
        return self._snap

    async def add_policy(self, *lines: str) -> int:
        """Validate, store, reload here and announce to every other process."""
        PolicySet.parse(list(policy_lines("\n".join(lines))))
        await self.source.add(policy_lines("\n".join(lines)))
        return await self._changed()

    async def remove_policy(self, *lines: str) -> int:
        await self.source.remove(policy_lines("\n".join(lines)))
        return await self._changed()

    async def _changed(self) -> int:
        # Announce as soon as the change is stored, before reloading here: every other process
        # reads the source itself, so making it wait for this one's reload only delays a
        # revocation everywhere else (by a reload, ~0.1 s on a busy host).
        if self.watcher is not None:
            await self.watcher.announce(await self.source.revision())
        return await self.reload()

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow changes from other processes until cancelled (``await tg.start(gate.watch)``)."""
        await self._current()
        if self.watcher is None:
            task_status.started()
            await anyio.sleep_forever()
        else:
            await self.watcher.run(self._refresh_logged, task_status=task_status)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except MembusError as exc:  # a bad edit elsewhere must not kill the watcher
            self._log.error("policy.reload_failed", error=str(exc))

    # -- decisions -----------------------------------------------------------------------------

    async def decision(self, who: Identity, action: Action, scope: str) -> Decision:
        return (await self._current()).tenant(who.tenant).decide(who.agent, action, scope)

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        d = await self.decision(who, action, scope)
        if not d.allowed:
            self._log.info(
                "policy.denied",
                tenant=who.tenant,
                agent=who.agent,
                action=action,
                scope=scope,
                rule=d.rule,
            )
            raise PermissionDenied(who.agent, action, scope, who.tenant)

    async def grant(self, who: Identity, action: Action, scopes: Sequence[str] | None) -> ReadGrant:
        return (await self._current()).tenant(who.tenant).grant(who.agent, action, scopes)

    async def clearance(self, who: Identity) -> int:
        return (await self._current()).tenant(who.tenant).view(who.agent, "recall").clearance
