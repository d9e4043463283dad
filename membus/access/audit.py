"""The audit trail: one record per decision (allow and deny) at every door, per-tenant stream.

Records carry who, what, where, the decision, the rule that made it and the ids of what was
returned, never query text or memory content: the audit must not become a second copy of data
that ``forget`` erases.

Writes sit on the recall path, so ``record`` only appends to an in-process buffer (~1 µs); a
background task (``run``) flushes the buffer in one pipelined round trip a few milliseconds after
the first record arrived. Without a running flusher every ``record`` writes through (one round
trip), which is correct but slower. ``flush()`` writes what is buffered now; ``aclose()`` flushes
and stops the flusher, so a clean shutdown loses nothing. A crash loses at most the last
``flush_every_s`` of records: the same order as Redis's own ``appendfsync everysec`` window.

Stream ids double as time: an entry is added (``*`` id, server clock) at most a flush delay after
its record's ``at``, so ``query`` reads by id range and filters exact times in Python.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field, field_validator

from membus.core.envelope import validate_name
from membus.core.flusher import Flusher
from membus.core.keys import PREFIX
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.errors import InvalidInput, Unavailable

Decision = Literal["allow", "deny"]

MAX_REASON = 500
_FIELD = "a"  # the one stream field (the script below writes it too)
_PAGE = 500
_CHUNK = 1000  # records per script call: bounds how long one call holds Redis
# One script call appends a tenant's whole batch: redis-py costs ~20 µs per pipelined command in
# Python, the script ~3 µs per record. ARGV[1] is the MINID trim point ('' = not due). Sent with
# EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT, and on a cluster each master would
# need the script loaded (and loses it on restart); Redis caches the compiled script anyway.
_APPEND = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'a', ARGV[i])
end
if ARGV[1] ~= '' then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
end
return #ARGV - 1
"""


def audit_key(tenant: str) -> str:
    """``membus:{tenant}:audit``: same hash tag as the tenant's other keys (one cluster slot)."""
    return f"{PREFIX}:{{{tenant}}}:audit"


class AuditRecord(BaseModel):
    """One decision at one door. Ids only: no query text, no content."""

    # forbid: a caller passing ``query=`` or ``content=`` gets an error, not a silent drop
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    tenant: str
    agent: str
    action: str  # publish | recall | subscribe | forget | admin
    scope: str  # the scope acted on; "*" when a call spans several (see ``scopes``)
    scopes: list[str] = Field(default_factory=list)  # requested roots of a multi-scope call
    decision: Decision
    rule: str | None = None  # the policy line that decided (None: nothing allowed it)
    result_count: int | None = None
    memory_ids: list[str] = Field(default_factory=list)
    reason: str | None = None
    event_ids: list[str] = Field(default_factory=list)
    position: str | None = None  # the audit stream id, set when read

    @field_validator("reason")
    @classmethod
    def _short_reason(cls, v: str | None) -> str | None:
        # a reason is a diagnosis, not a payload: bounded so nothing large is ever copied here
        return v[:MAX_REASON] if v is not None else None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude={"position"}, exclude_none=True).encode()

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> AuditRecord:
        rec = cls.model_validate_json(fields[_FIELD])
        return rec.model_copy(update={"position": entry_id})

    def under(self, scope: str) -> bool:
        """The record's scope (or one of its ``scopes``) is ``scope`` or inside its subtree."""
        return any(s == scope or s.startswith(scope + "/") for s in (self.scope, *self.scopes))


def _ms(t: datetime) -> int:
    if t.tzinfo is None:
        raise InvalidInput("since/until must be timezone-aware")
    return int(t.timestamp() * 1000)


