"""Redis stream operations shared by the bus, the writers and the CLI.

Retention never trims an entry a consumer group has not acknowledged: the trim point is the
oldest pending id of every group (or, with nothing pending, just past what each group was
delivered), capped by the configured age/length limits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from membus.access.signing import KeyRegistry, signed_entries
from membus.core.config import RetentionConfig
from membus.core.envelope import Event, check_created_at
from membus.core.keys import TenantKeys, tenants_added_key, tenants_key, writers_alive_key
from membus.core.redis import REDIS_DOWN, Redis, unavailable

# KEYS: one stream; ARGV: the field count F, the F field names, then each entry's F values.
# Returns the new entry ids. One command for a batch: redis-py packs each argument and parses
# each command's reply in Python (~1 µs an argument, ~5 µs a command), which for a batch of
# XADDs cost more than Redis did; field names go once.
XADD_MANY = """
local f, ids, args = tonumber(ARGV[1]), {}, {}
for j = 1, f do args[2 * j - 1] = ARGV[1 + j] end
for i = f + 2, #ARGV, f do
  for j = 1, f do args[2 * j] = ARGV[i + j - 1] end
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(args))
end
return ids
"""


def xadd_many_args(entries: Sequence[dict[Any, Any]]) -> list[list[Any]]:
    """``XADD_MANY``'s ARGV for ``entries`` (each a stream entry's fields), in order: one call
    per run of entries with the same field names (usually one for the whole batch)."""
    calls: list[list[Any]] = []
    names: tuple[Any, ...] | None = None
    for fields in entries:
        if tuple(fields) != names:
            names = tuple(fields)
            calls.append([len(names), *names])
        calls[-1] += fields.values()
    return calls


async def publish(
    redis: Redis, events: Sequence[Event], fields: Sequence[dict[Any, Any]] | None = None
) -> list[str]:
    """XADD every event (pipelined, one round trip) and register its tenant.

    Each tenant's events go in one ``XADD_MANY`` script call (atomic: all or none of them). On
    a cluster the pipeline is split by node (one round trip per node, sent concurrently) and
    replies still come back in command order. If one node fails, events on the others may be
    written although this raises ``Unavailable``; a retry's copies carry the same event ids, so
    writers park them as replays instead of writing them twice.

    ``fields``: the stream entry per event (e.g. signed: ``{"e", "kid", "sig"}``, and ``"mp"``
    for an event signed in a batch); default
    ``{"e": event JSON}``.
    """
    if not events:
        return []
    by_stream: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        by_stream.setdefault(TenantKeys(e.tenant).events, []).append(i)
    named = sorted({e.tenant for e in events})
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for tenant in named:
                pipe.sadd(tenants_key(), tenant)
            calls = 0
            for stream, idx in by_stream.items():
                entries = [fields[i] if fields else {"e": events[i].to_json()} for i in idx]
                for args in xadd_many_args(entries):
                    pipe.eval(XADD_MANY, 1, stream, *args)
                    calls += 1
            res = await pipe.execute()
        added = [t for t, n in zip(named, res, strict=False) if n]
        if added:  # a tenant's first event: wake a writer now (after the XADD it is to find)
            await announce_tenants(redis, added)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    ids = iter(str(entry_id) for reply in res[-calls:] for entry_id in reply)
    out = [""] * len(events)
    for idx in by_stream.values():  # replies in call order: per stream, its entries in order
        for i in idx:
            out[i] = next(ids)
    return out


async def publish_signed(redis: Redis, registry: KeyRegistry, events: Sequence[Event]) -> list[str]:
    """XADD events signed with each agent's current key (what ``Bus.publish_many`` does).

    The door's bound on ``created_at`` is checked here, where events get signed: nothing dated
    beyond the server's clock plus ``MAX_FUTURE_SKEW_S`` gets a signature (InvalidInput)."""
    now = time.time()
    for e in events:
        check_created_at(e, now)
    by_agent: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(events):
        by_agent.setdefault((e.tenant, e.agent), []).append(i)
    fields: list[dict[Any, Any]] = [{} for _ in events]
    for (tenant, agent), idx in by_agent.items():
        key = await registry.current(tenant, agent)
        # one signature per batch of an agent's events (``signing.signed_entries``)
        for i, entry in zip(idx, signed_entries([events[i] for i in idx], key), strict=True):
            fields[i] = entry
    return await publish(redis, events, fields)


# Writers only need the latest few announcements: older tenants are in ``tenants_key`` anyway.
_ANNOUNCED_MAXLEN = 1000


async def announce_tenants(redis: Redis, added: Sequence[str]) -> None:
    """Tell writers of tenants just added to the registry (``tenants_added_key``)."""
    async with redis.pipeline(transaction=False) as pipe:
        for t in added:
            pipe.xadd(tenants_added_key(), {"t": t}, maxlen=_ANNOUNCED_MAXLEN, approximate=True)
        await pipe.execute()


# A writer says it runs at least this often; the mark outlives a long batch (an LLM merge).
BEAT_S: Final = 5.0
ALIVE_S: Final = 60.0


async def beat(redis: Redis, group: str, consumer: str) -> None:
    """A writer of ``group`` is running (see ``writers_alive_key``)."""
    await redis.set(writers_alive_key(group), consumer, px=int(ALIVE_S * 1000))


