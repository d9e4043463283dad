"""The HTTP wire shared by the service and ``membus.Client``: request bodies and typed errors.

Both sides import this module (it needs neither FastAPI nor httpx), so an error raised in the
service reaches a remote caller as the same ``membus.errors`` type it would get in process.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from membus.bus.api import MAX_K
from membus.bus.draft import Draft, Receipt
from membus.core.envelope import (
    MAX_CONTENT_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_SCOPE_SEGMENTS,
    Label,
    Name,
    Scope,
)
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


# -- what the schema states: each type validates as the bus does and says so in OpenAPI ----------

_SEGMENT = "[a-z0-9][a-z0-9_-]{0,63}"
SCOPE_PATTERN: Final = rf"^{_SEGMENT}(/{_SEGMENT}){{0,{MAX_SCOPE_SEGMENTS - 1}}}$"
_SCOPE_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": SCOPE_PATTERN,
    "maxLength": 65 * MAX_SCOPE_SEGMENTS - 1,
}
# control characters other than tab and newline are refused in agent text (core.envelope)
_NO_CONTROL = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
_NON_BLANK_TEXT = r"^[^\x00-\x08\x0b-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0b-\x1f\x7f]*$"
# RFC 3339 as OpenAPI's date-time means it; a missing offset is read as the bus reads it (UTC)
_DATE_TIME = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)?", re.ASCII
)


def _date_time(value: Any) -> Any:
    # pydantic alone also takes numbers (epoch seconds) and bare dates: not what the schema says
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


def _uuid(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("is not a memory id (a UUID)") from None
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is blank")
    return value


DateTime = Annotated[datetime, BeforeValidator(_date_time)]
WireScope = Annotated[Scope, WithJsonSchema(_SCOPE_SCHEMA)]
MemoryId = Annotated[
    str, AfterValidator(_uuid), WithJsonSchema({"type": "string", "format": "uuid"})
]
QueryText = Annotated[
    str,
    AfterValidator(_non_blank),
    WithJsonSchema({"type": "string", "pattern": r"\S", "minLength": 1}),
]
Content = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CONTENT_BYTES,
            "pattern": _NON_BLANK_TEXT,
            "description": f"non-blank text, at most {MAX_CONTENT_BYTES} bytes as UTF-8, "
            "no control characters but tab and newline",
        }
    ),
]
Kind = Annotated[str, WithJsonSchema({"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"})]
Subject = Annotated[
    str, WithJsonSchema({"type": "string", "maxLength": 256, "pattern": _NO_CONTROL})
]
Key = Annotated[str, WithJsonSchema({"type": "string", "maxLength": 128, "pattern": _NO_CONTROL})]
# a draft's fields are stated here but checked by the bus, so a remote publish fails with the
# very error an in-process one does (tests/test_client.py)
DraftScope = Annotated[str, WithJsonSchema(_SCOPE_SCHEMA)]
DraftRef = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"})
]


WireName = Annotated[
    Name, WithJsonSchema({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"})
]
POSITION_PATTERN: Final = r"^(0|\$|\d{1,20}(-\d{1,20})?)$"


def _position(value: str) -> str:
    if not re.fullmatch(POSITION_PATTERN, value):
        raise ValueError(
            "must be '$' (now), '0' (the beginning) or a stream id like 1700000000000-0"
        )
    return value


# where a change feed starts: after this position
Position = Annotated[
    str, AfterValidator(_position), WithJsonSchema({"type": "string", "pattern": POSITION_PATTERN})
]


METADATA_NUMBER_BOUND: Final = 2**63


def _bounded_numbers(value: Any) -> Any:
    """Refuse metadata numbers beyond ±2**63, as the schema states: past that, a number is an
    integer by value, which the event's JSON cannot carry when it is written as one."""
    if isinstance(value, dict):
        for x in value.values():
            _bounded_numbers(x)
    elif isinstance(value, list):
        for x in value:
            _bounded_numbers(x)
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and abs(value) > METADATA_NUMBER_BOUND
    ):
        raise ValueError(f"holds a number beyond ±2**63: {value!r:.40}")
    return value


