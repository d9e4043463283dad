"""The permission port. Every door of the bus asks the gate; engines decide.

``OpenGate`` allows everything within the caller's own tenant (tenants never mix: the tenant is
part of the identity, not of the request). The casbin engine implements the same port.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from membus.envelope import Name

Action = Literal["publish", "recall", "subscribe", "forget", "admin"]


class Identity(BaseModel):
    """Who acts. Every public call carries one; the service derives it from credentials."""

    model_config = ConfigDict(frozen=True)
    tenant: Name
    agent: Name


@runtime_checkable
class Gate(Protocol):
    async def check(self, who: Identity, action: Action, scope: str) -> None:
        """Raise ``PermissionDenied`` unless ``who`` may ``action`` on ``scope``."""
        ...

    async def readable(
        self, who: Identity, action: Action, scopes: Sequence[str] | None
    ) -> list[str] | None:
        """The scopes ``who`` may read among ``scopes`` (None: every scope it may read).

        Returns None only when nothing restricts the caller within its tenant.
        """
        ...


class OpenGate:
    """No policy: every agent may do everything inside its own tenant."""

    async def check(self, who: Identity, action: Action, scope: str) -> None:
        return None

    async def readable(
        self, who: Identity, action: Action, scopes: Sequence[str] | None
    ) -> list[str] | None:
        return list(scopes) if scopes is not None else None