async def writers_alive(redis: Redis, group: str) -> bool:
    """Whether some writer of ``group`` said it runs within the last ``ALIVE_S``."""
    try:
        return bool(await redis.exists(writers_alive_key(group)))
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


async def ensure_group(redis: Redis, stream: str, group: str, start: str = "0") -> None:
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def tenants(redis: Redis) -> list[str]:
    try:
        members: set[str] = await redis.smembers(tenants_key())  # type: ignore[assignment]
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    return sorted(members)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(stream_id: str) -> str:
    ms, seq = _id_tuple(stream_id)
    return f"{ms}-{seq + 1}"


async def safe_trim_point(redis: Redis, stream: str) -> str | None:
    """The lowest id still needed by some group; None when there are no groups (keep all)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    if not groups:
        return None
    floor: tuple[int, int] | None = None
    for g in groups:
        name = g["name"]
        if int(g["pending"]) > 0:
            summary = await redis.xpending(stream, name)
            needed = _id_tuple(summary["min"])
        else:
            needed = _id_tuple(_next_id(g["last-delivered-id"]))
        floor = needed if floor is None or needed < floor else floor
    assert floor is not None
    return f"{floor[0]}-{floor[1]}"


async def trim(
    redis: Redis, stream: str, max_age_s: float | None, now_ms: int, *, require_group: bool = True
) -> int:
    """Trim entries every group has acknowledged and that are older than ``max_age_s``.

    An events stream with no group yet keeps everything (no writer has read it). A change feed
    without groups is read by plain XREAD subscribers, so age alone bounds it.
    """
    point = await safe_trim_point(redis, stream)
    if point is None:
        if require_group or max_age_s is None:
            return 0
        point = f"{max(0, now_ms - int(max_age_s * 1000))}-0"
    elif max_age_s is not None:
        cutoff = (max(0, now_ms - int(max_age_s * 1000)), 0)
        point_t = min(_id_tuple(point), cutoff)
        point = f"{point_t[0]}-{point_t[1]}"
    return int(await redis.xtrim(stream, minid=point, approximate=False))


@dataclass(frozen=True)
class GroupStats:
    stream: str
    group: str
    pending: int
    lag: int
    consumers: int


async def group_stats(redis: Redis, stream: str) -> list[GroupStats]:
    """Pending and lag per group; lag is computed by hand when Redis < 7 does not report it."""
    try:
        groups = await redis.xinfo_groups(stream)
        info = await redis.xinfo_stream(stream)
    except ResponseError:
        return []
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    last = info.get("last-generated-id") or "0-0"
    out = []
    for g in groups:
        lag = g.get("lag")
        if lag is None:
            delivered = g["last-delivered-id"]
            lag = 0
            if _id_tuple(delivered) < _id_tuple(last):
                try:
                    rest: list[Any] = await redis.xrange(  # type: ignore[assignment]
                        stream, min=_next_id(delivered), max="+", count=100_000
                    )
                except REDIS_DOWN as exc:
                    raise unavailable(exc) from exc
                lag = len(rest)
        out.append(GroupStats(stream, g["name"], int(g["pending"]), int(lag), int(g["consumers"])))
    return out


async def idle(redis: Redis, streams: Sequence[str], group: str) -> bool:
    """True when ``group`` has consumed and acknowledged everything in every stream.

    One round trip (XINFO GROUPS of every stream, pipelined) while anything is pending: a
    ``drain`` polls this from the process whose writers it waits for, and the four round
    trips a stream it used to cost (EXISTS, XINFO GROUPS, XINFO STREAM with its first and last
    entries) were half of that process's Redis commands during a bench ingest. A stream with
    no group, or whose lag Redis does not report (before 7, or after deletions), takes the long
    way (``group_stats``)."""
    if not streams:
        return True
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
            replies = await pipe.execute(raise_on_error=False)
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc
    for stream, groups in zip(streams, replies, strict=True):
        if isinstance(groups, ResponseError):
            if "no such key" in str(groups).lower():
                continue  # nothing was ever published there
            groups = []  # anything else: the long way, which says what it is
        mine = [g for g in groups if g["name"] == group]
        if mine and int(mine[0]["pending"]):
            return False
        if mine and mine[0].get("lag") is not None:
            if int(mine[0]["lag"]):
                return False
            continue
        if not await _idle_the_long_way(redis, stream, group):
            return False
    return True


async def _idle_the_long_way(redis: Redis, stream: str, group: str) -> bool:
    stats = [s for s in await group_stats(redis, stream) if s.group == group]
    if not stats:
        try:
            return not await redis.xlen(stream)
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
    return not (stats[0].pending or stats[0].lag)


async def retain(redis: Redis, retention: RetentionConfig, now_ms: int) -> int:
    """Apply retention to every tenant's streams; returns how many entries went."""
    removed = 0
    for t in await tenants(redis):
        keys = TenantKeys(t)
        removed += await trim(redis, keys.events, retention.events_max_age_s, now_ms)
        for stream, age in (
            (keys.changes, retention.changes_max_age_s),
            (keys.dlq, retention.dlq_max_age_s),
        ):
            removed += await trim(redis, stream, age, now_ms, require_group=False)
    return removed
