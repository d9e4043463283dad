"""The HTTP wire shared by the service and ``membus.Client``: request bodies and typed errors.

Both sides import this module (it needs neither FastAPI nor httpx), so an error raised in the
service reaches a remote caller as the same ``membus.errors`` type it would get in process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from membus.bus.api import MAX_K
from membus.bus.draft import Draft, Receipt
from membus.core.envelope import Label
from membus.errors import (
    Conflict,
    InvalidInput,
    MembusError,
    NotCommitted,
    NotFound,
    Parked,
    PermissionDenied,
    StoreLocked,
    Unavailable,
)
from membus.recall.heat import Access
from membus.store.port import Hit, Memory

MAX_BATCH: Final = 1000
# how long one request may wait for writers (``wait``); a client's timeout must exceed it
MAX_WAIT_S: Final = 60.0
DEFAULT_HTTP_WAIT_S: Final = 30.0  # as Agent.publish (membus.stream.committed)

# -- errors the service adds to membus.errors -----------------------------------------------------


class Unauthenticated(MembusError):
    """No API key, or one the service does not know."""

    code = "unauthenticated"


class TooLarge(InvalidInput):
    """The request body exceeds the service's limit; split the batch."""

    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "limit": self.limit}


class RetryLater(Unavailable):
    """Unavailable for now, with how long to wait (sent as ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: float, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after_s, self.reason = retry_after_s, reason

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "retry_after_s": self.retry_after_s}
        return {**out, "reason": self.reason} if self.reason else out


class RateLimited(RetryLater):
    """This agent sent more requests than its rate allows."""

    code = "rate_limited"


class Backpressure(RetryLater):
    """Writers lag behind this tenant's stream; nothing was published. A 503, code unavailable."""


STATUS: Final[dict[str, int]] = {
    "invalid_input": 400,
    "dead_letter_not_found": 404,
    "not_found": 404,
    "unauthenticated": 401,
    "permission_denied": 403,
    "conflict": 409,
    "store_locked": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    # not 503: that says "nothing was done, retry", and these events are published already
    "not_committed": 504,
}


def status_of(exc: MembusError) -> int:
    """The HTTP status of an error: by its code, else by the nearest known base class."""
    if exc.code in STATUS:
        return STATUS[exc.code]
    for base, status in (
        (InvalidInput, 400),
        (PermissionDenied, 403),
        (Conflict, 409),
        (Unavailable, 503),
        (Unauthenticated, 401),
    ):
        if isinstance(exc, base):
            return status
    return 500


def error_body(exc: MembusError) -> dict[str, Any]:
    """``{"error": {"code", "message", ...}}``; a denial also names agent, action and scope."""
    detail = exc.to_dict()
    if isinstance(exc, PermissionDenied):
        detail.update(agent=exc.agent, action=exc.action, scope=exc.scope, tenant=exc.tenant)
        if exc.hint:
            detail["hint"] = exc.hint
    return {"error": detail}


