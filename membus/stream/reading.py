"""Reading one batch for a writer from every tenant's events stream.

Standalone Redis takes one blocking XREADGROUP over all streams. A cluster refuses that (one
call may only name one slot), so there every stream gets a non-blocking read, pipelined (one
round trip per node), and when all come back empty one blocking read on a single stream (the
next in turn) waits for work. Under a steady trickle a short read lingers once to fill up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from membus.core.config import WorkerConfig
from membus.core.redis import Redis

Batch = list[tuple[str, list[Any]]]  # (stream, entries), as XREADGROUP returns them


class BatchReader:
    def __init__(self, redis: Redis, config: WorkerConfig, consumer: str, *, cluster: bool):
        self.redis, self.config, self.consumer, self.cluster = redis, config, consumer, cluster
        self._turn = 0
        # a blocking read waited its full block_ms and found nothing, and nothing came since:
        # the streams are idle, not merely drained by another writer a moment ago (idle work,
        # such as the near-duplicate pass, waits for this instead of slowing an ingest)
        self.quiet = False

    async def read(self, streams: Sequence[str], *, block: bool = True) -> Batch:
        """``block=False``: return at once when nothing is waiting (the writer has other work)."""
        batch = await (
            self._read_cluster(streams, block) if self.cluster else self._read_all(streams, block)
        )
        if batch and any(entries for _, entries in batch):
            self.quiet = False
        elif block:
            self.quiet = True
        return await self._linger(streams, batch)

    async def _read_all(self, streams: Sequence[str], block: bool = True, count: int = 0) -> Batch:
        res: Any = await self.redis.xreadgroup(
            self.config.group,
            self.consumer,
            dict.fromkeys(streams, ">"),
            count=count or self.config.batch_size,
            block=self.config.block_ms if block else None,
        )
        return list(res or [])

    async def _linger(self, streams: Sequence[str], batch: Batch) -> Batch:
        """Each batch costs a handful of round trips (admission, commit) whatever its size, so
        at ~1k events/s batches of one spend more on overhead than on events; waiting a few ms
        once buys batches several times larger for that much latency."""
        got = sum(len(entries) for _, entries in batch)
        size, linger = self.config.batch_size, self.config.linger_ms
        if not got or got >= size or not linger or self.cluster:
            return batch
        await anyio.sleep(linger / 1000)
        merged: dict[str, list[Any]] = {}
        for stream, entries in [*batch, *await self._read_all(streams, False, size - got)]:
            merged.setdefault(stream, []).extend(entries)
        return list(merged.items())

    async def _read_cluster(self, streams: Sequence[str], block: bool) -> Batch:
        group, consumer, count = self.config.group, self.consumer, self.config.batch_size
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xreadgroup(group, consumer, {stream: ">"}, count=count)
            replies: list[Any] = await pipe.execute()
        batch = [r[0] for r in replies if r]
        if batch or not block:
            return batch
        self._turn = (self._turn + 1) % len(streams)
        res: Any = await self.redis.xreadgroup(
            group, consumer, {streams[self._turn]: ">"}, count=count, block=self.config.block_ms
        )
        return list(res or [])
