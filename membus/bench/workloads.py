"""``membus bench --workload one-scope|semantic``: the shapes users have, each beside raw engines
measured in the same run (``varied``, the multi-scope bench, is ``membus.bench.run``).

one-scope (hashing embedder): a team's notes in one scope, words drawn from one Zipf-distributed
vocabulary (``membus.bench.zipf``). Ingest with its CPU seconds per event summed over every
process (host, redis-server, writer processes) beside the CPU of a raw Edge upsert of the same
point shape; recall at a small size and at full size, each query through ``Agent.recall`` and as
a raw Edge hybrid query (dense and lexical prefetch under the same filter, RRF fusion) on the same
shard, interleaved; recall while the index builds in the background (the worst latency); memory
and disk.

semantic (MiniLM): the embedder's own batched throughput first, then ingest to searchable with
consolidation and the near-duplicate pass, the cost of embedding one query, recall beside the
raw hybrid query, memory and disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import qdrant_edge as q
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from membus.bench import raw, usage, zipf
from membus.bench.gates import RECALL_K, Door, time_doors
from membus.bench.peer import run_peer
from membus.bench.run import (
    MANUAL_BUILDS,
    PUBLISH_BATCH,
    _ingest,
    _optimize,
    _progress,
    _version,
    run_bench,
    warm_up,
)
from membus.bus.api import Bus
from membus.core.config import (
    ConsolidationConfig,
    EmbedderConfig,
    MembusConfig,
    PolicyConfig,
    default_writers,
)
from membus.core.logs import warnings_to_stderr
from membus.embed.port import Embedder
from membus.embed.registry import embedder_for
from membus.embed.semantic import default_threads
from membus.errors import InvalidInput, MembusError
from membus.runtime import host as runtime
from membus.store import sparse
from membus.store.edge_query import filter_of
from membus.store.filters import spec
from membus.store.port import RecallFilter

TARGET_RECALL_P50_RATIO = 3.0
TARGET_RECALL_P99_RATIO = 10.0
TARGET_BUILD_RECALL_MAX_MS = 100.0
TARGET_CPU_RATIO = 2.5
TARGET_SEMANTIC_INGEST_RATIO = 0.85
TARGET_QUERY_EMBED_P50_MS = 8.0
TARGET_PEER_INGEST_RATIO = 3.0  # membus ingest over Mem0 add(infer=False), consolidation included
TARGET_PEER_SEARCH_SPEEDUP = 10.0  # Mem0 search p50 over membus recall p50
READER = "bench-reader"
_VECTOR = "dense"


@dataclass(frozen=True)
class Plan:
    """How big a run is."""

    memories: int
    small: int  # the first recall point
    queries: int
    quick: bool


def one_scope_plan(memories: int, quick: bool) -> Plan:
    if quick:
        n = min(memories, 2_000)
        return Plan(n, n // 2, 100, True)
    return Plan(memories, min(10_000, memories // 2), 500, False)


def semantic_plan(memories: int, quick: bool) -> Plan:
    if quick:
        n = min(memories, 300)
        return Plan(n, n, 50, True)
    return Plan(memories, memories, 200, False)


@contextlib.asynccontextmanager
async def bench_bus(
    path: Path, emb: EmbedderConfig, writers: int | None = None, processes: int = 0
) -> AsyncIterator[Bus]:
    config = MembusConfig(
        policy=PolicyConfig(mode="open"),
        worker=runtime.EMBEDDED_WORKER,
        writers=default_writers(emb.name) if writers is None else writers,
        writer_processes=processes,
        embedder=emb,
        consolidation=ConsolidationConfig(),
        store=MANUAL_BUILDS,
    )
    async with runtime.open(path, config) as bus:
        await warm_up(bus)
        yield bus


RRF_K = 60  # the usual reciprocal-rank constant (Qdrant's default)


def hybrid_request(embedder_name: str, vector: Sequence[float], text: str, where: Any) -> Any:
    """The raw engine's hybrid query: a dense and a lexical prefetch under ``where``, fused by
    Qdrant's reciprocal rank fusion, top ``RECALL_K`` with payloads. No corpus IDF correction,
    no calibrated score and no rerank formula: what a caller of Edge writes by hand, with the
    filter once on the request (Qdrant merges it into both branches; ``edge_query.ranked``).
    (``embedder_name`` is kept for the callers: the raw query does not depend on it.)"""
    terms = sparse.query(text)
    limit = sparse.prefetch_limit(RECALL_K)
    branches = [
        q.Prefetch(limit=limit, query=q.Query.Nearest(list(vector), using=_VECTOR)),
        q.Prefetch(
            limit=limit,
            query=q.Query.Nearest(q.SparseVector(terms.indices, terms.values), using=sparse.VECTOR),
        ),
    ]
    rrf: Any = q.Fusion.Rrf(k=RRF_K)
    return q.QueryRequest(
        limit=RECALL_K, prefetches=branches, query=rrf, filter=where, with_payload=True
    )


def _doors(bus: Bus, scope: str, texts: Sequence[str]) -> dict[str, Door]:
    """``Agent.recall`` and the raw hybrid query on the bus's shard, each given a query text.
    The raw door's query vectors are embedded beforehand: it times the engine alone."""
    agent = bus.agent(READER, raw.TENANT)
    shard = raw.edge_shard(bus.store)
    where = filter_of(spec(RecallFilter(tenant=raw.TENANT, scopes=[scope])))
    vectors = bus.embedder.embed(list(texts))
    requests = {
        t: hybrid_request(bus.embedder.name, v.tolist(), t, where)
        for t, v in zip(texts, vectors, strict=True)
    }

    async def membus_door(text: str) -> int:
        # every hit up to k, as the raw engine returns: no relevance threshold
        return len(await agent.recall(text, k=RECALL_K, scopes=[scope], min_score=0.0))

    async def raw_door(text: str) -> int:
        return len(shard.query(requests[text]))

    return {"membus": membus_door, "raw": raw_door}


