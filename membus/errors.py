"""One error root with a short tree, so callers can catch by what they must do about it."""

from __future__ import annotations

from typing import Any


class MembusError(Exception):
    """Root of every error membus raises on purpose. ``code`` is stable for machines."""

    code = "membus_error"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self)}


class InvalidInput(MembusError):
    """The caller sent something we will not accept; ``problems`` names each field and why."""

    code = "invalid_input"

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems: list[dict[str, str]] = problems or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": self.problems}


class NotFound(InvalidInput):
    """No such thing that the caller may see: absent and not readable get this same answer, so
    an id cannot probe what the caller may not read."""

    code = "not_found"


class PermissionDenied(MembusError):
    """The acting agent may not do this; names agent, action and scope."""

    code = "permission_denied"

    def __init__(
        self, agent: str, action: str, scope: str, tenant: str = "", hint: str | None = None
    ) -> None:
        where = f" in tenant {tenant!r}" if tenant else ""
        how = f": {hint}" if hint else ""  # how to get the right, when the gate can say
        super().__init__(f"agent {agent!r} may not {action} scope {scope!r}{where}{how}")
        self.agent, self.action, self.scope, self.tenant = agent, action, scope, tenant
        self.hint = hint


class Unavailable(MembusError):
    """A backing service (Redis, Qdrant, an embedder) cannot be reached or timed out. Retry."""

    code = "unavailable"


class Conflict(MembusError):
    """The request clashes with existing state (e.g. a store built for another embedder)."""

    code = "conflict"


class StoreLocked(Conflict):
    """An embedded store is owned by another process (Qdrant Edge allows one per store)."""

    code = "store_locked"
