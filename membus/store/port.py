"""The store port: where consolidated memories live, engine-neutral.

Layout (see README, "Architecture"): one physical collection per embedding space. Tenants are a
payload field indexed with ``is_tenant`` (Qdrant co-locates a tenant's points and plans filtered
search per tenant), scopes are a keyword field plus the list of their ancestors (so a subtree
``team/support`` matches ``team/support/tier1`` with one indexed condition). Thousands of tenants
or scopes therefore cost payload-index entries, not collections.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from membus.core.envelope import LABELS, Event, scope_ancestors
from membus.embed.port import Vectors
from membus.errors import InvalidInput
from membus.store.filters import RecallFilter as RecallFilter  # re-exported for engines and callers
from membus.store.seal import SEALED, Seal, aad_of, unseal

if TYPE_CHECKING:
    from membus.store.formula import Boost

# Fixed namespace: point ids are uuid5(namespace, tenant/event id), identical in every process,
# which is what makes redelivered events overwrite rather than duplicate.
POINT_NAMESPACE = uuid.UUID("5b0f7a52-4c8e-4c59-9d6b-6d1f0c7f3a10")
_POINT_NS = POINT_NAMESPACE.bytes

INDEXED_KEYWORDS = (
    "scope",
    "scope_path",
    "kind",
    "subject",
    "key",
    "agents",
    "slot",
    "numbers",
)
# Each clearance below the highest sees a key's history as if the versions above it did not
# exist: ``valid_to_<c>_ts`` is when a version stops holding for a reader of clearance c (the next
# version at or below c, or its expiry); ``valid_to_ts`` is that for the highest clearance.
LEVELS = len(LABELS)  # clearances 0 .. LEVELS - 1
VALID_TO_AT = tuple(f"valid_to_{c}_ts" for c in range(LEVELS - 1))
# the lowest label among a keyed version's successors (absent: none): a reader of clearance c
# sees the version as superseded (``history``) only if one of them is at or below c
SUCCESSOR = "successor"
# float payload fields with a range index; ``sensitivity`` is an integer index of its own
INDEXED_FLOATS = ("created_ts", "valid_from_ts", "valid_to_ts", *VALID_TO_AT)
INDEXED_NUMBERS = (*INDEXED_FLOATS, "sensitivity")
# ``valid_to_ts`` of a memory that is neither superseded nor expiring: recall's default filter is
# ``valid_to_ts > now``, one range condition for "current and not expired"
OPEN_END = 1e12


@dataclass(frozen=True, slots=True)
class Levels:
    """A version's validity per clearance below the highest (see ``VALID_TO_AT``)."""

    valid_to: tuple[datetime | None, ...]  # one per clearance 0 .. LEVELS - 2
    successor: int | None  # the lowest label of a later version; None: it is the newest

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f: (t.timestamp() if t else OPEN_END)
            for f, t in zip(VALID_TO_AT, self.valid_to, strict=True)
        }
        if self.successor is not None:
            out[SUCCESSOR] = self.successor
        return out

    def matters(self, valid_to: datetime | None) -> bool:
        """Whether some clearance sees the version otherwise than the highest one does."""
        return any(t != valid_to for t in self.valid_to) or bool(self.successor)

    @classmethod
    def of_payload(cls, payload: Mapping[str, Any]) -> Levels | None:
        """None when every clearance sees the one validity, and for a payload written before
        per-clearance validity existed (it keeps its ``valid_to``)."""
        if VALID_TO_AT[0] not in payload:
            return None
        ends = [payload.get(f, OPEN_END) for f in VALID_TO_AT]
        if SUCCESSOR not in payload and all(t == payload.get("valid_to_ts") for t in ends):
            return None
        return cls(
            tuple(None if t >= OPEN_END else datetime.fromtimestamp(t, UTC) for t in ends),
            payload.get(SUCCESSOR),
        )


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# the numbers of a memory's text, as one keyword: near-duplicates must have the same numbers
# ("floor 3" and "floor 4" are different facts), so the near-duplicate search filters on it
NUMBERS = "numbers"
NO_NUMBERS = "-"


def numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def numbers_key(text: str) -> str:
    """One indexed keyword per distinct list of numbers in ``text``."""
    return " ".join(numbers(text)) or NO_NUMBERS