async def recall_pair(
    bus: Bus, scope: str, texts: Sequence[str], progress: Progress, label: str
) -> dict[str, float]:
    """Each query through membus and the raw hybrid query, interleaved: p50/p99 of both (ms)."""
    task = progress.add_task(label, total=len(texts))
    try:
        got = await time_doors(_doors(bus, scope, texts), texts, lambda: progress.advance(task))
    finally:
        progress.remove_task(task)
    p50, p99 = raw.percentiles(got["membus"][0])
    r50, r99 = raw.percentiles(got["raw"][0])
    return {
        "p50": p50,
        "p99": p99,
        "max": max(got["membus"][0]) * 1000,
        "raw_p50": r50,
        "raw_p99": r99,
        "hits": got["membus"][1] / len(texts),
    }


async def recall_while_building(
    bus: Bus, scope: str, texts: Sequence[str], progress: Progress, every_s: float = 0.05
) -> dict[str, float]:
    """Recall while the HNSW build runs as the runtime runs it (a worker thread), open loop:
    one recall due every ``every_s``, each timed from when it was due, as requests arriving
    from outside would be. A stall of the event loop (Edge's build holds the GIL) then counts
    against every recall that arrives during it, not only the one in flight. Returns the
    build's seconds and the worst and median recall latency (ms)."""
    agent = bus.agent(READER, raw.TENANT)
    task = progress.add_task("recall during index build", total=None)
    lat: list[float] = []
    built = anyio.Event()
    build_s = 0.0
    failed = 0

    async def build() -> None:
        nonlocal build_s
        t0 = time.perf_counter()
        await bus.store.optimize()  # type: ignore[attr-defined]
        build_s = time.perf_counter() - t0
        built.set()

    async def one(text: str, due: float) -> None:
        nonlocal failed
        try:
            await agent.recall(text, k=RECALL_K, scopes=[scope], min_score=0.0)
        except MembusError:
            # the loop stood still past the Redis socket timeout: the recall failed
            failed += 1
        lat.append(time.perf_counter() - due)

    async with anyio.create_task_group() as tg:
        tg.start_soon(build)
        start, i = time.perf_counter(), 0
        async with anyio.create_task_group() as recalls:
            while True:  # at least one recall, however short the build
                due = start + i * every_s
                # after a stall the first recall due in it goes at once (its latency holds the
                # stall); always yield, so the build's end is seen before a burst of catch-up
                await anyio.sleep(max(0.0, due - time.perf_counter()))
                recalls.start_soon(one, texts[i % len(texts)], due)
                i = max(i + 1, int((time.perf_counter() - start) / every_s))
                if built.is_set():
                    break
    progress.remove_task(task)
    p50, _ = raw.percentiles(lat)
    top = max(lat) * 1000 if lat else 0.0
    return {"build_s": build_s, "max": top, "p50": p50, "n": len(lat), "failed": failed}


