"""The permission port. Every door of the bus asks the gate; engines decide.

``OpenGate`` allows everything within the caller's own tenant (tenants never mix: the tenant is
part of the identity, not of the request). The casbin engine implements the same port.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from membus.core.envelope import Name, scope_ancestors, validate_scope
from membus.errors import InvalidInput

# ``forget`` erases what the caller may also recall (scope and clearance); ``erase`` is the
# data-protection right: erase within its scopes whatever the caller may read
Action = Literal["publish", "recall", "subscribe", "forget", "erase", "admin"]


class Decision(BaseModel):
    """One answer, with the policy line that decided it (None: nothing allowed it)."""

    model_config = ConfigDict(frozen=True)
    allowed: bool
    rule: str | None = None


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
    """No policy: every agent may do everything inside its own tenant."""

    async def grant(self, who: Identity, action: Action, scopes: Sequence[str] | None) -> ReadGrant:
        if scopes is None:
            return ReadGrant(all_scopes=True)
        return ReadGrant(include=list(scopes))

    async def decision(self, who: Identity, action: Action, scope: str) -> Decision:
        return Decision(allowed=True, rule="open gate: no policy configured")

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        return None
