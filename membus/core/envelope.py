"""The event envelope: what an agent publishes, versioned and strictly validated at the door.

Identifiers are restricted to a small ASCII alphabet on purpose: scopes are matched by the
permission layer and used in Redis keys, so ``team/a/../b``, ``team/a*``, trailing slashes or
unicode look-alikes are rejected here rather than interpreted anywhere later.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from ulid import ULID

from membus.errors import InvalidInput

SCHEMA_VERSION: Final = 1

Label = Literal["public", "internal", "confidential", "restricted"]
# Sensitivity order: an agent recalls a memory only if its clearance reaches the label.
LABELS: Final[dict[str, int]] = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}

MAX_CONTENT_BYTES: Final = 16 * 1024
MAX_METADATA_BYTES: Final = 8 * 1024
MAX_METADATA_DEPTH: Final = 4
MAX_SCOPE_SEGMENTS: Final = 8
# How far ahead of the server's clock ``created_at`` may be: ordinary skew between the publisher's
# and the server's clocks, not enough to stay the current version of a key for long.
MAX_FUTURE_SKEW_S: Final = 120.0

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# Control characters other than tab and newline have no business in agent text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be 1-64 chars of lowercase ASCII letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_scope(value: str) -> str:
    segments = value.split("/")
    if len(segments) > MAX_SCOPE_SEGMENTS:
        raise ValueError(f"has more than {MAX_SCOPE_SEGMENTS} segments")
    for seg in segments:
        if not _NAME.fullmatch(seg):
            raise ValueError(
                "must be '/'-separated segments of lowercase ASCII letters, digits, '_' or '-' "
                f"(no empty, '.', '..', wildcard or non-ASCII segments); bad segment {seg!r}"
            )
    return value


def _check_ref(value: str) -> str:
    if not _REF.fullmatch(value):
        raise ValueError("must be 1-128 chars of ASCII letters, digits, '_', '.', ':' or '-'")
    return value


def _check_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains control characters")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Scope = Annotated[str, AfterValidator(_check_scope)]
Ref = Annotated[str, AfterValidator(_check_ref)]


def scope_ancestors(scope: str) -> list[str]:
    """``team/s/t1`` -> ``[team, team/s, team/s/t1]``: lets one indexed field match a subtree."""
    parts = scope.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def new_event_id() -> str:
    """ULIDs sort by creation time, so ids double as a coarse order."""
    return str(ULID())


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(x) for x in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(x) for x in value)
    return False


_PLAIN = (str, int, bool, type(None))  # exact types: JSON turns them back into themselves


def _flat(value: dict[str, Any]) -> bool:
    """One level of plain JSON scalars and finite floats, under string keys: the common case,
    which needs neither the walks for depth and non-finite numbers nor a round trip to make it
    canonical (a subclass, a tuple or a datetime is not plain: JSON would change it)."""
    for k, x in value.items():
        if type(k) is not str:
            return False
        t = type(x)
        if t is float:
            if not math.isfinite(x):
                return False
        elif t not in _PLAIN:
            return False
    return True


class Event(BaseModel):
    """One observation published to the bus."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    v: int = Field(default=SCHEMA_VERSION, description="schema version")
    # a ULID: Crockford base32, first char 0-7 (an 8 or above would overflow the timestamp)
    id: Annotated[str, Field(default_factory=new_event_id, pattern=_ULID.pattern)]
    tenant: Name
    scope: Scope
    agent: Name
    # anchored: pydantic searches a pattern rather than full-matching it
    kind: Annotated[str, Field(default="observation", pattern=rf"^{_KIND.pattern}$")]
    content: Annotated[str, Field(min_length=1), AfterValidator(_check_text)]
    subject: Annotated[str, Field(max_length=256), AfterValidator(_check_text)] | None = None
    key: Annotated[str, Field(max_length=128), AfterValidator(_check_text)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: Label = "public"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    causation_id: Ref | None = None
    correlation_id: Ref | None = None

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema version {v}; this build reads {SCHEMA_VERSION}")
        return v

    @field_validator("content")
    @classmethod
    def _content_size(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is blank")
        if len(v.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
            raise ValueError(f"exceeds {MAX_CONTENT_BYTES} bytes")
        return v

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must be timezone-aware")
        return v.astimezone(UTC)

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            raw = orjson.dumps(v)
        except TypeError as exc:
            raise ValueError(f"must be JSON-serialisable ({exc})") from None
        flat = _flat(v)  # False for a non-finite float too: the walks below name the problem
        if not flat and _non_finite(v):
            raise ValueError("contains NaN or Infinity, which JSON cannot carry")
        if len(raw) > MAX_METADATA_BYTES:
            raise ValueError(f"exceeds {MAX_METADATA_BYTES} bytes as JSON")
        if not flat and _depth(v) > MAX_METADATA_DEPTH:
            raise ValueError(f"nests deeper than {MAX_METADATA_DEPTH} levels")
        for k in v:
            if len(k) > 64:
                raise ValueError(f"key {k[:20]!r}… is longer than 64 chars")
        if flat:  # already what the wire carries
            return v
        # keep what the wire carries (tuples -> lists, datetimes -> strings), so it round-trips
        canonical: dict[str, Any] = orjson.loads(raw)
        return canonical

    # -- wire format -------------------------------------------------------------------------

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, compact): stable bytes for signing and dedup."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        # pydantic parses and validates in one pass (~40% faster than orjson + model_validate)
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise InvalidInput(f"event is not valid JSON: {exc.errors()[0]['msg']}") from None
            if any(e["type"] == "model_type" for e in exc.errors()):
                raise InvalidInput("event must be a JSON object") from None
            raise invalid_from(exc, "event") from None
        except UnicodeError as exc:
            raise InvalidInput(f"event is not valid UTF-8: {exc}") from None

    @classmethod
    def build(cls, **fields: Any) -> Event:
        """Validate, turning pydantic's error into our typed ``InvalidInput``."""
        return cls.validate_dict(fields)

    @classmethod
    def validate_dict(cls, data: dict[str, Any]) -> Event:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_from(exc, "event") from None

    @property
    def ancestors(self) -> list[str]:
        return scope_ancestors(self.scope)


def future_dated(created_at: datetime, now: float, clock: str) -> str | None:
    """Why ``created_at`` is too far ahead of ``now`` (epoch seconds by ``clock``), or None.

    Only the future is bounded: a version dated ahead of every real update would stay current
    for ever; dates in the past are backfill (imports, old chat logs) and stay allowed."""
    ahead = created_at.timestamp() - now
    if ahead <= MAX_FUTURE_SKEW_S:
        return None
    bound = datetime.fromtimestamp(now + MAX_FUTURE_SKEW_S, UTC).isoformat()
    return (
        f"is {ahead:.0f} s ahead of the {clock} clock; it may be at most "
        f"{MAX_FUTURE_SKEW_S:.0f} s in the future (latest allowed now: {bound})"
    )


def check_created_at(event: Event, now: float) -> None:
    """Refuse ``event`` at the door when its ``created_at`` is dated too far in the future."""
    why = future_dated(event.created_at, now, "server's")
    if why is not None:
        raise InvalidInput(
            f"invalid event: created_at {event.created_at.isoformat()} {why}",
            [{"field": "created_at", "reason": why}],
        )


def invalid_from(exc: ValidationError, what: str) -> InvalidInput:
    problems = [
        {"field": ".".join(str(p) for p in err["loc"]) or what, "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{p['field']}: {p['reason']}" for p in problems)
    return InvalidInput(f"invalid {what}: {summary}", problems)


def validate_name(value: str, field: str) -> str:
    try:
        return _check_name(value)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", [{"field": field, "reason": str(exc)}]) from None


def validate_scope(value: str, field: str = "scope") -> str:
    try:
        return _check_scope(value)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", [{"field": field, "reason": str(exc)}]) from None