async def recall_unbuilt(
    bus: Bus, scope: str, texts: Sequence[str], progress: Progress, n: int = 40
) -> dict[str, float]:
    """Recall just before a build, one at a time (closed loop): what a recall costs on the
    points not indexed yet, exact search over them. When that nears the 50 ms between the
    open-loop recalls of ``recall_while_building``, a queue forms there whatever the stalls.
    Returns the points waiting unindexed and the p50 and max (ms)."""
    agent = bus.agent(READER, raw.TENANT)
    unindexed = bus.store.unindexed()  # type: ignore[attr-defined]
    task = progress.add_task("recall before the index build", total=n)
    lat: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        await agent.recall(texts[i % len(texts)], k=RECALL_K, scopes=[scope], min_score=0.0)
        lat.append(time.perf_counter() - t0)
        progress.advance(task)
    progress.remove_task(task)
    p50, _ = raw.percentiles(lat)
    return {"unindexed": unindexed, "p50": p50, "max": max(lat) * 1000}


def raw_upsert_cpu(store: raw.RawStore, n: int, batch: int) -> tuple[float, float]:
    """(points/s, CPU seconds per point) of a raw Edge upsert of ``n`` points, in this process
    with nothing else running (``process_time`` counts every thread of the process)."""
    c0 = time.process_time()
    rate = store.upsert(n, batch)
    return rate, (time.process_time() - c0) / n


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


# -- one scope ------------------------------------------------------------------------------------