class AuditLog(Flusher):
    """Buffered writer and reader of every tenant's audit stream.

    ``max_age_s`` bounds retention (approximate ``MINID`` trim, at most every ``trim_every_s`` per
    tenant, riding on a flush). ``max_buffer`` bounds memory while Redis is unreachable: beyond
    it the oldest records are dropped and counted in ``dropped`` (and logged).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        max_age_s: float = 90 * 24 * 3600,
        flush_every_s: float = 0.005,
        flush_at: int = 1000,
        max_buffer: int = 100_000,
        trim_every_s: float = 60.0,
        late_s: float = 60.0,
    ) -> None:
        if flush_every_s <= 0 or flush_at < 1 or max_buffer < flush_at:
            raise InvalidInput("need flush_every_s > 0 and 1 <= flush_at <= max_buffer")
        super().__init__(flush_every_s)
        self.redis = redis
        self.max_age_s = max_age_s
        self.flush_at = flush_at
        self.max_buffer = max_buffer
        self.trim_every_s = trim_every_s
        # how much later than its ``at`` a record may reach the stream (``until`` queries look
        # this far past ``until`` by stream id)
        self.late_s = late_s
        self.written = 0
        self.dropped = 0
        self._buffer: list[tuple[str, bytes]] = []
        self._failing = False  # the last flush failed: bursts stop flushing inline
        self._trimmed_at: dict[str, float] = {}
        self._tg: TaskGroup | None = None
        self._log = get_logger("membus.audit")

    # -- writing ------------------------------------------------------------------------------

    async def record(self, rec: AuditRecord) -> None:
        await self.record_many((rec,))

    async def record_many(self, recs: Sequence[AuditRecord]) -> None:
        """Buffer ``recs`` (one flush writes them in one round trip)."""
        if not recs:
            return
        self._buffer.extend((audit_key(r.tenant), r.to_json()) for r in recs)
        if not self.flushing:
            await self.flush()  # no flusher: write through (raises when Redis is down)
        elif len(self._buffer) >= self.flush_at and not self._failing:
            # a burst: do not wait for the timer. A failure is the flusher's to retry; the
            # door that called us is not failed for it.
            with contextlib.suppress(Unavailable):
                await self.flush()
        else:
            self._bound()
            self._poke()

    async def flush(self) -> int:
        """Write everything buffered now in one pipelined round trip; returns how many.

        On a Redis failure the batch goes back to the buffer (oldest dropped past ``max_buffer``)
        and ``Unavailable`` is raised.
        """
        async with self._flush_lock:
            return await self._flush_buffer()

    async def _flush_buffer(self) -> int:
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, []
        now = time.monotonic()
        by_key: dict[str, list[bytes]] = {}
        for key, doc in batch:
            by_key.setdefault(key, []).append(doc)
        cutoff = f"{max(0, int((time.time() - self.max_age_s) * 1000))}-0"
        due = [k for k in by_key if now - self._trimmed_at.get(k, 0.0) >= self.trim_every_s]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, docs in by_key.items():
                    for n in range(0, len(docs), _CHUNK):
                        trim = cutoff if key in due and n == 0 else ""
                        pipe.eval(_APPEND, 1, key, trim, *docs[n : n + _CHUNK])
                await pipe.execute()
        except REDIS_DOWN as exc:
            self._failing = True
            self._buffer = batch + self._buffer
            self._bound()
            raise unavailable(exc) from exc
        self._failing = False
        for key in due:
            self._trimmed_at[key] = now
        self.written += len(batch)
        return len(batch)

    def _bound(self) -> None:
        over = len(self._buffer) - self.max_buffer
        if over > 0:
            del self._buffer[:over]
            self.dropped += over
            self._log.error("audit.dropped", records=over, total_dropped=self.dropped)

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except Unavailable as exc:
            self._log.warning("audit.flush_failed", error=str(exc), buffered=self.pending)
            if not self._closing:
                await anyio.sleep(min(1.0, self.flush_every_s * 100))
                self._poke()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def aclose(self) -> None:
        """Stop the flusher and write what is left (raises ``Unavailable`` if Redis is gone).

        Records arriving afterwards write through.
        """
        await self._stop()
        try:
            await self.flush()
        except Unavailable as exc:
            self._log.error("audit.lost_on_close", records=self.pending, error=str(exc))
            raise

    async def __aenter__(self) -> AuditLog:
        self._closing = False
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            await self.aclose()
        finally:
            tg, self._tg = self._tg, None
            await tg.__aexit__(exc_type, exc, tb)
        return None

    # -- reading ------------------------------------------------------------------------------

    async def query(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        scope: str | None = None,
        action: str | None = None,
        decision: Decision | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        newest_first: bool = True,
        scan_cap: int = 100_000,
    ) -> list[AuditRecord]:
        """Up to ``limit`` records matching every filter given (``scope``: that scope or below).

        At most ``scan_cap`` entries are examined, so a needle in a huge trail returns what was
        found within the cap rather than scanning forever; narrow with ``since``/``until``.
        """
        validate_name(tenant, "tenant")
        if limit < 1 or scan_cap < 1:
            raise InvalidInput("limit and scan_cap must be at least 1")
        # stream ids start at 0: a time before 1970 is the stream's start, not a Redis error
        lo = "-" if since is None else str(max(0, _ms(since)))
        hi = "+" if until is None else str(max(0, _ms(until) + int(self.late_s * 1000)))

        def keep(r: AuditRecord) -> bool:
            return (
                (agent is None or r.agent == agent)
                and (action is None or r.action == action)
                and (decision is None or r.decision == decision)
                and (scope is None or r.under(scope))
                and (since is None or r.at >= since)
                and (until is None or r.at <= until)
            )

        key, out, scanned = audit_key(tenant), list[AuditRecord](), 0
        try:
            while scanned < scan_cap and len(out) < limit:
                count = min(_PAGE, scan_cap - scanned)
                raw: Any = (
                    await self.redis.xrevrange(key, max=hi, min=lo, count=count)
                    if newest_first
                    else await self.redis.xrange(key, min=lo, max=hi, count=count)
                )
                for entry_id, fields in raw:
                    rec = AuditRecord.from_entry(entry_id, fields)
                    if keep(rec):
                        out.append(rec)
                        if len(out) == limit:
                            break
                scanned += len(raw)
                if len(raw) < count:
                    break
                last = "(" + raw[-1][0]
                hi, lo = (last, lo) if newest_first else (hi, last)
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        return out