def error_from_body(status: int, body: Any) -> MembusError:
    """Rebuild the typed error from a response (the client side of ``error_body``)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return _by_status(status, f"HTTP {status}: {str(body)[:200]}")
    code, msg = str(detail.get("code", "")), str(detail.get("message", ""))
    retry = float(detail.get("retry_after_s") or 1.0)
    exc: MembusError
    if code == "invalid_input":
        exc = InvalidInput(msg, list(detail.get("problems") or []))
    elif code == "not_found":
        exc = NotFound(msg, list(detail.get("problems") or []))
    elif code == "too_large":
        exc = TooLarge(int(detail.get("limit") or 0))
    elif code == "permission_denied":
        d = {k: str(detail.get(k) or "") for k in ("agent", "action", "scope", "tenant")}
        hint = detail.get("hint")
        exc = PermissionDenied(
            d["agent"], d["action"], d["scope"], d["tenant"], str(hint) if hint else None
        )
    elif code == "unauthenticated":
        exc = Unauthenticated(msg)
    elif code == "rate_limited":
        exc = RateLimited(msg, retry, str(detail.get("reason") or ""))
    elif code == "unavailable" and detail.get("reason") == "backpressure":
        exc = Backpressure(msg, retry, "backpressure")
    elif code == "unavailable":
        exc = Unavailable(msg)
    elif code == "not_committed":
        ids = [str(i) for i in detail.get("event_ids") or []]
        exc = NotCommitted(msg, ids, str(detail.get("cause") or ""))
    elif code == "parked":
        rows = [r for r in detail.get("parked") or [] if isinstance(r, dict)]
        exc = Parked(
            [(str(r.get("event_id")), str(r.get("reason")), str(r.get("error"))) for r in rows]
        )
    elif code == "store_locked":
        exc = StoreLocked(msg)
    elif code == "conflict":
        exc = Conflict(msg)
    else:
        exc = _by_status(status, msg)
        exc.code = code or exc.code  # keep an unknown code visible to the caller
    return exc


def _by_status(status: int, msg: str) -> MembusError:
    if status in (400, 404, 405, 422):
        return InvalidInput(msg)
    if status == 401:
        return Unauthenticated(msg)
    if status == 409:
        return Conflict(msg)
    if status in (429, 502, 503, 504):
        return Unavailable(msg)
    return MembusError(msg)


# -- request and response bodies ------------------------------------------------------------------


class _Body(BaseModel):
    # forbid: a typo (or an ``agent``/``tenant`` field) is an error, never silently dropped
    model_config = ConfigDict(extra="forbid")


_WAIT = Field(
    default=False,
    description="answer only once writers committed (searchable): 504 not_committed after "
    "timeout_s (the publish happened: do not resend), 400 parked if dead-lettered",
)
_WAIT_TIMEOUT = Field(default=DEFAULT_HTTP_WAIT_S, gt=0, le=MAX_WAIT_S)


class PublishRequest(Draft):
    """One draft; ``wait``: answer once it is searchable (read-your-writes)."""

    wait: bool = _WAIT
    timeout_s: float = _WAIT_TIMEOUT

    def draft(self) -> Draft:
        return Draft.model_validate(self.model_dump(exclude={"wait", "timeout_s"}))


class PublishBatch(_Body):
    """Several drafts, published all or nothing in one round trip to Redis."""

    drafts: list[Draft] = Field(min_length=1, max_length=MAX_BATCH)
    wait: bool = _WAIT
    timeout_s: float = _WAIT_TIMEOUT


class Receipts(BaseModel):
    receipts: list[Receipt]


class RecallRequest(_Body):
    """Top-k memories by meaning, within the scopes the caller may read."""

    query: str = Field(description="natural-language query; embedded like the memories")
    k: int = Field(default=5, ge=1, le=MAX_K)
    scopes: list[str] | None = Field(default=None, description="subtree roots; None: all readable")
    kinds: list[str] | None = None
    subjects: list[str] | None = None
    agents: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    as_of: datetime | None = Field(
        default=None, description="what held at this past time (superseded versions included)"
    )
    working: bool = Field(
        default=False,
        description="also recall what was just published and is not consolidated yet "
        "(hits flagged working)",
    )
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="drop hits scoring below this (scores lie in [0, 1]); "
        "None: the server's default (RankingConfig.min_score)",
    )


class Hits(BaseModel):
    hits: list[Hit]


class AccessRequest(_Body):
    """Recall statistics of these memories (only those the caller may recall are answered)."""

    memory_ids: list[str] = Field(min_length=1, max_length=MAX_K)


class AccessStats(BaseModel):
    access: dict[str, Access]


class ForgetRequest(_Body):
    """Erase what matches every criterion given, within the scopes the caller may forget in."""

    memory_ids: list[str] | None = None
    subject: str | None = None
    agent: str | None = Field(default=None, description="erase what this agent contributed")
    scope: str | None = Field(default=None, description="that scope and everything below")


class RetractRequest(_Body):
    """Withdraw a memory (``memory_id``), or every version of a key (``scope`` + ``subject`` +
    ``key``), through the event log."""

    memory_id: str | None = None
    scope: str | None = Field(default=None, description="the key's scope")
    subject: str | None = None
    key: str | None = None
    reason: str | None = Field(default=None, description="the retraction's text")


class UpdateRequest(_Body):
    """A new version of a memory; ``metadata``/``label`` left out keep the memory's own."""

    content: str = Field(description="the new text")
    metadata: dict[str, Any] | None = None
    label: Label | None = None


class Memories(BaseModel):
    """Memories, newest first (the versions of a history)."""

    memories: list[Memory]


class Scopes(BaseModel):
    """Scopes holding at least one memory the caller may read, sorted."""

    scopes: list[str]


class WhoAmI(BaseModel):
    agent: str
    tenant: str
    operator: bool = False


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="stable, for machines: invalid_input, permission_denied, …")
    message: str


class ErrorResponse(BaseModel):
    """Every error the service returns has this shape."""

    error: ErrorDetail


_ERR: Final[dict[str, Any]] = {"model": ErrorResponse}
# for OpenAPI: what each status means on this API
ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {**_ERR, "description": "invalid_input: a field is missing, unknown or ill-formed"},
    401: {**_ERR, "description": "unauthenticated: missing or unknown API key"},
    403: {**_ERR, "description": "permission_denied: the gate refused this agent"},
    413: {**_ERR, "description": "too_large: the request body exceeds the limit"},
    429: {**_ERR, "description": "rate_limited: retry after the Retry-After seconds"},
    503: {**_ERR, "description": "unavailable: backpressure or Redis down; see Retry-After"},
}
# routes that take a memory id: absent and not readable are the same 404
ERRORS_BY_ID: Final[dict[int | str, dict[str, Any]]] = {
    **ERRORS,
    404: {
        **_ERR,
        "description": "not_found: no memory by that id that this agent may see (absent and "
        "hidden memories get the same answer)",
    },
}
# what a waiting publish adds
PUBLISH_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    **ERRORS,
    400: {**_ERR, "description": "invalid_input, or parked: writers dead-lettered it (wait)"},
    504: {**_ERR, "description": "not_committed: published, not committed in time (wait)"},
}


# -- context for the prompt ---------------------------------------------------------------------


class ContextRequest(_Body):
    """The memories for this agent's prompt within a token budget (``Agent.context``); tokens
    are counted by the service's default counter (``membus.estimate_tokens``)."""

    query: str | None = Field(default=None, description="what the turn is about; None: no recall")
    budget_tokens: int = Field(ge=1, le=1_000_000, description="tokens the render may take")
    subjects: list[str] | None = Field(
        default=None, description="subjects whose current keyed facts (profile) to include"
    )
    scopes: list[str] | None = Field(default=None, description="subtree roots; None: all readable")
    kinds: list[str] | None = None
    agents: list[str] | None = None
    working: bool = Field(default=True, description="include just-published, uncommitted memory")


class PinRequest(_Body):
    """Pin or unpin one memory (an event in the memory's scope; the publish right there)."""

    memory_id: str