async def one_scope(root: Path, plan: Plan, progress: Progress) -> dict[str, Any]:
    emb = EmbedderConfig(name="hashing")
    everything = zipf.drafts(plan.memories)
    texts = zipf.queries(plan.queries)
    batch = runtime.EMBEDDED_WORKER.batch_size
    store = await raw.RawStore.open(
        root / "raw-store", f"raw-{emb.name}", emb.dim, everything[: raw.POOL]
    )
    try:
        n_raw = min(plan.memories, 20_000)  # a rate; its size does not change it much
        task = progress.add_task("raw edge: upsert", total=None)
        raw_rate, raw_cpu = raw_upsert_cpu(store, n_raw, batch)
        progress.remove_task(task)
    finally:
        await store.close()
    async with bench_bus(root / "bus", emb) as bus:
        before = usage.snapshot()
        small, rest = everything[: plan.small], everything[plan.small :]
        t0 = time.perf_counter()
        _, pass_small = await _ingest(bus, small, progress, f"ingest 0..{plan.small}")
        t_small = time.perf_counter() - t0
        cpu_small = usage.snapshot().cpu_s - before.cpu_s
        build_small = await _optimize(bus, progress, f"index build @ {plan.small}")
        rec_small = await recall_pair(bus, zipf.SCOPE, texts, progress, f"recall @ {plan.small}")
        mid = usage.snapshot()
        t1 = time.perf_counter()
        _, pass_rest = await _ingest(bus, rest, progress, f"ingest ..{plan.memories}")
        t_rest = time.perf_counter() - t1
        cpu_rest = usage.snapshot().cpu_s - mid.cpu_s
        unbuilt = await recall_unbuilt(bus, zipf.SCOPE, texts, progress)
        during = await recall_while_building(bus, zipf.SCOPE, texts, progress)
        phases = bus.store.last_build  # type: ignore[attr-defined]
        rec = await recall_pair(bus, zipf.SCOPE, texts, progress, f"recall @ {plan.memories}")
        mem = usage.snapshot()
        committed = await bus.store.count(raw.TENANT) - 1  # minus the warm-up event
        await bus.store.flush()  # type: ignore[attr-defined]
        real, apparent = usage.disk(root / "bus")
    ingest = plan.memories / (t_small + t_rest)
    cpu_event = (cpu_small + cpu_rest) / plan.memories
    return {
        "workload": "one-scope",
        "memories": plan.memories,
        "memories_committed": committed,
        "quick": plan.quick,
        "embedder": emb.name,
        "vocabulary": zipf.VOCABULARY,
        "zipf_exponent": zipf.EXPONENT,
        "ingest_events_per_s": _r(ingest, 1),
        "raw_upsert_points_per_s": _r(raw_rate, 1),
        "ingest_ratio": _r(ingest / raw_rate),
        "near_duplicate_pass_s": _r(pass_small + pass_rest),
        # every process: host (writers, shard), redis-server, writer processes
        "cpu_ms_per_event": _r(cpu_event * 1000, 4),
        "raw_upsert_cpu_ms_per_point": _r(raw_cpu * 1000, 4),
        "cpu_ratio": _r(cpu_event / raw_cpu) if raw_cpu else 0.0,
        "recall_10k_memories": plan.small,
        "index_build_10k_s": _r(build_small),
        **_recall_keys("recall_10k_", rec_small),
        **_recall_keys("recall_", rec),
        "recall_ratio_p50": _r(rec["p50"] / rec["raw_p50"]) if rec["raw_p50"] else 0.0,
        "recall_ratio_p99": _r(rec["p99"] / rec["raw_p99"]) if rec["raw_p99"] else 0.0,
        "index_build_s": _r(during["build_s"]),
        "recall_during_build_max_ms": _r(during["max"]),
        "recall_during_build_p50_ms": _r(during["p50"]),
        "recall_during_build_count": int(during["n"]),
        "recall_during_build_failed": int(during["failed"]),
        # recall one at a time just before the build, on the points waiting unindexed
        "unindexed_before_build": int(unbuilt["unindexed"]),
        "recall_unbuilt_p50_ms": _r(unbuilt["p50"]),
        "recall_unbuilt_max_ms": _r(unbuilt["max"]),
        # the build's steps (``BuildPhases``): flush, load and close hold the GIL in this process
        "index_build_phases_s": {k: _r(v) for k, v in asdict(phases).items()},
        "index_build_stalled_s": _r(phases.stalled_s),
        "rss_mb": usage.mb(mem.rss_bytes),
        "host_rss_mb": usage.mb(mem.host_rss_bytes),
        "disk_mb": usage.mb(real),
        "disk_apparent_mb": usage.mb(apparent),
        "targets": {
            "recall_p50_le_3x_raw": rec["p50"] <= TARGET_RECALL_P50_RATIO * rec["raw_p50"],
            "recall_p99_le_10x_raw": rec["p99"] <= TARGET_RECALL_P99_RATIO * rec["raw_p99"],
            "recall_during_build_le_100ms": during["max"] <= TARGET_BUILD_RECALL_MAX_MS,
            "cpu_le_2_5x_raw": cpu_event <= TARGET_CPU_RATIO * raw_cpu,
        },
        **_about(),
    }


def _recall_keys(prefix: str, rec: dict[str, float]) -> dict[str, Any]:
    raw_prefix = prefix.replace("recall_", "raw_hybrid_")
    return {
        f"{prefix}p50_ms": _r(rec["p50"]),
        f"{prefix}p99_ms": _r(rec["p99"]),
        f"{prefix}max_ms": _r(rec["max"]),
        f"{raw_prefix}p50_ms": _r(rec["raw_p50"]),
        f"{raw_prefix}p99_ms": _r(rec["raw_p99"]),
        f"{prefix}hits_per_query": _r(rec["hits"], 2),
    }


def _about() -> dict[str, Any]:
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "membus_version": _version(),
    }


# -- semantic -------------------------------------------------------------------------------------


