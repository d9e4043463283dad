"""Dead-letter operations: list, replay and drop what writers parked in a tenant's DLQ stream.

Entries are written by ``Writer._park``: provenance fields plus the original entry's fields under
an ``f:`` prefix. Replay moves one entry back to the events stream with XADD + XDEL in one
MULTI (both keys share the tenant hash tag), WATCHing the DLQ so two operators replaying at once
cannot both re-publish the same entry. ``replay(all)``/``drop(all)`` act on a snapshot taken at
the start, so entries parked meanwhile (e.g. a replayed event failing again) are left for the
operator to look at rather than looped over.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import WatchError

from membus.core.envelope import invalid_from, validate_name
from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Pipe, Redis, decode_fields, unavailable
from membus.errors import Conflict, InvalidInput
from membus.stream.replay import ReplayGuard

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_FIELD_PREFIX = "f:"
_PAGE = 500
_WATCH_RETRIES = 20


class DeadLetterNotFound(InvalidInput):
    """Some requested dead-letter ids are not in the tenant's DLQ (never were, or already gone)."""

    code = "not_found"

    def __init__(self, tenant: str, ids: Sequence[str]) -> None:
        super().__init__(
            f"no dead letter {', '.join(ids)} in tenant {tenant!r}",
            [{"field": "id", "reason": f"unknown dead letter {i}"} for i in ids],
        )
        self.tenant, self.ids = tenant, list(ids)


class DeadLetter(BaseModel):
    """One parked entry: why it was parked and what it was."""

    model_config = ConfigDict(frozen=True)

    id: str  # position in the DLQ stream
    origin_id: str  # position it had in the events stream
    origin_stream: str
    group: str
    reason: str  # "invalid" (unparseable) or "poison" (failed max_deliveries times)
    error: str
    deliveries: int
    parked_at: datetime
    fields: dict[str, str]  # the original entry's fields, prefix stripped
    event: dict[str, Any] | None = None  # ``fields["e"]`` parsed, when it is a JSON object

    @classmethod
    def from_entry(cls, entry_id: str, raw: dict[Any, Any]) -> DeadLetter:
        data = decode_fields(raw)
        fields = {
            k[len(_FIELD_PREFIX) :]: v for k, v in data.items() if k.startswith(_FIELD_PREFIX)
        }
        event: dict[str, Any] | None = None
        try:
            parsed = orjson.loads(fields.get("e", ""))
            event = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            pass
        try:
            return cls(
                id=entry_id,
                origin_id=data.get("origin_id", ""),
                origin_stream=data.get("origin_stream", ""),
                group=data.get("group", ""),
                reason=data.get("reason", ""),
                error=data.get("error", ""),
                deliveries=int(data.get("deliveries", 0) or 0),
                parked_at=data.get("parked_at", "1970-01-01T00:00:00+00:00"),
                fields=fields,
                event=event,
            )
        except ValidationError as exc:
            raise invalid_from(exc, f"dead letter {entry_id}") from None
        except ValueError as exc:  # a non-numeric ``deliveries``
            raise InvalidInput(f"dead letter {entry_id} is malformed: {exc}") from None


