"""Process A of the cross-process revocation test (tests/test_permissions_e2e.py).

Owns an embedded store on a shared Redis-backed policy, publishes one memory into ``team/x`` as
``alice``, then recalls every 50 ms and prints ``<count> <unix time>`` whenever the number of
``team/x`` memories it can recall changes (the first line is printed at once). Exits cleanly
when its stdin closes.

    python -m tests.policy_proc <redis url> <data dir> <seed policy csv>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

import membus
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig, WorkerConfig

POLL_S = 0.05
SCOPE = "team/x"


async def recall_loop(bus: membus.Bus) -> None:
    alice = bus.agent("alice", "acme")
    await alice.publish("the x memo: deploys freeze on friday", SCOPE)
    await bus.drain(timeout_s=30)
    last = -1
    while True:
        hits = await alice.recall("x memo deploys", k=10)
        count = sum(h.memory.scope == SCOPE for h in hits)
        if count != last:
            print(count, f"{time.time():.4f}", flush=True)
            last = count
        await anyio.sleep(POLL_S)


async def main(url: str, path: Path, seed: Path) -> None:
    cfg = MembusConfig(
        redis=RedisConfig(url=url),
        worker=WorkerConfig(block_ms=20, tenants_refresh_s=0.05),
        policy=PolicyConfig(shared=True, file=seed),
    )
    async with membus.open(path, cfg) as bus, anyio.create_task_group() as tg:
        tg.start_soon(recall_loop, bus)
        await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin: stop
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