def embedder_throughput(embedder: Embedder, texts: Sequence[str], batch: int) -> float:
    """Sentences per second of ``embedder`` alone, in batches of ``batch`` (after a warm-up of
    one whole batch: ONNX opens the session for a batch's parallel runs on the first)."""
    embedder.embed(list(texts[:batch]))
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder.embed(list(texts[start : start + batch]))
    return len(texts) / (time.perf_counter() - t0)


def one_query_ms(embedder: Embedder, texts: Sequence[str]) -> tuple[float, float]:
    """p50 and p99 of embedding one text at a time (ms)."""
    for t in texts[:5]:
        embedder.embed([t])
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        embedder.embed([t])
        lat.append(time.perf_counter() - t0)
    return raw.percentiles(lat)


async def semantic(
    root: Path,
    plan: Plan,
    progress: Progress,
    runtime_name: str,
    threads: int,
    make: Callable[[EmbedderConfig], Embedder],
    writers: int | None = None,
) -> dict[str, Any]:
    emb = EmbedderConfig.model_validate(
        {"name": "minilm", "runtime": runtime_name, "threads": threads}
    )
    drafts = raw.semantic_drafts(plan.memories)
    contents = [d.content for d in drafts]
    queries = raw.queries(plan.queries)
    task = progress.add_task(f"embedder alone ({runtime_name}, {threads} thr)", total=None)
    alone = make(emb)
    t_load = time.perf_counter()
    alone.embed(["load"])
    load_s = time.perf_counter() - t_load
    own_before = embedder_throughput(alone, contents, runtime.EMBEDDED_WORKER.batch_size)
    q50, q99 = one_query_ms(alone, queries)
    del alone
    progress.remove_task(task)
    async with bench_bus(root / "bus", emb, writers) as bus:
        before = usage.snapshot()
        t0 = time.perf_counter()
        agent = bus.agent("bench-writer", raw.TENANT)
        task = progress.add_task("ingest + near-duplicates", total=None)
        for start in range(0, len(drafts), PUBLISH_BATCH):
            await agent.publish_many(drafts[start : start + PUBLISH_BATCH])
        # each poll is four or five Redis round trips from the process being timed: every
        # 20 ms, not 5, adds at most 20 ms to a run of a minute and loads it a quarter as much
        await bus.drain(timeout_s=600 + plan.memories / 5, poll_s=0.02, merges=True)
        elapsed = time.perf_counter() - t0
        progress.remove_task(task)
        cpu = usage.snapshot().cpu_s - before.cpu_s
        build = await _optimize(bus, progress, f"index build @ {plan.memories}")
        rec = await recall_pair(bus, raw.RECALL_SCOPE, queries, progress, "recall")
        mem = usage.snapshot()
        committed = await bus.store.count(raw.TENANT) - 1
        await bus.store.flush()  # type: ignore[attr-defined]
        real, apparent = usage.disk(root / "bus")
        writers = bus.config.writers
    # the embedder alone again, after: this machine's speed drifts within a run (the rate alone
    # read 151 to 193 texts/s in adjacent 3k runs of one code), and the ingest sits between
    task = progress.add_task(f"embedder alone again ({runtime_name}, {threads} thr)", total=None)
    alone = make(emb)
    own_after = embedder_throughput(alone, contents, runtime.EMBEDDED_WORKER.batch_size)
    del alone
    progress.remove_task(task)
    own = (own_before + own_after) / 2
    ingest = plan.memories / elapsed
    return {
        "workload": "semantic",
        "memories": plan.memories,  # events published
        "memories_committed": committed,  # after merges
        "quick": plan.quick,
        "embedder": "minilm",
        "embedder_runtime": runtime_name,
        "embedder_threads": threads,
        "writers": writers,
        "embedder_load_s": _r(load_s),
        "embedder_batched_per_s": _r(own, 1),  # the mean of before and after the ingest
        "embedder_batched_before_per_s": _r(own_before, 1),
        "embedder_batched_after_per_s": _r(own_after, 1),
        "ingest_events_per_s": _r(ingest, 1),
        "ingest_ratio": _r(ingest / own),
        "cpu_ms_per_event": _r(cpu / plan.memories * 1000, 3),
        "query_embed_p50_ms": _r(q50),
        "query_embed_p99_ms": _r(q99),
        "index_build_s": _r(build),
        **_recall_keys("recall_", rec),
        "recall_ratio_p50": _r(rec["p50"] / rec["raw_p50"]) if rec["raw_p50"] else 0.0,
        "rss_mb": usage.mb(mem.rss_bytes),
        "host_rss_mb": usage.mb(mem.host_rss_bytes),
        "disk_mb": usage.mb(real),
        "disk_apparent_mb": usage.mb(apparent),
        "targets": {
            "ingest_ge_0_85x_embedder": ingest >= TARGET_SEMANTIC_INGEST_RATIO * own,
            "query_embed_p50_le_8ms": q50 <= TARGET_QUERY_EMBED_P50_MS,
        },
        **_about(),
    }


