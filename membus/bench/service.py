"""The HTTP row of ``membus bench``: the service over the bench's own bus, on localhost.

The service runs in this process (uvicorn on a socket bound to a free 127.0.0.1 port) and the
client is ``membus.Client``, so an HTTP figure is the in-process figure plus JSON, HTTP and the
client, all sharing one event loop and one GIL with the bus and its writers. Rate limiting is
off and the backpressure threshold out of reach: the row measures the API, not its guards.

Every HTTP figure is taken interleaved with its in-process counterpart (same texts, alternating
order), so both see the same store state and the same background load.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, closing
from typing import Any

import anyio
import uvicorn
from rich.progress import Progress
from rich.table import Table

from membus.access.gate import Gate
from membus.bench import raw
from membus.bench.gates import RECALL_K, Door
from membus.bus.api import Bus
from membus.bus.draft import Draft
from membus.service.app import create_app
from membus.service.auth import ApiKeys, new_key
from membus.service.client import Client
from membus.service.limits import Limits

AGENT = "bench-http"
BATCH = 100  # drafts per publish_many, in process and over HTTP alike
WARMUP = 5
# no rate limit and no backpressure: a guard tripping would measure the guard
LIMITS = Limits(rate_per_s=1e9, burst=1_000_000_000, backlog_threshold=1_000_000_000)


@asynccontextmanager
async def serve(bus: Bus) -> AsyncIterator[Client]:
    """The service over ``bus`` on a free localhost port; yields a client with a fresh key."""
    key = new_key()
    app = create_app(bus, ApiKeys.from_keys({key: (raw.TENANT, AGENT)}), LIMITS)
    # Bound here and handed over: no window in which another process could take the port.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says so (proto 0 would cost ~40 ms per response: Nagle meets delayed ACK).
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                with anyio.fail_after(10):
                    while not server.started:  # noqa: ASYNC110 (uvicorn has no started event)
                        await anyio.sleep(0.01)
                async with Client(f"http://127.0.0.1:{port}", key, timeout_s=60) as client:
                    yield client
            finally:
                server.should_exit = True


def recall_door(client: Client, bus: Bus, gate: Gate) -> Door:
    """Recall over HTTP with ``gate`` on the bus (the open one: compared with open in-process)."""

    async def door(text: str) -> int:
        bus.gate = gate
        # every hit up to k, as the raw engine returns: no relevance threshold
        return len(await client.recall(text, k=RECALL_K, scopes=[raw.RECALL_SCOPE], min_score=0.0))

    return door


async def publish_phase(
    bus: Bus, client: Client, singles: int, batches: int, progress: Progress
) -> dict[str, float]:
    """Single-publish latency and batched publish throughput, in process and over HTTP.

    Throughput is events per second of a median publish call (into the stream), not ingest
    (that is ``ingest_events_per_s``). Each batch starts with the writers drained
    (untimed): the writers share this process, and a batch racing the previous one's
    ingest would measure the writers, leaving both doors equally slow and the ratio near 1.
    """
    task = progress.add_task("publish: in-process vs HTTP", total=2 * (singles + batches))
    try:
        return await _publish(bus, client, singles, batches, lambda: progress.advance(task))
    finally:
        progress.remove_task(task)


async def _publish(
    bus: Bus, client: Client, singles: int, batches: int, tick: Callable[[], None]
) -> dict[str, float]:
    agent = bus.agent(AGENT, raw.TENANT)  # the key's identity: the same audit records
    one = [
        (d.content, d.scope, d.model_dump(exclude={"content", "scope"}, exclude_none=True))
        for d in raw.drafts(2 * (singles + WARMUP), seed=31)
    ]
    for content, scope, fields in one[: 2 * WARMUP]:
        await agent.publish(content, scope, **fields)
        await client.publish(content, scope, **fields)
    lat: dict[str, list[float]] = {"local": [], "http": []}
    for i, (content, scope, fields) in enumerate(one[2 * WARMUP :]):
        t0 = time.perf_counter()
        if _turn(i) == "local":
            await agent.publish(content, scope, **fields)
        else:
            await client.publish(content, scope, **fields)
        lat[_turn(i)].append(time.perf_counter() - t0)
        tick()
    many = raw.drafts(2 * batches * BATCH, seed=41)
    spent: dict[str, list[float]] = {"local": [], "http": []}
    for i in range(2 * batches):
        chunk: Sequence[Draft] = many[i * BATCH : (i + 1) * BATCH]
        await bus.drain(timeout_s=60, poll_s=0.002)
        t0 = time.perf_counter()
        if _turn(i) == "local":
            await agent.publish_many(chunk)
        else:
            await client.publish_many(chunk)
        spent[_turn(i)].append(time.perf_counter() - t0)
        tick()
    out = {}
    for door in ("local", "http"):
        out[f"{door}_p50"] = raw.percentiles(lat[door])[0]
        # from the median batch: one stall on a shared machine must not decide a mean
        out[f"{door}_rate"] = BATCH * 1000.0 / raw.percentiles(spent[door])[0]
    return out


def _turn(i: int) -> str:
    """Alternate doors, and who goes first in each pair (local-http, http-local, ...): the same
    count for each, and neither always runs right after the other."""
    return "local" if (i + i // 2) % 2 == 0 else "http"


def http_figures(rec: Mapping[str, Any], pub: Mapping[str, float]) -> dict[str, Any]:
    """The HTTP keys of the result; each has its in-process counterpart and their ratio."""
    http, hits = rec["doors"]["http"]
    p50, p99 = raw.percentiles(http)

    def r(x: float) -> float:
        return round(float(x), 3)

    return {
        "http_recall_p50_ms": r(p50),
        "http_recall_p99_ms": r(p99),
        "http_recall_ratio": r(p50 / rec["p50"]) if rec["p50"] else 0.0,
        "http_recall_hits_per_query": round(hits, 2),
        "publish_events_per_s": round(pub["local_rate"], 1),
        "http_publish_events_per_s": round(pub["http_rate"], 1),
        "http_publish_ratio": r(pub["http_rate"] / pub["local_rate"]),
        "publish_p50_ms": r(pub["local_p50"]),
        "http_publish_p50_ms": r(pub["http_p50"]),
        "http_publish_latency_ratio": r(pub["http_p50"] / pub["local_p50"]),
        "http_batch": BATCH,
    }


def http_rows(table: Table, res: dict[str, Any]) -> None:
    n = res["memories"]
    rows = (
        (
            f"HTTP publish_many x{BATCH}, events/s (vs in-process)",
            "http_publish_events_per_s",
            "publish_events_per_s",
            "http_publish_ratio",
            ",.0f",
        ),
        (
            "HTTP publish p50, ms (vs in-process)",
            "http_publish_p50_ms",
            "publish_p50_ms",
            "http_publish_latency_ratio",
            ".2f",
        ),
        (
            f"HTTP recall p50 @ {n:,}, ms (vs in-process)",
            "http_recall_p50_ms",
            "recall_p50_ms",
            "http_recall_ratio",
            ".2f",
        ),
    )
    for label, mine, base, ratio, fmt in rows:
        table.add_row(label, format(res[mine], fmt), format(res[base], fmt), f"{res[ratio]:.2f}x")
    p99, base = res["http_recall_p99_ms"], res["recall_p99_ms"]
    table.add_row(
        f"HTTP recall p99 @ {n:,}, ms (vs in-process)",
        f"{p99:.2f}",
        f"{base:.2f}",
        f"{p99 / base:.2f}x" if base else "-",
    )
