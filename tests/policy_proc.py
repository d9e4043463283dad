"""Process A of the cross-process revocation tests (tests/test_permissions_e2e.py).

Owns an embedded store on a shared Redis-backed policy, publishes one memory into ``team/x`` as
``alice``, then recalls every 50 ms and prints ``<count> <unix time>`` whenever the number of
``team/x`` memories it can recall changes (the first line is printed at once); the time is taken
when the recall *started*, so a recall that began before a revocation never counts against it.
With ``load``, it also publishes batches of events as fast as its writers take them, so the
recalls, the writers and the policy reload share one busy event loop (and one GIL). Exits
cleanly when its stdin closes, after a last line ``load <events published> <memories>``.

    python -m tests.policy_proc <redis url> <data dir> <seed policy csv> [load]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

import membus
from membus.bus.draft import Draft
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig, WorkerConfig

POLL_S = 0.05
SCOPE = "team/x"
LOAD_BATCH = 64


async def recall_loop(bus: membus.Bus, ready: anyio.Event) -> None:
    alice = bus.agent("alice", "acme")
    await alice.publish("the x memo: deploys freeze on friday", SCOPE)
    await bus.drain(timeout_s=30)
    ready.set()
    last = -1
    while True:
        started = time.time()
        hits = await alice.recall("x memo deploys", k=10)
        count = sum(h.memory.scope == SCOPE for h in hits)
        if count != last:
            print(count, f"{started:.4f}", flush=True)
            last = count
        await anyio.sleep(POLL_S)


async def load_loop(bus: membus.Bus, ready: anyio.Event, published: list[int]) -> None:
    """Keep the writers busy: batch after batch into alice's own scope, once the memo is in."""
    await ready.wait()
    alice = bus.agent("alice", "acme")
    while True:
        i = published[0]
        drafts = [
            Draft(content=f"load note {i + j} on queue {j % 7}", scope="agent/alice/load")
            for j in range(LOAD_BATCH)
        ]
        await alice.publish_many(drafts)  # awaits Redis: the other tasks get their turns
        published[0] += LOAD_BATCH


async def main(url: str, path: Path, seed: Path, load: bool) -> None:
    cfg = MembusConfig(
        redis=RedisConfig(url=url),
        worker=WorkerConfig(block_ms=20, tenants_refresh_s=0.05),
        policy=PolicyConfig(shared=True, file=seed),
    )
    async with membus.open(path, cfg) as bus, anyio.create_task_group() as tg:
        ready, published = anyio.Event(), [0]
        tg.start_soon(recall_loop, bus, ready)
        if load:
            tg.start_soon(load_loop, bus, ready, published)
        await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin: stop
        # how heavy the load was: events published, and memories the writers committed
        print("load", published[0], await bus.store.count("acme"), flush=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:] == ["load"])