# the payload field ``Store.browse`` orders by, newest first: when a version began to hold
# (a keyed fact's ``created_at`` is when its key was first recorded; each version has its own
# ``valid_from``), a range-indexed float
BROWSE_ORDER = "valid_from_ts"

# a memory's ``metadata["importance"]`` as a number in [0, 1], top-level so that an engine can rank
# by it (``membus.store.formula``); absent when the metadata holds none or not a number
IMPORTANCE = "importance"


def importance_of(metadata: Mapping[str, Any]) -> float | None:
    """``metadata["importance"]`` clamped to [0, 1]; None when absent or not a finite number
    (metadata is free-form: a string there must not break recall)."""
    value = metadata.get(IMPORTANCE)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))


class StoreMeta(BaseModel):
    """Recorded with the collection so a store built for one embedder refuses another."""

    model_config = ConfigDict(frozen=True)
    embedder: str
    dim: int
    layout: int = 2  # 2: validity interval and slot fields (consolidation)
    # the lexical sparse vector's encoder (``membus.store.sparse.NAME``) for hybrid recall; None:
    # the store holds dense vectors only. A store recorded before this field existed has none.
    sparse: str | None = "bm25-en-snowball-v1"


class Memory(BaseModel):
    """A committed memory and its provenance."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    scope: str
    kind: str
    content: str
    subject: str | None = None
    key: str | None = None
    agents: list[str] = Field(default_factory=list)
    source_events: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    sensitivity: int = Field(default=0, ge=0, le=3)  # LABELS value of the source event
    # consolidation: the ledger slot this memory materialises, and when it held (valid_to None:
    # current; a superseded version or an expiring memory has one)
    slot: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    history: bool = False  # a superseded version of a keyed fact
    # crypto-shredding (``membus.store.seal``): set by ``SealedStore`` on the way in, so that
    # ``to_payload`` seals; on the way out, the sealed document of a payload not yet opened.
    # Read through ``_private``: the writer's fast constructor leaves no private state at all.
    _seal: Seal | None = PrivateAttr(default=None)
    _sealed: str | None = PrivateAttr(default=None)
    # a keyed version's validity per clearance (set by consolidation, read back from the store):
    # ``seen_by`` projects the memory to one clearance. Private: never serialised to a caller.
    _levels: Levels | None = PrivateAttr(default=None)

    def _private(self, name: str) -> Any:
        return (self.__pydantic_private__ or {}).get(name)

    def _with_private(self, **values: Any) -> None:
        object.__setattr__(
            self, "__pydantic_private__", {**(self.__pydantic_private__ or {}), **values}
        )

    def with_levels(self, levels: Levels | None) -> Memory:
        if levels is not None:
            self._with_private(_levels=levels)
        return self

    def seen_by(self, clearance: int) -> Memory:
        """The memory as a reader of ``clearance`` sees it: its validity and whether it was
        superseded computed over the versions at or below that clearance only, so nothing of a
        version the reader may not read (that it exists, when it came) shows."""
        levels: Levels | None = self._private("_levels")
        if levels is None or clearance >= LEVELS - 1:
            return self
        valid_to = levels.valid_to[clearance]
        history = levels.successor is not None and levels.successor <= clearance
        if valid_to == self.valid_to and history == self.history:
            return self
        return self.model_copy(update={"valid_to": valid_to, "history": history})

    @property
    def sealed(self) -> bool:
        """Read from a sealed payload and not opened yet: its text fields are empty."""
        return self._private("_sealed") is not None

    def sealing(self, seal: Seal) -> Memory:
        """A copy whose ``to_payload`` seals with ``seal``."""
        m = self.model_copy()
        m._with_private(_seal=seal)
        return m

    def opened(self, key: bytes) -> Memory | None:
        """The memory a sealed payload holds, or None when ``key`` does not open it."""
        sealed: str | None = self._private("_sealed")
        if sealed is None:
            return self
        plain = unseal(key, sealed, aad_of(self.tenant, self.id))
        if plain is None:
            return None
        opened = type(self).model_validate(
            {
                **orjson.loads(plain),
                "id": self.id,
                "tenant": self.tenant,
                "scope": self.scope,
                "kind": self.kind,
                "agents": self.agents,
                "sensitivity": self.sensitivity,
            }
        )
        return opened.with_levels(self._private("_levels"))

    @classmethod
    def from_event(cls, event: Event) -> Memory:
        # the event is already validated: construct without a second validation (writer hot path)
        return cls.model_construct(
            id=point_id(event.tenant, event.id),
            tenant=event.tenant,
            scope=event.scope,
            kind=event.kind,
            content=event.content,
            subject=event.subject,
            key=event.key,
            agents=[event.agent],
            source_events=[event.id],
            created_at=event.created_at,
            updated_at=datetime.now(UTC),
            metadata=event.metadata,
            sensitivity=LABELS[event.label],
        )

    def to_payload(self) -> dict[str, Any]:
        """Filterable fields top-level, the rest as one JSON string.

        Qdrant Edge converts every payload value from Python at ~5 µs each, which made payload
        conversion the most expensive step of a write; fields nobody filters on ride in ``doc``.
        """
        payload: dict[str, Any] = {
            "tenant": self.tenant,
            "scope": self.scope,
            "scope_path": scope_ancestors(self.scope),
            "kind": self.kind,
            "agents": self.agents,
            "sensitivity": self.sensitivity,
            # numeric timestamps: range filters work the same on every engine
            "created_ts": self.created_at.timestamp(),
            "valid_from_ts": (self.valid_from or self.created_at).timestamp(),
            "valid_to_ts": self.valid_to.timestamp() if self.valid_to else OPEN_END,
            **self._levels_payload(),
            NUMBERS: numbers_key(self.content),
        }
        doc: dict[str, Any] = {
            "id": self.id,
            "content": self.content,
            "source_events": self.source_events,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": self.metadata,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "history": self.history,
        }
        if self.subject is not None:
            payload["subject"] = self.subject
        if self.key is not None:
            payload["key"] = self.key
        if self.slot is not None:
            payload["slot"] = self.slot
        seal: Seal | None = self._private("_seal")
        if seal is not None:
            self._seal_payload(payload, doc, seal)
        else:
            payload["doc"] = orjson.dumps(doc, option=orjson.OPT_UTC_Z).decode()
        if self.metadata:
            rank_by = importance_of(self.metadata)
            if rank_by is not None:
                payload[IMPORTANCE] = rank_by
        return payload

    def _levels_payload(self) -> dict[str, Any]:
        levels: Levels | None = self._private("_levels")
        if levels is not None:
            return levels.payload()
        # no other version to hide: every clearance sees the one validity
        end = self.valid_to.timestamp() if self.valid_to else OPEN_END
        return dict.fromkeys(VALID_TO_AT, end)

    def _seal_payload(self, payload: dict[str, Any], doc: dict[str, Any], seal: Seal) -> None:
        """Everything that can carry personal data goes into the sealed document; the filterable
        copies become blind tokens (equal values stay equal, so filters still match)."""
        # the document dumped once, sealed as it is (a write path step: no dump-load-dump)
        doc = doc | {"subject": self.subject, "key": self.key, "slot": self.slot}
        sealed = seal.seal(orjson.dumps(doc, option=orjson.OPT_UTC_Z), aad_of(self.tenant, self.id))
        payload["doc"] = orjson.dumps({"id": self.id, SEALED: sealed}).decode()
        payload[NUMBERS] = seal.blind(payload[NUMBERS])
        for name in ("subject", "key", "slot"):
            if name in payload:
                payload[name] = seal.blind(payload[name])

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Memory:
        doc = orjson.loads(payload["doc"])
        if SEALED in doc:  # opened by ``SealedStore``, which holds the keys
            epoch = datetime.fromtimestamp(payload.get("created_ts", 0.0), UTC)
            # every field given: model_construct's default handling costs ~0.2 ms a hit
            m = cls.model_construct(
                id=doc["id"],
                tenant=payload["tenant"],
                scope=payload["scope"],
                kind=payload["kind"],
                content="",
                subject=None,
                key=None,
                agents=payload["agents"],
                source_events=[],
                created_at=epoch,
                updated_at=epoch,
                metadata={},
                sensitivity=payload.get("sensitivity", 0),
                slot=None,
                valid_from=None,
                valid_to=None,
                history=False,
            )
            m._with_private(_sealed=doc[SEALED], _levels=Levels.of_payload(payload))
            return m
        return cls.model_validate(
            {
                **doc,
                "tenant": payload["tenant"],
                "scope": payload["scope"],
                "kind": payload["kind"],
                "agents": payload["agents"],
                "subject": payload.get("subject"),
                "key": payload.get("key"),
                "sensitivity": payload.get("sensitivity", 0),
                "slot": payload.get("slot"),
            }
        ).with_levels(Levels.of_payload(payload))


def point_id(tenant: str, event_id: str) -> str:
    """``str(uuid.uuid5(POINT_NAMESPACE, f"{tenant}/{event_id}"))``, built without the UUID
    object (a third of the cost): consolidation computes one per event of a slot, every time
    it materialises the slot.

    Example: ``point_id("acme", "01J...")`` is the id of the memory that event's slot makes"""
    h = bytearray(hashlib.sha1(_POINT_NS + f"{tenant}/{event_id}".encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# Input checks shared by every engine, so they all refuse the same things the same way.


def check_ids(ids: Sequence[str]) -> list[str]:
    """Canonical UUID strings without repeats (so deletes count each once), or ``InvalidInput``."""
    out: dict[str, None] = {}
    bad: list[dict[str, str]] = []
    for i in ids:
        try:
            out[str(uuid.UUID(i))] = None
        except (ValueError, TypeError, AttributeError):
            bad.append({"field": "ids", "value": str(i), "problem": "not a UUID"})
    if bad:
        raise InvalidInput(f"{len(bad)} malformed memory id(s); ids are UUIDs", bad)
    return list(out)


def check_batch(memories: Sequence[Memory], vectors: Vectors, dim: int) -> None:
    check_ids([mem.id for mem in memories])
    if vectors.ndim != 2 or vectors.shape[0] != len(memories) or vectors.shape[1] != dim:
        raise InvalidInput(
            f"vectors of shape {tuple(vectors.shape)} do not fit {len(memories)} memories "
            f"of dim {dim}"
        )


def check_query(vector: Vectors, k: int, dim: int) -> list[float]:
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    flat = vector.reshape(-1)
    if flat.shape[0] != dim:
        raise InvalidInput(f"query vector has dim {flat.shape[0]}, the store holds dim {dim}")
    # tolist() gives the same Python floats as float(x) per element, ~30x faster (the
    # near-duplicate pass converts one query per queued slot)
    out: list[float] = flat.tolist()
    return out


class Hit(BaseModel):
    model_config = ConfigDict(frozen=True)
    memory: Memory
    score: float
    # from the events stream, not yet consolidated (working memory): unverified by a writer
    working: bool = False


@runtime_checkable
class Store(Protocol):
    """Engines implement this and pass tests/conformance.py."""

    async def open(self, meta: StoreMeta) -> None:
        """Create the collection or check it matches ``meta``; raise ``Conflict`` if not."""
        ...

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        """Insert or overwrite by id: idempotent."""
        ...

    async def search(
        self,
        vector: Vectors,
        flt: RecallFilter,
        k: int,
        *,
        text: str | None = None,
        boost: Boost | None = None,
    ) -> list[Hit]:
        """Top-k by ``vector`` within ``flt``; ``text`` (the query) lets a hybrid engine fuse a
        lexical ranking in; engines without one ignore it. ``boost``: rerank the top
        ``boost.candidates`` by recency and importance in the engine (``membus.store.formula``) and
        return the top k of that."""
        ...

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]: ...

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        """Up to ``limit`` memories within ``flt``, newest first by when each began to hold
        (``valid_from``, else ``created_at``), no query: what list, history and export page
        through (a page's end narrows ``flt.began_by``)."""
        ...

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        """Delete by id within the tenant; returns how many existed."""
        ...

    async def count(self, tenant: str | None = None) -> int: ...

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        """Page through a tenant's memories in id order; returns (page, next offset)."""
        ...

    async def maintain(self, *, busy: bool = False) -> None:
        """Background housekeeping (index builds); never call on a request path. ``busy``:
        writers are writing now, so an engine may wait for more work before competing with
        them for the cores.

        Example: ``await store.maintain(busy=True)``"""
        ...

    async def close(self) -> None: ...
