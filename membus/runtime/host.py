"""Assembling a running bus: ``membus.open()`` (async) and the pieces the CLI reuses.

The embedded default needs no servers: a redis-server child on a unix socket, a Qdrant Edge store
and writer tasks, all under one directory and owned by this process. Pointing ``config.redis.url``
or ``config.store`` elsewhere connects to external services instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from membus.access.audit import AuditLog
from membus.access.gate import Gate, default_gate
from membus.access.policy import CasbinGate
from membus.access.signing import MASTER_FILE, KeyRegistry, door_keys, writer_keys
from membus.access.watch import FileSource, PolicySource, PolicyWatcher, RedisSource
from membus.bus.api import Bus
from membus.core.config import (
    DEFAULT_PATH as DEFAULT_PATH,
)
from membus.core.config import (
    EMBEDDED_WORKER as EMBEDDED_WORKER,
)
from membus.core.config import (
    MembusConfig,
    PolicyConfig,
)
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, redis_client, unavailable
from membus.embed.port import Embedder
from membus.embed.registry import embedder_for
from membus.errors import InvalidInput
from membus.runtime.embedded import EmbeddedRedis, socket_path
from membus.runtime.writers import WriterProcesses
from membus.store import remote as store_remote
from membus.store.edge import EdgeStore
from membus.store.port import Store, StoreMeta
from membus.store.remote import RemoteStore
from membus.store.sealed import SealedStore
from membus.stream.datakeys import RedisKeyStore
from membus.stream.ops import tenants
from membus.writer import expiry
from membus.writer.llm import make_consolidator
from membus.writer.relevel import relevel
from membus.writer.worker import Writer, consumer_name


def store_socket(root: Path) -> Path:
    """Where an embedded bus serves its shard to its writer processes."""
    return socket_path(root.absolute(), "store.sock")


def make_store(config: MembusConfig, root: Path) -> Store:
    if config.store.engine == "edge":
        return EdgeStore(config.store.path or root / "store", config.store.optimize_every)
    if config.store.engine == "remote":
        if config.store.path is None:
            raise InvalidInput("a remote store needs store.path: the socket of the bus serving it")
        return RemoteStore(config.store.path)
    from membus.store.qdrant import QdrantStore

    store: Store = QdrantStore(
        url=config.store.url or "http://localhost:6333",
        api_key=config.store.api_key,
        collection=config.store.collection,
    )
    return store


def make_writers(
    redis: Redis,
    store: Store,
    embedder: Embedder,
    config: MembusConfig,
    n: int,
    gate: Gate,
    keys: KeyRegistry,
) -> list[Writer]:
    """``n`` writers for this process; the first also applies retention (one is enough). They
    share one LLM consolidator when one is configured."""
    llm = make_consolidator(config.consolidation.llm)
    return [
        Writer(
            redis,
            store,
            embedder,
            config.worker,
            consumer=consumer_name(i),
            retention=config.retention if i == 0 else None,
            gate=gate,
            keys=keys,
            consolidation=config.consolidation,
            llm=llm,
        )
        for i in range(n)
    ]


async def make_gate(policy: PolicyConfig, redis: Redis) -> Gate:
    """The casbin gate when a policy is configured, else the one ``policy.mode`` names
    (private by default, open when asked)."""
    if policy.file is None and not policy.shared:
        return default_gate(policy)
    watcher = PolicyWatcher(redis, resync_s=policy.resync_s)
    source: PolicySource
    if policy.shared:
        source = RedisSource(redis)
        if policy.file is not None:
            await source.seed(policy.file.read_text())
    else:
        assert policy.file is not None
        source = FileSource(policy.file)
    gate = CasbinGate(source, watcher=watcher)
    await gate.reload()  # warm now: the first request must not build role graphs
    return gate


@asynccontextmanager
async def connect(
    config: MembusConfig, root: Path, embedder: Embedder | None = None
) -> AsyncIterator[tuple[Redis, Store, Embedder]]:
    """Open store, Redis (embedded unless configured) and embedder; close them in reverse."""
    async with AsyncExitStack() as stack:
        embedder = embedder or embedder_for(config.embedder)
        store = make_store(config, root)
        # the store first: its lock is what tells a second process this directory is taken
        await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
        stack.push_async_callback(store.close)
        url = config.redis.url
        if url is None:
            server = EmbeddedRedis(root / "redis")
            # On the event loop's thread, not a worker thread: PR_SET_PDEATHSIG fires when the
            # *thread* that forked the child exits, and anyio retires idle worker threads after
            # 10 s, which killed the embedded redis-server under a long-running bus.
            url = server.start()
            stack.callback(server.stop)
        client = redis_client(url, config.redis.socket_timeout_s, cluster=config.redis.cluster)
        stack.push_async_callback(client.aclose)
        if isinstance(client, RedisCluster):
            # learn the slot map now: an unreachable cluster fails here, typed, and pub/sub
            # (the policy watcher) needs the map before any other command has loaded it
            try:
                await client.initialize()
            except (RedisClusterException, *REDIS_DOWN) as exc:
                raise unavailable(exc) from exc
        # what the store persists is sealed under data keys kept in Redis: forget destroys them
        yield client, SealedStore(store, RedisKeyStore(client)), embedder


async def maintain_loop(
    store: Store,
    writers: list[Writer],
    stop: anyio.Event,
    activity: Callable[[], int] | None = None,
    *,
    build_under_load_s: float = 300.0,
    every_s: float = 2.0,
    quiet_s: float = 5.0,
) -> None:
    """Index builds take the cores and pause writes while they copy the shard, so run them
    after writers have been quiet ``quiet_s`` (``activity``: a count that moves while they
    write; by default what they processed and the near-duplicate slots they looked at). Under
    writing that never pauses that long the points not yet indexed are searched exactly, and
    every recall slows with their number, so builds also come once every
    ``build_under_load_s`` and, every round, as soon as the store finds one due while busy
    (``Store.maintain(busy=True)``; Edge: twice ``optimize_every`` unindexed), which bounds
    them whatever the write rate. The TTL sweep (cheap, one ZRANGEBYSCORE per tenant when
    nothing expired) runs every round, and each tenant's one-time per-clearance rewrite
    (``membus.writer.relevel``) in the first."""
    last_total, quiet_since = -1, time.monotonic()
    tried_at = time.monotonic()  # the last round that let the store build
    levelled: set[str] = set()  # tenants whose keyed slots carry per-clearance validity
    while not stop.is_set():
        with anyio.move_on_after(every_s):
            await stop.wait()
        c = writers[0].consolidator if writers else None
        if c is not None:
            try:
                for tenant in set(await tenants(c.redis)) - levelled:
                    await relevel(c, tenant)  # once: a store from before per-clearance validity
                    levelled.add(tenant)
            except Exception as exc:  # housekeeping: logged, retried next round, never fatal
                get_logger("membus.relevel").warning("relevel.failed", error=repr(exc))
        if c is not None and (c.config.ttl_by_kind or c.config.ttl_by_scope):
            try:
                for tenant in await tenants(c.redis):
                    await expiry.sweep(c, tenant)
            except Exception as exc:  # housekeeping: logged, retried next round, never fatal
                get_logger("membus.expiry").warning("expiry.failed", error=repr(exc))
        # the near-duplicate pass after a bulk ingest is writer work too: an index build
        # started under it would compete with it for the cores
        total = activity() if activity else sum(w.processed + w.neardup.swept for w in writers)
        now = time.monotonic()
        if total != last_total:
            last_total, quiet_since = total, now
            if now - tried_at < build_under_load_s:
                await store.maintain(busy=True)  # cheap unless a build is due (see above)
                continue
        elif now - quiet_since <= quiet_s:
            continue
        await store.maintain()  # builds only past ``StoreConfig.optimize_every`` unindexed
        tried_at = time.monotonic()


def _maintenance(
    store: Store,
    writers: list[Writer],
    stop: anyio.Event,
    config: MembusConfig,
    activity: Callable[[], int] | None = None,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """``maintain_loop`` as configured, for a task group to start."""
    return partial(
        maintain_loop,
        store,
        writers,
        stop,
        activity,
        build_under_load_s=config.store.build_under_load_s,
    )


@asynccontextmanager
async def open(
    path: str | Path = DEFAULT_PATH,
    config: MembusConfig | None = None,
    *,
    embedder: Embedder | None = None,
    gate: Gate | None = None,
) -> AsyncIterator[Bus]:
    """Open a bus; on the embedded default, everything lives under ``path``."""
    config = config or MembusConfig()
    if config.redis.url is None and "worker" not in config.model_fields_set:
        # the embedded default's writers all live in this process: a custom config that says
        # nothing of them keeps the embedded defaults (fast retry, quick parking)
        config = config.model_copy(update={"worker": EMBEDDED_WORKER})
    root = Path(path)
    log = get_logger("membus.runtime")
    async with connect(config, root, embedder) as (client, store, emb):
        gate = gate or await make_gate(config.policy, client)
        audit = AuditLog(client)
        keys = door_keys(client, config.signing, root / MASTER_FILE)
        if config.signing.authority is None and keys.authority is not None:
            # writer processes pin the authority this door certifies with
            signing = config.signing.model_copy(update={"authority": keys.authority.hex()})
            config = config.model_copy(update={"signing": signing})
        bus = Bus(client, store, emb, config, gate, audit, keys)
        stop = anyio.Event()
        engine = store.inner if isinstance(store, SealedStore) else store
        apart = config.writer_processes if isinstance(engine, EdgeStore) else 0
        if config.writer_processes and not apart:  # processes of their own: `membus worker`
            log.warning("bus.writer_processes_ignored", reason="only for the embedded Edge store")
        writers = (
            []
            if apart
            else make_writers(client, store, emb, config, config.writers, gate, bus.keys)
        )
        children: WriterProcesses | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(audit.run)
            await tg.start(bus.access_log.run)
            if isinstance(gate, CasbinGate):
                await tg.start(gate.watch)
            for w in writers:
                tg.start_soon(w.run, stop)
            if writers:
                tg.start_soon(_maintenance(store, writers, stop, config))
            if apart:  # the shard stays here; writers run in child processes
                # the children's rows arrive sealed: the shard is served as it is
                assert isinstance(engine, EdgeStore)
                sock = store_socket(root)
                meta = StoreMeta(embedder=emb.name, dim=emb.dim)
                await tg.start(store_remote.serve, engine, meta, sock)
                url = config.redis.url or EmbeddedRedis(root / "redis").url
                children = WriterProcesses(config, url, sock, apart)
                await tg.start(children.run)
                tg.start_soon(_maintenance(store, [], stop, config, lambda: engine.writes))
            log.info("bus.open", path=str(root), writers=len(writers), processes=apart)
            raised: Exception | None = None
            try:
                yield bus
            except Exception as exc:
                # kept aside and re-raised below: inside the task group it would surface as an
                # ExceptionGroup, and callers should catch InvalidInput, not a group of one
                raised = exc
            finally:
                stop.set()
                if children is not None:
                    await children.aclose()  # before the shard and Redis go
                await audit.aclose()  # flushes what is buffered; ends its flusher
                await bus.access_log.aclose()
                tg.cancel_scope.cancel()  # the policy watcher runs until cancelled
        log.info("bus.closed", path=str(root))
        if raised is not None:
            raise raised


async def run_writers(
    redis: Redis,
    store: Store,
    embedder: Embedder,
    config: MembusConfig,
    stop: anyio.Event,
    started: Callable[[], None] | None = None,
) -> list[Writer]:
    """``config.writers`` writers (and their housekeeping) until ``stop``, with a gate of their
    own: ``membus worker`` and an embedded bus's writer processes."""
    # writers re-ask the gate for every event, so they follow the same policy as the doors
    gate = await make_gate(config.policy, redis)
    keys = writer_keys(redis, config.signing)
    writers = make_writers(redis, store, embedder, config, config.writers, gate, keys)
    async with anyio.create_task_group() as outer:
        if isinstance(gate, CasbinGate):
            await outer.start(gate.watch)  # policy changes from other processes
        if started is not None:
            started()
        async with anyio.create_task_group() as tg:
            for w in writers:
                tg.start_soon(w.run, stop)
            tg.start_soon(_maintenance(store, writers, stop, config))
        outer.cancel_scope.cancel()
    return writers
