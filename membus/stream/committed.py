"""Read your writes: wait until writers committed published events, from the stream alone.

An event is done once its consumer group was delivered past it (``last-delivered-id`` at or past
its position) and it is no longer pending in the group: writers acknowledge an entry only after
its memory is in the store (membus/writer/commit.py), or when they park it in the dead-letter
stream, both in one MULTI with the ack. So "done and not in the DLQ" means committed. Recall is
no signal: an exact repeat or a near-duplicate folds into an earlier memory, and the event's own
point may never exist.

A poll is one pipelined round trip (XINFO GROUPS + XPENDING over the receipts' range); the DLQ
is read only for events that became done, from their publish time on. With no writer running at
all (none refreshed ``writers_alive_key`` lately), a wait gives up after a short grace instead
of its whole timeout.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import anyio
from redis.exceptions import ResponseError

from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Redis, decode_fields, unavailable
from membus.errors import NotCommitted, Parked
from membus.stream.ops import ALIVE_S, writers_alive

DEFAULT_WAIT_S: Final = 30.0
# polls start fast (a commit takes a few ms) and back off to this
_POLL_MIN_S, _POLL_MAX_S = 0.002, 0.05
# entries pending in the group between the first and last receipt, beyond the receipts' own
_PENDING_SLACK: Final = 1000
_DLQ_PAGE: Final = 500
# a DLQ id is taken from the server clock at park time: allow for that clock stepping back
_CLOCK_SLACK_MS: Final = 60_000
# how long a wait gives writers to appear (the embedded runtime starts them beside the door)
_GRACE_S: Final = 1.0


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def wait_committed(
    redis: Redis,
    tenant: str,
    receipts: Mapping[str, str],
    group: str,
    *,
    timeout_s: float = DEFAULT_WAIT_S,
) -> None:
    """Return once every event in ``receipts`` (stream position -> event id) of ``tenant`` is
    committed by ``group``; raise ``Parked`` if writers dead-lettered any, ``NotCommitted``
    (saying why) if ``timeout_s`` passes first."""
    keys = TenantKeys(tenant)
    todo = dict(receipts)
    done: list[str] = []
    started = time.monotonic()
    deadline, grace, poll = started + timeout_s, started + _GRACE_S, _POLL_MIN_S
    try:
        while todo:
            finished = await _poll(redis, keys.events, group, todo)
            for p in finished:
                del todo[p]
            done += finished
            if not todo:
                break
            now = time.monotonic()
            if now >= deadline or (grace <= now and not await writers_alive(redis, group)):
                await _check_parked(redis, keys, receipts, done)  # a parked one says more
                raise await _timed_out(redis, keys, group, todo, now - started)
            if grace <= now:
                grace = now + _GRACE_S  # asked again at most once a grace period
            await anyio.sleep(poll)
            poll = min(poll * 2, _POLL_MAX_S)
        await _check_parked(redis, keys, receipts, done)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


async def _poll(redis: Redis, stream: str, group: str, todo: Mapping[str, str]) -> list[str]:
    """The positions in ``todo`` that ``group`` has been delivered and no longer holds pending."""
    ordered = sorted(todo, key=_id)
    count = len(ordered) + _PENDING_SLACK
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(stream)
        pipe.xpending_range(stream, group, min=ordered[0], max=ordered[-1], count=count)
        groups, pending = await pipe.execute(raise_on_error=False)
    if isinstance(groups, ResponseError) or isinstance(pending, ResponseError):
        return []  # no stream or no group yet: no writer has read this tenant
    if isinstance(groups, Exception):
        raise groups
    if isinstance(pending, Exception):
        raise pending
    mine = [g for g in groups if g["name"] == group]
    if not mine:
        return []
    delivered = _id(str(mine[0]["last-delivered-id"]))
    held = {str(p["message_id"]) for p in pending}
    # a full reply may have cut pending entries off above its last one: judge only up to it
    seen_to = _id(str(pending[-1]["message_id"])) if len(pending) >= count else None
    return [
        p
        for p in ordered
        if _id(p) <= delivered and p not in held and (seen_to is None or _id(p) <= seen_to)
    ]


async def _check_parked(
    redis: Redis, keys: TenantKeys, receipts: Mapping[str, str], done: list[str]
) -> None:
    """Raise ``Parked`` for the done positions a writer moved to the dead-letter stream."""
    if not done:
        return
    wanted = set(done)
    ms = min(_id(p)[0] for p in done)
    start, parked = f"{max(0, ms - _CLOCK_SLACK_MS)}-0", []
    while True:
        page: Any = await redis.xrange(keys.dlq, min=start, max="+", count=_DLQ_PAGE)
        for _, raw in page or []:
            f = decode_fields(raw or {})
            origin = f.get("origin_id", "")
            if origin in wanted and f.get("origin_stream", keys.events) == keys.events:
                parked.append((receipts[origin], f.get("reason", ""), f.get("error", "")))
        if not page or len(page) < _DLQ_PAGE:
            break
        start = "(" + str(page[-1][0])
    if parked:
        raise Parked(parked)


async def _timed_out(
    redis: Redis, keys: TenantKeys, group: str, todo: Mapping[str, str], waited_s: float
) -> NotCommitted:
    """Why the events in ``todo`` are still not committed: no writer, or writers behind (and
    the last error a writer hit on one of them, if any)."""
    ids = [todo[p] for p in sorted(todo, key=_id)]
    what = f"{len(ids)} event(s) not committed after {waited_s:.1f}s (they are published: do not "
    what += f"publish them again): {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}"
    if not await writers_alive(redis, group):
        return NotCommitted(
            f"{what}; no writer is running (none of group {group!r} said so in the last "
            f"{ALIVE_S:.0f}s): start one (`membus worker`), or open the bus embedded",
            ids,
            "no_writer",
        )
    errors: list[str | None] = await redis.hmget(keys.dlq_errors, list(todo))  # type: ignore[assignment]
    last = next((e for e in errors if e), None)
    why = f"; writers failed on it: {last} (retried, then parked)" if last else ""
    return NotCommitted(
        f"{what}; writers are running but have not committed them yet{why} (see `membus stats`)",
        ids,
        "behind",
    )
