"""Replay detection: a writer remembers which stream entry first carried each event id.

A reclaimed entry (same entry id) is a ``redelivery`` and is processed; the same event under a
new entry id is a ``replay`` (someone re-XADDed a captured, validly signed event); an event older
than the window is ``stale``, since its record may have expired. Ids are kept in hour buckets
under the tenant's hash tag, so whole hours expire at once and a batch's checks share one slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from ulid import ULID

from membus.envelope import validate_name
from membus.errors import InvalidInput
from membus.keys import PREFIX
from membus.streams import REDIS_DOWN, Redis, unavailable

Clock = Callable[[], float]
Verdict = Literal["new", "redelivery", "replay", "stale"]


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

    async def check_many(self, tenant: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for ``(event_id, entry_id)`` pairs in one round trip, in order (so a copy
        in the same batch as its original is the ``replay``)."""
        validate_name(tenant, "tenant")
        now = self._clock()
        verdicts: list[Verdict | None] = []
        expiries: dict[str, int] = {}
        async with self.redis.pipeline(transaction=True) as pipe:
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
                pipe.hsetnx(key, event_id, entry_id)
                pipe.hget(key, event_id)
                # the record outlives the moment its event turns stale: no replay slips between
                expiries[key] = (hour + 1) * 3600 + int(self.window_s) + 3600
            for key, at in expiries.items():
                pipe.expireat(key, at)
            try:
                replies = await pipe.execute() if expiries else []
            except REDIS_DOWN as exc:
                raise unavailable(exc) from exc
        out: list[Verdict] = []
        pairs = iter(zip(replies[0::2], replies[1::2], strict=False))
        for (_, entry_id), verdict in zip(items, verdicts, strict=True):
            if verdict is None:
                created, holder = next(pairs)
                verdict = "new" if created else "redelivery" if holder == entry_id else "replay"
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
        try:
            return ULID.from_str(event_id).milliseconds
        except ValueError:
            raise InvalidInput(f"event id {event_id!r} is not a ULID") from None
