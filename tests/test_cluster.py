"""membus on a real 3-master Redis Cluster: tenants spread over masters by their hash tag, and
publish -> writers -> recall, the dead-letter queue (park and replay), erasure, the audit trail
and policy announcements all work there, each tenant seeing only its own memories.

Skipped when ``redis-server`` or ``redis-cli`` is missing (a cluster is built with both).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pydantic
import pytest
from redis.asyncio.cluster import RedisCluster

import membus
from membus.access.watch import PolicyWatcher
from membus.bus.erasure import tombstoned
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.keys import TenantKeys
from membus.core.redis import is_cluster, redis_client
from membus.stream import dlq
from tests.cluster_proc import ClusterProcess, binaries

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.cluster

TENANTS = [f"tenant-{n}" for n in range(6)]
PER_TENANT = 4
FAST = WorkerConfig(
    min_idle_ms=300, reclaim_every_s=0.3, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    if binaries() is None:
        pytest.skip("redis-server and redis-cli are needed to build a Redis Cluster")
    proc = ClusterProcess(tmp_path_factory.mktemp("cluster"), masters=3).start()
    yield proc
    proc.stop()


def config(cluster: ClusterProcess) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=cluster.url, cluster=True),
        worker=FAST,
        writers=2,
        ranking=EVERY_HIT,
    )


def test_cluster_needs_a_url() -> None:
    """The embedded redis-server is a single node: asking for a cluster without a URL is an
    error at configuration time, not a confusing failure at connect."""
    with pytest.raises(pydantic.ValidationError, match="cluster=True needs url"):
        RedisConfig(cluster=True)


@pytest.mark.slow
def test_tenants_land_on_more_than_one_master(cluster: ClusterProcess) -> None:
    """Precondition of the round trip below: the test tenants really do live on different
    masters (asked of the cluster with CLUSTER KEYSLOT / CLUSTER SLOTS), so the cross-slot paths
    are exercised, and every key of one tenant sits on one master."""
    nodes = {t: cluster.node_of(TenantKeys(t).events) for t in TENANTS}
    assert len(set(nodes.values())) >= 2, nodes
    for t in TENANTS:
        keys = TenantKeys(t)
        assert {cluster.node_of(k) for k in (keys.changes, keys.dlq, keys.dlq_errors)} == {nodes[t]}


@pytest.mark.slow
@pytest.mark.anyio
async def test_publish_consolidate_recall_dlq_and_forget_per_tenant(
    cluster: ClusterProcess, tmp_path: Path
) -> None:
    """Six tenants over three masters through one embedded bus (Edge store, two writers in
    process): every event becomes a memory, recall per tenant finds its own memories only, a
    poison event parks in its tenant's DLQ alone (and a replay parks it again), forget erases
    on the cluster and leaves a tombstone, and the audit trail is written."""
    async with membus.open(tmp_path / "bus", config(cluster)) as bus:
        assert is_cluster(bus.redis)
        for n in range(PER_TENANT):
            for t in TENANTS:
                agent = bus.agent(f"scribe-{t}", t)
                await agent.publish(f"{t} launch note {n}: ship the {t} rollout", "team/launch")
        poison_tenant = TENANTS[3]
        await bus.redis.xadd(TenantKeys(poison_tenant).events, {"e": "{not json"})
        await bus.drain(timeout_s=30)

        for t in TENANTS:
            hits = await bus.agent("reader", t).recall("launch note rollout", k=50)
            assert len(hits) == PER_TENANT, t
            assert all(h.memory.tenant == t and h.memory.content.startswith(t) for h in hits)

        for t in TENANTS:
            dead = await dlq.list_dead(bus.redis, t)
            assert [d.reason for d in dead] == (["invalid"] if t == poison_tenant else []), t
        replayed = await dlq.replay(bus.redis, poison_tenant, None)  # WATCH + MULTI on its slot
        assert len(replayed) == 1
        await bus.drain(timeout_s=30)
        again = await dlq.list_dead(bus.redis, poison_tenant)
        assert [d.reason for d in again] == ["invalid"]
        assert again[0].id != replayed[0].id

        victim = TENANTS[1]
        reader = bus.agent("reader", victim)
        gone = (await reader.recall("launch note rollout", k=1))[0].memory
        report = await bus.forget(reader.identity, memory_ids=[gone.id])
        assert report.memories == 1 and report.memory_ids == [gone.id]
        left = await reader.recall("launch note rollout", k=50)
        assert len(left) == PER_TENANT - 1 and gone.id not in {h.memory.id for h in left}
        assert await tombstoned(bus.redis, victim, [gone.id]) == {gone.id}
        # the rest of the cluster is untouched
        assert len(await bus.agent("reader", TENANTS[2]).recall("launch", k=50)) == PER_TENANT

        # a retraction: the writer's delete change goes out before the point (its own script
        # on the tenant's master, outside the commit's MULTI)
        other = bus.agent(f"scribe-{TENANTS[4]}", TENANTS[4])
        withdrawn = (await other.recall("launch note rollout", k=1))[0].memory
        await other.retract(memory_id=withdrawn.id, reason="cancelled")
        await bus.drain(timeout_s=30)
        feed = await bus.redis.xrange(TenantKeys(TENANTS[4]).changes)
        deletes = [f["c"] for _, f in feed if '"op":"delete"' in f["c"]]
        assert len(deletes) == 1 and withdrawn.id in deletes[0]

        await bus.audit.flush()
        recalls = await bus.audit.query(victim, action="recall")
        assert recalls and all(r.tenant == victim for r in recalls)


@pytest.mark.anyio
async def test_policy_announcements_reach_a_watcher_on_another_connection(
    cluster: ClusterProcess,
) -> None:
    """Policy changes travel over pub/sub; on a cluster PUBLISH is broadcast to every node, so a
    watcher subscribed through one cluster client hears an announcement sent through another."""
    listener = redis_client(cluster.url, cluster=True)
    sender = redis_client(f"redis://127.0.0.1:{cluster.ports[-1]}/0", cluster=True)
    heard = anyio.Event()

    async def on_change() -> None:
        heard.set()

    try:
        # as membus.runtime.host.connect does: ClusterPubSub needs the slot map loaded first
        assert isinstance(listener, RedisCluster)
        await listener.initialize()
        watcher = PolicyWatcher(listener, resync_s=30)
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run, on_change)
            with anyio.fail_after(10):
                await PolicyWatcher(sender).announce("rev-2")
                await heard.wait()
            tg.cancel_scope.cancel()
    finally:
        await listener.aclose()
        await sender.aclose()


@pytest.mark.slow
def test_cluster_nodes_are_torn_down(tmp_path: Path) -> None:
    """The helper leaves no redis-server behind: after stop every node's port refuses."""
    if binaries() is None:
        pytest.skip("redis-server and redis-cli are needed to build a Redis Cluster")
    proc = ClusterProcess(tmp_path / "c", masters=3).start()
    ports = list(proc.ports)
    proc.stop()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