class Replayed(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str  # the dead letter's id (now deleted)
    position: str  # the new entry's position in the events stream


def _check_ids(ids: Sequence[str]) -> list[str]:
    bad = [i for i in ids if not _STREAM_ID.fullmatch(i)]
    if bad:
        raise InvalidInput(
            f"not a stream id: {', '.join(map(repr, bad))} (expected <ms>-<seq>, e.g. 17180000-0)",
            [{"field": "id", "reason": f"not a stream id: {i!r}"} for i in bad],
        )
    return list(dict.fromkeys(ids))  # de-duplicate, keep order


async def _xrange(
    redis: Redis | Pipe, key: str, start: str, end: str, count: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    raw: Any = await redis.xrange(key, min=start, max=end, count=count)
    return [(str(eid), decode_fields(fields or {})) for eid, fields in raw or []]


async def list_dead(
    redis: Redis, tenant: str, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    """Up to ``count`` dead letters from ``start`` ("(id": exclusive), oldest first."""
    validate_name(tenant, "tenant")
    if count < 1:
        raise InvalidInput("count must be at least 1")
    if start not in ("-", "+") and not _STREAM_ID.fullmatch(start.removeprefix("(")):
        raise InvalidInput(f"start: not a stream id: {start!r}")
    try:
        entries = await _xrange(redis, TenantKeys(tenant).dlq, start, "+", count)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    return [DeadLetter.from_entry(eid, fields) for eid, fields in entries]


async def _snapshot(redis: Redis, key: str) -> list[str]:
    """Every id in the DLQ right now, paged so a large DLQ is not one giant reply."""
    last: Any = await redis.xrevrange(key, max="+", min="-", count=1)
    if not last:
        return []
    end, ids, start = str(last[0][0]), list[str](), "-"
    while True:
        page = await _xrange(redis, key, start, end, _PAGE)
        ids.extend(eid for eid, _ in page)
        if len(page) < _PAGE:
            return ids
        start = "(" + page[-1][0]


async def _resolve(redis: Redis, tenant: str, ids: Sequence[str] | None) -> list[str]:
    """The ids to act on: all (a snapshot) or the given ones, all of which must exist."""
    validate_name(tenant, "tenant")
    key = TenantKeys(tenant).dlq
    if ids is None:
        return await _snapshot(redis, key)
    wanted = _check_ids(ids)
    if not wanted:
        raise InvalidInput("no dead-letter ids given (pass ids, or all)")
    async with redis.pipeline(transaction=False) as pipe:
        for i in wanted:
            pipe.xrange(key, min=i, max=i)
        found = await pipe.execute()
    missing = [i for i, hit in zip(wanted, found, strict=True) if not hit]
    if missing:
        raise DeadLetterNotFound(tenant, missing)
    return wanted


async def _replay_one(redis: Redis, keys: TenantKeys, entry_id: str) -> str:
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_RETRIES):
            try:
                await pipe.watch(keys.dlq)
                found = await _xrange(pipe, keys.dlq, entry_id, entry_id)
                if not found:
                    raise DeadLetterNotFound(keys.tenant, [entry_id])
                letter = DeadLetter.from_entry(entry_id, found[0][1])
                if not letter.fields:
                    raise InvalidInput(f"dead letter {entry_id} holds no original fields")
                original: dict[Any, Any] = dict(letter.fields)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.xadd(keys.events, original)
                pipe.xdel(keys.dlq, entry_id)
                event_id = (letter.event or {}).get("id")
                if isinstance(event_id, str):
                    # the writer remembers event ids to spot replays; an operator's replay of a
                    # dead letter is deliberate, so the new entry must read as a first sight
                    with contextlib.suppress(InvalidInput):  # not a ULID: never remembered
                        seen, field = ReplayGuard(redis).slot(keys.tenant, event_id)
                        pipe.hdel(seen, field)
                position, *_ = await pipe.execute()
                return str(position)
            except WatchError:
                continue  # the DLQ changed under us (a writer parked something): look again
    raise Conflict(f"dead letter {entry_id}: the DLQ kept changing; retry")


async def replay(redis: Redis, tenant: str, ids: Sequence[str] | None) -> list[Replayed]:
    """Re-publish dead letters (``ids=None``: all of them) to the events stream, oldest first."""
    try:
        targets = await _resolve(redis, tenant, ids)
        keys = TenantKeys(tenant)
        return [Replayed(id=i, position=await _replay_one(redis, keys, i)) for i in targets]
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


async def drop(redis: Redis, tenant: str, ids: Sequence[str] | None) -> int:
    """Delete dead letters for good (``ids=None``: all of them); returns how many went."""
    try:
        targets = await _resolve(redis, tenant, ids)
        key, dropped = TenantKeys(tenant).dlq, 0
        for n in range(0, len(targets), _PAGE):
            dropped += int(await redis.xdel(key, *targets[n : n + _PAGE]))
        return dropped
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


async def park(
    redis: Redis,
    keys: TenantKeys,
    stream: str,
    group: str,
    items: Sequence[tuple[str, dict[str, str], str]],
    *,
    reason: str,
    deliveries: dict[str, int] | None = None,
) -> None:
    """Move ``(entry id, fields, error)`` items to the dead-letter stream and acknowledge them,
    in one MULTI (both keys share the tenant's slot): an entry is either pending or parked.

    Reasons: invalid, poison (failed ``max_deliveries`` times), unsigned, unknown_key,
    agent_mismatch, key_revoked, key_expired, bad_signature, replay, stale, denied.
    """
    now = datetime.now(UTC).isoformat()
    async with redis.pipeline(transaction=True) as pipe:
        for entry_id, fields, error in items:
            record: dict[str, Any] = {
                "origin_id": entry_id,
                "origin_stream": stream,
                "group": group,
                "reason": reason,
                "error": error[:4000],
                "deliveries": (deliveries or {}).get(entry_id, 1),
                "parked_at": now,
                **{f"f:{k}": v for k, v in fields.items()},
            }
            pipe.xadd(keys.dlq, record)  # type: ignore[arg-type]
            pipe.hdel(keys.dlq_errors, entry_id)
        pipe.xack(stream, group, *[i[0] for i in items])
        await pipe.execute()
