"""The permission port. Every door of the bus asks the gate; engines decide.

Without a policy the bus is private by default: ``PrivateGate`` lets an agent do everything but
``admin`` in its own ``agent/<self>`` scope and below, and nothing anywhere else. ``OpenGate``
allows everything within the caller's own tenant; it is the explicit open mode
(``PolicyConfig(mode="open")``) for demos and single-agent use. Tenants never mix either way: the
tenant is part of the identity, not of the request. The casbin engine implements the same port.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from membus.core.config import PolicyConfig
from membus.core.envelope import Name, scope_ancestors, validate_scope
from membus.errors import InvalidInput, PermissionDenied

# ``forget`` erases what the caller may also recall (scope and clearance); ``erase`` is the
# data-protection right: erase within its scopes whatever the caller may read
Action = Literal["publish", "recall", "subscribe", "forget", "erase", "admin"]


class Decision(BaseModel):
    """One answer, with the policy line that decided it (None: nothing allowed it)."""

    model_config = ConfigDict(frozen=True)
    allowed: bool
    rule: str | None = None
    hint: str | None = None  # a refusal: how to get the right (shown in the error)


class ReadGrant(BaseModel):
    """What an agent may read, shaped for a store filter (see membus/store/filters.py).

    Readable: ``scope`` under an ``include`` root or equal to an ``exact`` scope, and not under
    an ``exclude`` root nor equal to an ``exclude_exact`` scope, and sensitivity <= clearance.
    ``all_scopes`` lifts the scope part (the open gate); nothing included means nothing readable.
    """

    model_config = ConfigDict(frozen=True)
    include: list[str] = Field(default_factory=list)
    exact: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    exclude_exact: list[str] = Field(default_factory=list)
    clearance: int = Field(default=3, ge=0, le=3)
    all_scopes: bool = False
    rules: list[str] = Field(default_factory=list)  # the policy lines that shaped it (audit)
    hint: str | None = None  # when it leaves something out: how to get the right

    @property
    def empty(self) -> bool:
        return not self.all_scopes and not self.include and not self.exact

    def covers(self, scope: str) -> bool:
        """The scope part of the filter, in Python (for the change feed)."""
        try:
            validate_scope(scope)
        except InvalidInput:
            return False  # confusing strings never match anything
        anc = scope_ancestors(scope)
        if scope in self.exclude_exact or any(a in self.exclude for a in anc):
            return False
        return self.all_scopes or scope in self.exact or any(a in self.include for a in anc)

    def admits(self, scope: str, sensitivity: int) -> bool:
        return sensitivity <= self.clearance and self.covers(scope)


class Identity(BaseModel):
    """Who acts. Every public call carries one; the service derives it from credentials."""

    model_config = ConfigDict(frozen=True)
    tenant: Name
    agent: Name


@runtime_checkable
class Gate(Protocol):
    async def decision(self, who: Identity, action: Action, scope: str) -> Decision:
        """Whether ``who`` may ``action`` on ``scope``, and the rule that decided (for audit)."""
        ...

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        """Raise ``PermissionDenied`` unless ``who`` may ``action`` on ``scope``."""
        ...

    async def grant(self, who: Identity, action: Action, scopes: Sequence[str] | None) -> ReadGrant:
        """What ``who`` may read for ``action`` (recall/subscribe), narrowed to ``scopes``."""
        ...


class OpenGate:
    """The explicit open mode (``PolicyConfig(mode="open")``): every agent may do everything
    inside its own tenant, every other agent's ``agent/<name>`` scopes included. For demos and
    single-agent use; a team of agents needs ``PrivateGate`` (the default) or a policy."""

    async def grant(self, who: Identity, action: Action, scopes: Sequence[str] | None) -> ReadGrant:
        if scopes is None:
            return ReadGrant(all_scopes=True)
        return ReadGrant(include=list(scopes))

    async def decision(self, who: Identity, action: Action, scope: str) -> Decision:
        return Decision(allowed=True, rule="open gate: no policy configured")

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        return None


OWN_ACTIONS: frozenset[str] = frozenset({"publish", "recall", "subscribe", "forget"})
PRIVATE_RULE = "private default: agent/{self}/* only (no policy configured)"


def own_root(who: Identity) -> str:
    """``agent/<name>``: the one subtree an agent owns. A name is one scope segment (no ``/``),
    and ``under`` compares whole segments, so ``agent/al`` never covers ``agent/alice``."""
    return f"agent/{who.agent}"


def private_hint(who: Identity, action: Action) -> str:
    """How to get a right the private default refuses: a policy line, or the open mode."""
    where = "agent/<name>" if action == "admin" else f"{own_root(who)}/..."
    return (
        f"no policy is configured, so agents reach only their own {where} scopes; grant "
        f"shared scopes in a policy file (PolicyConfig(file=...), MEMBUS_POLICY_FILE; a line "
        f"like 'p, {who.agent}, {who.tenant}, team/*, {action}', see policies/README.md), or opt "
        "into the open mode for demos and single-agent use (PolicyConfig(mode='open'), "
        "MEMBUS_POLICY_MODE=open)"
    )


def _under(scope: str, root: str) -> bool:
    return scope == root or scope.startswith(root + "/")


def _valid(scope: str) -> bool:
    try:
        validate_scope(scope)
    except InvalidInput:
        return False
    return True


class PrivateGate:
    """The default without a policy: an agent may publish, recall, subscribe and forget in
    ``agent/<self>`` and below, nothing elsewhere, and no ``admin``. What an agent keeps there
    is read by nobody else, so every sensitivity label is readable to it (clearance 3).

    The same right as the casbin gate's built-in ``agent/{self}/*`` line; shared scopes need a
    policy line (``CasbinGate``) or the explicit open mode (``OpenGate``)."""

    async def decision(self, who: Identity, action: Action, scope: str) -> Decision:
        if action in OWN_ACTIONS and _valid(scope) and _under(scope, own_root(who)):
            return Decision(allowed=True, rule=PRIVATE_RULE)
        return Decision(allowed=False, hint=private_hint(who, action))

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        d = await self.decision(who, action, scope)
        if not d.allowed:
            raise PermissionDenied(who.agent, action, scope, who.tenant, hint=d.hint)

    async def grant(self, who: Identity, action: Action, scopes: Sequence[str] | None) -> ReadGrant:
        root, hint = own_root(who), private_hint(who, action)
        if action not in OWN_ACTIONS:
            return ReadGrant(hint=hint)
        if scopes is None:
            return ReadGrant(include=[root], rules=[PRIVATE_RULE])
        wanted = {s for s in scopes if _valid(s)}
        # a wanted scope inside the own subtree narrows it; one above it narrows to the root
        roots = {
            s if _under(s, root) else root for s in wanted if _under(s, root) or _under(root, s)
        }
        include = sorted(r for r in roots if not any(_under(r, o) and o != r for o in roots))
        left_out = len(include) < len(wanted)
        return ReadGrant(
            include=include,
            rules=[PRIVATE_RULE] if include else [],
            hint=hint if left_out or not include else None,
        )


def default_gate(policy: PolicyConfig) -> Gate:
    """The gate when no policy engine is given: the open mode if the configuration opts into
    it, else private by default."""
    return OpenGate() if policy.mode == "open" else PrivateGate()
