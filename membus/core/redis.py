"""Connecting to Redis, one server or a cluster, and what an outage looks like to membus.

Every layer that talks to Redis takes the ``Redis`` type from here and maps a dropped
connection to ``membus.Unavailable`` the same way (``REDIS_DOWN``, ``unavailable``).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from membus.errors import InvalidInput, Unavailable

# One Redis or a Redis Cluster: every multi-key operation membus does touches one tenant's keys,
# which share a hash tag (one slot), except the writer's read over all tenants (worker.py reads
# per stream on a cluster) and publish (a non-transactional pipeline, split by node).
Redis = aioredis.Redis | RedisCluster
Pipe = Pipeline | ClusterPipeline
# ClusterDownError: a cluster that lost a master or is resharding answers CLUSTERDOWN; retry.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError)


def redis_client(url: str, socket_timeout_s: float = 10.0, *, cluster: bool = False) -> Redis:
    """The one way membus connects. ``surrogateescape`` lets a non-UTF-8 entry decode (and be
    written back to the dead-letter stream byte for byte) instead of crashing the reader.

    ``cluster``: ``url`` names one node of a Redis Cluster; the client discovers the rest.
    """
    if cluster:
        # MULTI/EXEC on a cluster (writer commit, DLQ, erasure) needs an async ClusterPipeline
        # with transactions, which older redis-py releases lack
        if not hasattr(aiocluster, "TransactionStrategy"):
            raise InvalidInput("Redis Cluster needs a newer redis-py (async cluster transactions)")
        return RedisCluster.from_url(
            url,
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=socket_timeout_s,
        )
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=socket_timeout_s,
    )


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


class NodeClients:
    """Plain clients to a cluster's masters, one each, for MULTI/EXEC on one slot at full speed.

    redis-py's async ``ClusterPipeline(transaction=True)`` is correct (WATCH included) but runs
    every queued command through a new thread with its own event loop, ~0.5 ms a command: a
    256-event writer commit took ~150 ms, draining 1500 events 7 s instead of 0.6 s. The
    writer's commit goes to the slot's master directly instead. With a stale slot map (a
    resharding) that master answers MOVED/ASK before anything is applied; the caller then calls
    ``refresh`` and falls back to the cluster pipeline, which follows redirections itself.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._clients: dict[str, aioredis.Redis] = {}

    def for_key(self, key: str) -> aioredis.Redis:
        node = self.cluster.get_node_from_key(key)
        assert node is not None  # a master always (None only when asking for a replica)
        client = self._clients.get(node.name)
        if client is None:
            # the very settings the cluster client opens its own connections to this node with
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            client = self._clients[node.name] = aioredis.Redis(connection_pool=pool)
        return client

    async def refresh(self) -> None:
        """Reload the slot map (after a redirection) and drop clients of departed masters."""
        await self.cluster.nodes_manager.initialize()
        masters = {n.name for n in self.cluster.get_primaries()}
        for name in [n for n in self._clients if n not in masters]:
            await self._clients.pop(name).aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"redis unavailable: {exc}")


def decode_fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in fields.items()
    }


def node_of(redis: Redis, key: str) -> dict[str, Any]:
    """Keyword arguments that send a server command (CONFIG, BGREWRITEAOF) to the node holding
    ``key``: on a cluster only that master has the tenant's keys; one Redis needs none."""
    if isinstance(redis, RedisCluster):
        return {"target_nodes": redis.get_node_from_key(key)}
    return {}


async def rewrite_aof(redis: Redis, key: str) -> str:
    """Ask Redis to rewrite its AOF, so what was just deleted leaves the disk too (best effort).

    Until the rewrite, the AOF on disk still holds every command since the last one, deleted
    data included. On a cluster only the master owning ``key``'s slot held the tenant's keys, so
    only it rewrites. Returns started | in_progress | off (AOF disabled) | failed.
    """
    target = node_of(redis, key)
    try:
        conf = await redis.config_get("appendonly", **target)
        if conf.get("appendonly") == "no":
            return "off"
    except ResponseError:
        pass  # CONFIG disabled (managed Redis, an ACL user): try anyway
    try:
        await redis.execute_command("BGREWRITEAOF", **target)
        return "started"
    except ResponseError as exc:
        return "in_progress" if "in progress" in str(exc) else "failed"
