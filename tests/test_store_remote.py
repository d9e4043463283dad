"""Writers in child processes (``MembusConfig.writer_processes``): the shard served over a socket
(membus/store/remote.py) answers as the shard does, errors arrive typed, and the bus keeps its
delivery guarantees with a writer process killed mid-ingest. Real Redis, real Qdrant Edge."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import membus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.errors import Conflict, InvalidInput, Unavailable
from membus.store.edge import EdgeStore
from membus.store.port import Hit
from membus.store.remote import RemoteStore, serve
from tests.conformance import META, flt, mem, ray, rows, unit

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=300, reclaim_every_s=0.2, max_deliveries=3, block_ms=50, tenants_refresh_s=0.1
)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[EdgeStore, Path]]:
    store = EdgeStore(tmp_path / "store")
    await store.open(META)
    sock = tmp_path / "store.sock"
    async with anyio.create_task_group() as tg:
        await tg.start(serve, store, META, sock)
        yield store, sock
        tg.cancel_scope.cancel()
    await store.close()


async def test_the_remote_store_answers_as_the_shard_it_serves(
    served: tuple[EdgeStore, Path],
) -> None:
    local, sock = served
    remote = RemoteStore(sock)
    await remote.open(META)
    try:
        batch = [mem(i, content=f"routine note {i} about the weekly sync") for i in range(6)]
        await remote.upsert(batch, rows([ray(i) for i in range(6)]))  # written through the socket
        assert await local.count() == await remote.count() == 6
        for text in (None, "weekly sync"):
            # every point, so a tie at the cut cannot pick different members on each side;
            # equal fused scores may come back in either order
            near = await remote.search(unit(0), flt(), 6, text=text)
            here = await local.search(unit(0), flt(), 6, text=text)
            assert sorted(near, key=_order) == sorted(here, key=_order)
        [best] = await remote.search(unit(0), flt(), 1)
        assert best.memory == batch[0]  # whole memories, provenance included
        queries = [(unit(0), flt()), (ray(5), flt(kinds=["none"]))]
        assert await remote.search_batch(queries, 2, 0.5) == await local.search_batch(
            queries, 2, 0.5
        )
        assert await remote.get("acme", [batch[1].id]) == [batch[1]]
        assert await remote.scroll("acme", limit=4) == await local.scroll("acme", limit=4)
        assert await remote.delete("acme", [batch[1].id, batch[2].id]) == 2
        assert await local.count("acme") == 4
    finally:
        await remote.close()


async def test_errors_arrive_typed_and_a_lost_host_is_unavailable(
    served: tuple[EdgeStore, Path], tmp_path: Path
) -> None:
    _, sock = served
    remote = RemoteStore(sock)
    with pytest.raises(Conflict):  # another embedder than the shard was built for
        await remote.open(META.model_copy(update={"embedder": "other-v1"}))
    await remote.open(META)
    with pytest.raises(InvalidInput):
        await remote.get("acme", ["not-a-uuid"])
    assert await remote.count() == 0  # the connection survives an error reply
    await remote.close()
    nowhere = RemoteStore(tmp_path / "no-such.sock")
    with pytest.raises(Unavailable):
        await nowhere.open(META)


def _order(h: Hit) -> tuple[float, str]:
    return -h.score, h.memory.id


def _writer_processes() -> list[int]:
    """Pids of this process's writer children (Linux /proc)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"membus.runtime.writer_main" in cmdline:
                pids.append(int(pid))
    return pids


def _config(url: str) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=2,
        writer_processes=1,
        ranking=EVERY_HIT,
    )


@pytest.mark.slow
async def test_writer_processes_commit_and_recall_stays_in_process(
    redis_url: str, tmp_path: Path
) -> None:
    async with membus.open(tmp_path, _config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        await alice.publish("The customer prefers email over phone.", "team/support")
        await alice.publish_many(
            [membus.Draft(content=f"ticket {i} closed", scope="team/support") for i in range(50)]
        )
        await bus.drain(30)
        assert await bus.store.count("acme") == 51
        [hit] = await alice.recall("how does the customer like to be contacted?", k=1)
        assert hit.memory.content == "The customer prefers email over phone."
    async with membus.open(
        tmp_path,
        MembusConfig(
            policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), ranking=EVERY_HIT
        ),
    ) as bus:
        assert await bus.store.count("acme") == 51  # the shard the children wrote persists


@pytest.mark.slow
async def test_a_killed_writer_process_is_replaced_and_nothing_is_lost_or_doubled(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL the writer process mid-ingest: the bus starts another, which reclaims what the
    dead one held; every event ends as exactly one memory."""
    n = 600
    async with membus.open(tmp_path, _config(redis_url)) as bus:
        alice = bus.agent("alice", "acme")
        drafts = [membus.Draft(content=f"case {i} was escalated", scope="team/s") for i in range(n)]
        for start in range(0, n, 100):
            await alice.publish_many(drafts[start : start + 100])
            if start == 200:
                await anyio.sleep(0.05)  # let it hold a batch
                [killed] = _writer_processes()
                os.kill(killed, signal.SIGKILL)
        await bus.drain(60)
        [replacement] = _writer_processes()
        assert replacement != killed
        assert await bus.store.count("acme") == n
        memories, offset = [], None
        while True:
            page, offset = await bus.store.scroll("acme", limit=256, offset=offset)
            memories += page
            if offset is None:
                break
        assert sorted(m.content for m in memories) == sorted(d.content for d in drafts)