def peer_ratios(res: dict[str, Any]) -> dict[str, Any]:
    """membus beside Mem0 from the same run: ingest over Mem0's add rate, Mem0's search p50
    over membus's recall p50 (how many times faster membus answers), and the targets."""
    peer = res.get("peer") or {}
    if not peer.get("ran") or not peer.get("add_per_s") or not res.get("recall_p50_ms"):
        return {}
    ingest = res["ingest_events_per_s"] / peer["add_per_s"]
    speedup = peer["search_p50_ms"] / res["recall_p50_ms"]
    targets = dict(res.get("targets") or {})
    targets["ingest_ge_3x_mem0"] = ingest >= TARGET_PEER_INGEST_RATIO
    targets["search_p50_ge_10x_faster_than_mem0"] = speedup >= TARGET_PEER_SEARCH_SPEEDUP
    if peer.get("rss_mb"):
        targets["rss_le_mem0"] = res["rss_mb"] <= peer["rss_mb"]
    return {
        "peer_ingest_ratio": _r(ingest),
        "peer_search_p50_speedup": _r(speedup),
        "peer_rss_ratio": _r(res["rss_mb"] / peer["rss_mb"]) if peer.get("rss_mb") else 0.0,
        "targets": targets,
    }


# -- the command ----------------------------------------------------------------------------------

WORKLOADS = ("varied", "one-scope", "semantic")


def run_workload(
    workload: str = "varied",
    memories: int | None = None,
    *,
    json_output: bool,
    quick: bool = False,
    embedder: str = "hashing",
    runtime_name: str = "onnx",
    threads: int | None = None,
    writers: int | None = None,
    peer: str | None = None,
) -> dict[str, Any]:
    """Run one workload; print a table (or exactly one JSON object) to stdout; return the dict.
    ``memories`` None: the workload's full size (100k; semantic 10k); ``threads`` None: the
    embedder's default policy (``membus.embed.semantic.default_threads``); ``writers`` None:
    the library's (``membus.core.config.default_writers``)."""
    if workload not in WORKLOADS:
        raise InvalidInput(f"unknown workload {workload!r}: choose {', '.join(WORKLOADS)}")
    if peer is not None and peer != "mem0":
        raise InvalidInput(f"unknown peer {peer!r}: the peer bench knows mem0")
    if workload == "varied":
        if peer is not None:
            raise InvalidInput("the mem0 peer bench runs with --workload semantic")
        return run_bench(
            memories or 100_000, json_output=json_output, embedder=embedder, quick=quick
        )
    if workload == "one-scope" and embedder != "hashing":
        raise InvalidInput("the one-scope workload measures the hashing embedder")
    if writers is not None and workload != "semantic":
        raise InvalidInput("--writers sets the semantic workload's writer tasks")
    stdout = sys.stdout
    with (
        warnings_to_stderr(),
        contextlib.redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="membus-bench-") as tmp,
        _progress() as progress,
    ):
        root = Path(tmp)
        if workload == "one-scope":
            plan = one_scope_plan(memories or 100_000, quick)
            result = anyio.run(one_scope, root, plan, progress)
        else:
            plan = semantic_plan(memories or 10_000, quick)
            count = threads or default_threads()
            result = anyio.run(
                semantic, root, plan, progress, runtime_name, count, embedder_for, writers
            )
            if peer == "mem0":
                result["peer"] = run_peer(root / "mem0", plan, progress, count)
                result.update(peer_ratios(result))
    if json_output:
        print(json.dumps(result), file=stdout, flush=True)
    else:
        Console(file=stdout).print(workload_table(result))
    return result


