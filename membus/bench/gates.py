"""Recall figures for ``membus bench`` through several doors at once: the open gate, a casbin gate
and (see membus/bench/service.py) the HTTP service.

The permission issue's target is a *difference* (gated p50 minus open p50 within 1 ms), far
smaller than the drift of a 2-core machine shared with other work. So the doors are not timed in
separate phases: every query goes through every door back to back, in an order that rotates per
query, on the same indexed store state. Both recalls write their audit record (the bus audits
every door), which is part of the real cost and stays in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
from rich.progress import Progress
from rich.table import Table

from membus.access.gate import Gate, Identity
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource, policy_lines
from membus.bench import raw
from membus.bus.api import Bus
from membus.errors import InvalidInput

READER = "bench-reader"
RECALL_K = 5
TARGET_GATE_OVERHEAD_MS = 1.0
WARMUP_QUERIES = 10
SETTLE_S = 0.0002

# Shaped like policies/example.csv, for the bench tenant: roles with inheritance, a deny that
# carves a hole inside the scope the reader recalls (so the gated filter carries an exclusion),
# and clearances below the maximum (so it carries a sensitivity bound too). The bench data sit
# in none of the holes: gated and open recall must find the same memories.
POLICY = f"""
p, *, {raw.TENANT}, project/*, recall|subscribe, allow
p, role:eng, {raw.TENANT}, team/eng/*, publish|recall|subscribe, allow
p, role:eng-lead, {raw.TENANT}, team/eng/*, forget, allow
p, role:eng-lead, {raw.TENANT}, team/eng-leads/*, publish|recall|subscribe|forget, allow
p, role:support, {raw.TENANT}, team/support/*, publish|recall|subscribe, allow
p, role:oncall, {raw.TENANT}, ops/*, publish|recall|subscribe, allow
p, role:eng-lead, {raw.TENANT}, agent/bench-writer/handover, recall, allow
p, {READER}, {raw.TENANT}, team/eng/infra/secrets/*, recall|subscribe, deny
g, role:eng-lead, role:eng, {raw.TENANT}
g, {READER}, role:eng-lead, {raw.TENANT}
g, {READER}, role:oncall, {raw.TENANT}
g, bench-writer, role:support, {raw.TENANT}
g2, *, internal, {raw.TENANT}
g2, role:eng-lead, confidential, {raw.TENANT}
"""

Door = Callable[[str], Awaitable[int]]  # one recall of a query text; returns the hit count


async def bench_gate() -> CasbinGate:
    """A casbin gate over ``POLICY`` that lets the reader recall the bench scope (checked)."""
    gate = CasbinGate(MemorySource(POLICY))
    await gate.reload()
    who = Identity(tenant=raw.TENANT, agent=READER)
    grant = await gate.grant(who, "recall", [raw.RECALL_SCOPE])
    if not grant.covers(raw.RECALL_SCOPE) or not grant.exclude:
        raise InvalidInput(f"the bench policy must let {READER} recall {raw.RECALL_SCOPE!r}")
    return gate


def agent_door(bus: Bus, gate: Gate) -> Door:
    """``Agent.recall`` with ``gate`` installed on the bus for the call (writers keep theirs)."""
    agent = bus.agent(READER, raw.TENANT)

    async def door(text: str) -> int:
        bus.gate = gate
        # every hit up to k, as the raw engine returns: no relevance threshold
        return len(await agent.recall(text, k=RECALL_K, scopes=[raw.RECALL_SCOPE], min_score=0.0))

    return door


async def recall_phase(
    bus: Bus, queries: int, progress: Progress, label: str, more: Mapping[str, Door] | None = None
) -> dict[str, Any]:
    """Agent.recall latency (open gate) and raw filtered search on the same indexed shard, plus
    any ``more`` doors timed interleaved with it (``doors``: name -> (latencies, hits/query))."""
    qs = raw.queries(queries)
    requests = raw.search_requests(bus.embedder.embed(qs), RECALL_K, raw.RECALL_SCOPE)
    raw_lat = raw.raw_search(raw.edge_shard(bus.store), requests)
    open_gate = bus.gate
    doors = {"open": agent_door(bus, open_gate), **(more or {})}
    task = progress.add_task(label, total=len(qs))
    try:
        got = await time_doors(doors, qs, lambda: progress.advance(task))
    finally:
        bus.gate = open_gate  # the doors swap gates; later phases run on the bus's own
        progress.remove_task(task)
    p50, p99 = raw.percentiles(got["open"][0])
    r50, r99 = raw.percentiles(raw_lat)
    per_door = {name: (lat, hits / len(qs)) for name, (lat, hits) in got.items()}
    return {
        "p50": p50,
        "p99": p99,
        "raw_p50": r50,
        "raw_p99": r99,
        "hits": per_door["open"][1],
        "doors": per_door,
    }


async def time_doors(
    doors: Mapping[str, Door], texts: Sequence[str], tick: Callable[[], None] | None = None
) -> dict[str, tuple[list[float], int]]:
    """Each text through every door, the order rotating per text. Per door: (seconds, hits)."""
    names = list(doors)
    for text in texts[:WARMUP_QUERIES]:
        for name in names:
            await doors[name](text)
    lat: dict[str, list[float]] = {n: [] for n in names}
    hits = dict.fromkeys(names, 0)
    for i, text in enumerate(texts):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            # untimed: let the previous door's leftovers (the server finishing a response
            # after the client has it) run now, not inside the next door's timing
            await anyio.sleep(SETTLE_S)
            t0 = time.perf_counter()
            hits[name] += await doors[name](text)
            lat[name].append(time.perf_counter() - t0)
        if tick is not None:
            tick()
    return {n: (lat[n], hits[n]) for n in names}


def recall_figures(
    small: int, rec_small: Mapping[str, Any], rec: Mapping[str, Any]
) -> dict[str, Any]:
    """The recall keys of the result (milliseconds), open gate at both sizes, casbin at full
    size; the gate overhead may come out negative, which is noise around zero."""

    def r(x: float) -> float:
        return round(float(x), 3)

    gated, gated_hits = rec["doors"]["gated"]
    p50, p99 = raw.percentiles(gated)
    return {
        "recall_10k_memories": small,
        **{
            f"{name}{at}{pct}_ms": r(src[key])
            for at, src in (("10k_", rec_small), ("", rec))
            for pct in ("p50", "p99")
            for name, key in (("recall_", pct), ("raw_search_", f"raw_{pct}"))
        },
        "recall_ratio": r(rec["p50"] / rec["raw_p50"]) if rec["raw_p50"] else 0.0,
        "recall_hits_per_query": round(rec["hits"], 2),
        "recall_gated_p50_ms": r(p50),
        "recall_gated_p99_ms": r(p99),
        "recall_gated_hits_per_query": round(gated_hits, 2),
        "gate_overhead_p50_ms": r(p50 - rec["p50"]),
        "gate_policy_lines": len(policy_lines(POLICY)),
    }


def recall_rows(table: Table, res: Mapping[str, Any], ok: Callable[[bool], str]) -> None:
    n, small, t = res["memories"], res["recall_10k_memories"], res["targets"]
    for at, pre in ((small, "recall_10k_"), (n, "recall_")):
        rp = "raw_search_10k_" if pre == "recall_10k_" else "raw_search_"
        for pct in ("p50", "p99"):
            main = pct == "p50" and at == n
            mine, base = res[f"{pre}{pct}_ms"], res[f"{rp}{pct}_ms"]
            table.add_row(
                f"recall {pct} @ {at:,}, ms (vs filtered search)",
                f"{mine:.2f}",
                f"{base:.2f}",
                f"{mine / base:.1f}x" if base else "-",
                "<= 3 ms" if main else "",
                ok(t["recall_p50_le_3ms"]) if main else "",
            )
    for pct in ("p50", "p99"):
        mine, base = res[f"recall_gated_{pct}_ms"], res[f"recall_{pct}_ms"]
        main = pct == "p50"
        table.add_row(
            f"recall {pct} @ {n:,}, casbin gate, ms (vs open gate)",
            f"{mine:.2f}",
            f"{base:.2f}",
            f"{mine / base:.2f}x" if base else "-",
            "overhead <= 1 ms" if main else "",
            ok(t["gate_overhead_le_1ms"]) if main else "",
        )
    table.add_row("gate overhead on recall p50, ms", f"{res['gate_overhead_p50_ms']:+.3f}")
