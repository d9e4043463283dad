"""Run one ``membus.writer.worker.Writer`` in its own process until SIGTERM (crash-recovery tests).

    python -m tests.worker_proc REDIS_URL STORE_PATH CONSUMER BATCH MIN_IDLE_MS MAX_DELIVERIES
        [--reclaim-every-s S] [--stall-on TEXT]

The tests SIGKILL this process, so it must be a real separate process: an in-process writer
cannot die without taking the test with it. ``--stall-on`` makes the embedder block forever on a
batch that contains TEXT, so a test can kill the writer deterministically mid-batch (entries read,
nothing upserted or acknowledged). SIGTERM finishes the batch in hand and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from membus.access.gate import OpenGate
from membus.core.config import WorkerConfig
from membus.core.redis import redis_client
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder, Vectors
from membus.store.edge import EdgeStore
from membus.store.port import StoreMeta
from membus.writer.worker import Writer


class StallingEmbedder:
    """Delegates to ``inner`` but never returns from a batch containing ``marker``."""

    def __init__(self, inner: Embedder, marker: str) -> None:
        self.inner, self.marker = inner, marker

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if any(self.marker in t for t in texts):
            while True:  # the test SIGKILLs us here
                time.sleep(1)
        return self.inner.embed(texts)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("redis_url")
    p.add_argument("store_path", type=Path)
    p.add_argument("consumer")
    p.add_argument("batch_size", type=int)
    p.add_argument("min_idle_ms", type=int)
    p.add_argument("max_deliveries", type=int)
    p.add_argument("--reclaim-every-s", type=float, default=0.2)
    p.add_argument("--stall-on", default=None)
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    base = HashingEmbedder()
    embedder: Embedder = base if args.stall_on is None else StallingEmbedder(base, args.stall_on)
    store = EdgeStore(args.store_path)
    await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
    client = redis_client(args.redis_url)  # the client membus.runtime.host uses too
    config = WorkerConfig(
        batch_size=args.batch_size,
        min_idle_ms=args.min_idle_ms,
        max_deliveries=args.max_deliveries,
        reclaim_every_s=args.reclaim_every_s,
        block_ms=50,
        tenants_refresh_s=0.2,
    )
    writer = Writer(client, store, embedder, config, gate=OpenGate(), consumer=args.consumer)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        stop.set()
                        return

            tg.start_soon(on_signal)
            await writer.run(stop)
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
        await store.close()


if __name__ == "__main__":
    anyio.run(main, parse())