def workload_table(res: dict[str, Any]) -> Table:
    """Each figure beside its raw or peer counterpart from the same run."""
    table = Table(
        title=f"membus bench --workload {res['workload']}: {res['memories']:,} memories, "
        f"embedder {res['embedder']}, {res['machine']['cpus']} cpus"
    )
    for col in ("metric", "membus", "raw / peer", "ratio", "target"):
        table.add_column(col, justify="left" if col in ("metric", "target") else "right")

    def row(name: str, mine: float, base: float | None, target: str = "") -> None:
        ratio = f"{mine / base:.2f}x" if base else "-"
        table.add_row(name, f"{mine:,.2f}", "-" if base is None else f"{base:,.2f}", ratio, target)

    if res["workload"] == "one-scope":
        row(
            "ingest, events/s (raw: Edge upsert)",
            res["ingest_events_per_s"],
            res["raw_upsert_points_per_s"],
        )
        row(
            "CPU ms per event, all processes (raw: upsert)",
            res["cpu_ms_per_event"],
            res["raw_upsert_cpu_ms_per_point"],
            "<= 2.5x",
        )
        for at, pre in ((res["recall_10k_memories"], "recall_10k_"), (res["memories"], "recall_")):
            raw_pre = pre.replace("recall_", "raw_hybrid_")
            row(
                f"recall p50 @ {at:,}, ms (raw: hybrid query)",
                res[f"{pre}p50_ms"],
                res[f"{raw_pre}p50_ms"],
                "<= 3x" if pre == "recall_" else "",
            )
            row(
                f"recall p99 @ {at:,}, ms (raw: hybrid query)",
                res[f"{pre}p99_ms"],
                res[f"{raw_pre}p99_ms"],
                "<= 10x" if pre == "recall_" else "",
            )
        row(
            "recall max during index build, ms",
            res["recall_during_build_max_ms"],
            None,
            "<= 100 ms",
        )
        row("index build, s", res["index_build_s"], None)
        steps = res["index_build_phases_s"]
        row(
            f"GIL held by the build here, s: flush {steps['flush']} + load {steps['load']} "
            f"+ close {steps['close']}",
            res["index_build_stalled_s"],
            None,
        )
        row(
            f"recall p50 before the build, {res['unindexed_before_build']:,} points unindexed, ms",
            res["recall_unbuilt_p50_ms"],
            None,
        )
    else:
        row(
            f"ingest to searchable, {res['writers']} writers, events/s (raw: embedder alone, "
            f"{res['embedder_runtime']} x{res['embedder_threads']})",
            res["ingest_events_per_s"],
            res["embedder_batched_per_s"],
            ">= 0.85x",
        )
        row("embed one query p50, ms", res["query_embed_p50_ms"], None, "<= 8 ms")
        row("recall p50, ms (raw: hybrid query)", res["recall_p50_ms"], res["raw_hybrid_p50_ms"])
        row("recall p99, ms (raw: hybrid query)", res["recall_p99_ms"], res["raw_hybrid_p99_ms"])
        peer = res.get("peer") or {}
        if peer.get("ran"):
            row(
                "peer: mem0 add(infer=False), events/s",
                res["ingest_events_per_s"],
                peer["add_per_s"],
                ">= 3x",
            )
            row(
                "peer: mem0 search p50, ms (ratio: membus / mem0)",
                res["recall_p50_ms"],
                peer["search_p50_ms"],
                "<= 0.1x",
            )
            row("peer: RSS, MB", res["rss_mb"], peer["rss_mb"], "<= 1x")
    row("RSS, all processes, MB", res["rss_mb"], None)
    row("disk, allocated MB (apparent)", res["disk_mb"], res["disk_apparent_mb"])
    return table
