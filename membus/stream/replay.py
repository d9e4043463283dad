"""Replay detection: a writer remembers which stream entry first carried each event id.

A reclaimed entry (same entry id) is a ``redelivery`` and is processed; the same event under a
new entry id is a ``replay`` (someone re-XADDed a captured, validly signed event); an event older
than the window is ``stale``, since its record may have expired. Ids are kept in hour buckets
under the tenant's hash tag, so whole hours expire at once and a batch's checks share one slot.
A batch is checked in one script call: pipelining an HSETNX and an HGET per event cost redis-py
~5 µs a command in Python, and python-ulid's decoder more, which together made the replay check
the writer's largest cost after the store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ulid import ULID

from membus.core.envelope import validate_name
from membus.core.keys import PREFIX
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.errors import InvalidInput

Clock = Callable[[], float]
Verdict = Literal["new", "redelivery", "replay", "stale"]

# KEYS: the hour buckets; ARGV[1]: how many (key index, unix time) expiries follow, then per
# event: its bucket's key index, the event id, the entry id. Per event: 1 when it is new, else
# the entry id that first carried it. Expiries last: EXPIREAT on a bucket not yet created is void.
_CHECK = """
local n, out = tonumber(ARGV[1]), {}
for i = 2 + 2 * n, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  if redis.call('HSETNX', key, ARGV[i + 1], ARGV[i + 2]) == 1 then
    out[#out + 1] = 1
  else
    out[#out + 1] = redis.call('HGET', key, ARGV[i + 1])
  end
end
for i = 0, n - 1 do
  redis.call('EXPIREAT', KEYS[tonumber(ARGV[2 + 2 * i])], ARGV[3 + 2 * i])
end
return out
"""

# The same verdicts without remembering anything (working memory previews what a writer will
# decide): a copy later in the same call is a replay of the first, as when a writer checks them.
_PEEK = """
local n, out, first = tonumber(ARGV[1]), {}, {}
for i = 2 + 2 * n, #ARGV, 3 do
  local id = ARGV[i + 1]
  local holder = redis.call('HGET', KEYS[tonumber(ARGV[i])], id) or first[id]
  if holder then
    out[#out + 1] = holder
  else
    first[id] = ARGV[i + 2]
    out[#out + 1] = 1
  end
end
return out
"""

_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
# Crockford's base32 digits as Python's int(_, 32) spells them (it has no I, L, O or U)
_DIGITS = str.maketrans("ABCDEFGHJKMNPQRSTVWXYZ", "abcdefghijklmnopqrstuv")


def seen_key(tenant: str, hour: int) -> str:
    """One hour-bucket of event ids a writer has seen (bucketed so whole hours expire at once)."""
    return f"{PREFIX}:{{{tenant}}}:seen:{hour}"


class ReplayGuard:
    """Tells a writer whether an entry's event was seen before, and under which stream entry.

    A reclaimed entry (same entry id) is a ``redelivery`` and must be processed; the same event
    under a new entry id is a ``replay`` (someone re-XADDed a captured event). Ids are remembered
    in hour buckets until the event falls out of ``window_s``; older events are ``stale`` since
    their record may be gone. Verify the signature first: a forged entry must not claim an id.
    """

    def __init__(
        self,
        redis: Redis,
        window_s: float = 24 * 3600.0,
        *,
        max_future_s: float = 3600.0,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.window_s = window_s
        # ids are minted by bus processes; one dated far ahead would outlive its seen record
        self.max_future_s = max_future_s
        self._clock = clock

    def slot(self, tenant: str, event_id: str) -> tuple[str, str]:
        """(hash key, field) remembering ``event_id``: for HDEL inside another MULTI."""
        return seen_key(tenant, self._ms(event_id) // 3_600_000), event_id

    async def check(self, tenant: str, event_id: str, entry_id: str) -> Verdict:
        return (await self.check_many(tenant, [(event_id, entry_id)]))[0]

    async def check_many(
        self, tenant: str, items: Sequence[tuple[str, str]], *, record: bool = True
    ) -> list[Verdict]:
        """Verdicts for ``(event_id, entry_id)`` pairs in one script call, in order (so a copy
        in the same batch as its original is the ``replay``). ``record=False``: the same
        verdicts, but nothing is remembered (a preview, e.g. for working memory)."""
        validate_name(tenant, "tenant")
        now = self._clock()
        verdicts: list[Verdict | None] = []
        keys: dict[str, int] = {}  # bucket -> its index in KEYS (from 1)
        expiries: dict[str, int] = {}
        args: list[Any] = []
        for event_id, entry_id in items:
            try:
                ms = self._ms(event_id)
            except InvalidInput:  # envelope-valid yet overflowing ids must not sink a batch
                ms = -1
            if ms < 0 or ms / 1000 < now - self.window_s or ms / 1000 > now + self.max_future_s:
                verdicts.append("stale")
                continue
            verdicts.append(None)
            hour = ms // 3_600_000
            key = seen_key(tenant, hour)
            args += [keys.setdefault(key, len(keys) + 1), event_id, entry_id]
            # the record outlives the moment its event turns stale: no replay slips between
            expiries[key] = (hour + 1) * 3600 + int(self.window_s) + 3600
        if not keys:
            return ["stale"] * len(verdicts)
        head: list[Any] = [len(expiries)]
        for key, at in expiries.items():
            head += [keys[key], at]
        try:
            script = _CHECK if record else _PEEK
            replies: list[Any] = await self.redis.eval(script, len(keys), *keys, *head, *args)
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        found = iter(replies)
        out: list[Verdict] = []
        for (_, entry_id), verdict in zip(items, verdicts, strict=True):
            if verdict is None:
                holder = next(found)
                verdict = "new" if holder == 1 else "redelivery" if holder == entry_id else "replay"
            out.append(verdict)
        return out

    async def forget(self, tenant: str, event_id: str) -> None:
        """Drop the record, e.g. before an operator re-publishes the event from the DLQ."""
        key, fld = self.slot(tenant, event_id)
        try:
            await self.redis.hdel(key, fld)
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    @staticmethod
    def _ms(event_id: str) -> int:
        """A ULID's millisecond timestamp (its first ten characters); ``InvalidInput`` if the id
        is not one. The common case is one ``int(_, 32)``; python-ulid judges the rest."""
        if _ULID.fullmatch(event_id):
            return int(event_id[:10].translate(_DIGITS), 32)
        try:
            return ULID.from_str(event_id).milliseconds
        except ValueError:
            raise InvalidInput(f"event id {event_id!r} is not a ULID") from None