def _json_value(depth: int) -> dict[str, Any]:
    """A metadata value nesting at most ``depth`` more containers (core.envelope's limits)."""
    scalars: list[dict[str, Any]] = [
        {"type": "string"},
        {"type": "boolean"},
        {"type": "null"},
        # JSON Schema tells 1e300 from an integer by value only, and orjson carries 64-bit
        # integers: one bound for every number (``_bounded_numbers`` checks it at the door)
        {"type": "number", "minimum": -METADATA_NUMBER_BOUND, "maximum": METADATA_NUMBER_BOUND},
    ]
    if depth == 0:
        return {"anyOf": scalars}
    inner = _json_value(depth - 1)
    return {
        "anyOf": [
            *scalars,
            {"type": "array", "items": inner},
            {"type": "object", "additionalProperties": inner},
        ]
    }


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_bounded_numbers),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"maxLength": 64},
            "additionalProperties": _json_value(MAX_METADATA_DEPTH - 1),
            "description": f"JSON, at most {MAX_METADATA_BYTES} bytes, nesting at most "
            f"{MAX_METADATA_DEPTH} levels, keys at most 64 characters",
        }
    ),
]


class WireDraft(Draft):
    """A ``Draft`` as the HTTP API takes it: the schema states what the bus validates (the bus
    checks the draft again, so in-process callers get the same answers)."""

    content: Content
    scope: DraftScope | None = None
    kind: Kind = "observation"
    subject: Subject | None = None
    key: Key | None = None
    metadata: Metadata = Field(default_factory=dict)
    created_at: DateTime | None = Field(
        default=None,
        description="when it was observed (default: now); at most 120 s ahead of the server",
    )
    causation_id: DraftRef | None = None
    correlation_id: DraftRef | None = None


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


class PublishRequest(WireDraft):
    """One draft; ``wait``: answer once it is searchable (read-your-writes)."""

    wait: bool = _WAIT
    timeout_s: float = _WAIT_TIMEOUT

    def draft(self) -> Draft:
        return Draft.model_validate(self.model_dump(exclude={"wait", "timeout_s"}))


class PublishBatch(_Body):
    """Several drafts, published all or nothing in one round trip to Redis."""

    drafts: list[WireDraft] = Field(min_length=1, max_length=MAX_BATCH)
    wait: bool = _WAIT
    timeout_s: float = _WAIT_TIMEOUT


class Receipts(BaseModel):
    receipts: list[Receipt]


class RecallRequest(_Body):
    """Top-k memories by meaning, within the scopes the caller may read."""

    query: QueryText = Field(description="natural-language query; embedded like the memories")
    k: int = Field(default=5, ge=1, le=MAX_K)
    scopes: list[WireScope] | None = Field(
        default=None, description="subtree roots; None: all readable"
    )
    kinds: list[str] | None = None
    subjects: list[str] | None = None
    agents: list[str] | None = None
    since: DateTime | None = None
    until: DateTime | None = None
    as_of: DateTime | None = Field(
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

    memory_ids: list[MemoryId] = Field(min_length=1, max_length=MAX_K)


class AccessStats(BaseModel):
    access: dict[str, Access]


class ForgetRequest(_Body):
    """Erase what matches every criterion given (at least one), within the scopes the caller
    may forget in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [f], "properties": {f: {"not": {"type": "null"}}}}
                for f in ("memory_ids", "subject", "agent", "scope")
            ]
        },
    )
    memory_ids: list[MemoryId] | None = Field(default=None, min_length=1)
    subject: str | None = None
    agent: WireName | None = Field(default=None, description="erase what this agent contributed")
    scope: WireScope | None = Field(default=None, description="that scope and everything below")


class RetractRequest(_Body):
    """Withdraw a memory (``memory_id``), or every version of a key (``scope`` + ``subject`` +
    ``key``), through the event log."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # either a memory or a key, as retract() checks
            "oneOf": [
                {
                    "required": ["memory_id"],
                    "properties": {
                        "memory_id": {"not": {"type": "null"}},
                        "subject": {"type": "null"},
                        "key": {"type": "null"},
                    },
                },
                {
                    "required": ["scope", "subject", "key"],
                    "properties": {
                        "scope": {"not": {"type": "null"}},
                        "subject": {"not": {"type": "null"}},
                        "key": {"not": {"type": "null"}},
                        "memory_id": {"type": "null"},
                    },
                },
            ]
        },
    )
    memory_id: MemoryId | None = None
    scope: WireScope | None = Field(default=None, description="the key's scope")
    subject: Subject | None = None
    key: Key | None = None
    reason: Content | None = Field(default=None, description="the retraction's text")


class UpdateRequest(_Body):
    """A new version of a memory; ``metadata``/``label`` left out keep the memory's own."""

    content: Content = Field(description="the new text")
    metadata: Metadata | None = None
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
    scopes: list[WireScope] | None = Field(
        default=None, description="subtree roots; None: all readable"
    )
    kinds: list[str] | None = None
    agents: list[str] | None = None
    working: bool = Field(default=True, description="include just-published, uncommitted memory")


class PinRequest(_Body):
    """Pin or unpin one memory (an event in the memory's scope; the publish right there)."""

    memory_id: MemoryId
