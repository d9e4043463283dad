"""The human-readable table of ``membus bench``: each figure beside its raw engine and target."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from membus.bench.context import context_rows
from membus.bench.gates import recall_rows
from membus.bench.service import http_rows


def report_table(res: dict[str, Any]) -> Table:
    n, small, t = res["memories"], res["recall_10k_memories"], res["targets"]

    def ok(flag: bool) -> str:
        return "[green]pass[/]" if flag else "[red]FAIL[/]"

    table = Table(
        title=f"membus bench: {n:,} memories, embedder {res['embedder']}, "
        f"writers={res['writers']}, {res['machine']['cpus']} cpus"
    )
    for col in ("metric", "membus", "raw engine", "ratio", "target", ""):
        table.add_column(col, justify="left" if col in ("metric", "target") else "right")
    table.add_row(
        "ingest, events/s (vs Edge upsert pts/s: mean (before / after))",
        f"{res['ingest_events_per_s']:,.0f}",
        f"{res['raw_upsert_points_per_s']:,.0f} ("
        + " / ".join(f"{x:,.0f}" for x in res["raw_upsert_runs_points_per_s"])
        + ")",
        f"{res['ingest_ratio']:.0%}",
        ">= 60% of raw",
        ok(t["ingest_ratio_ge_0_60"]),
    )
    recall_rows(table, res, ok)
    context_rows(table, res, ok)
    for pct in ("p50", "p99"):
        mine, base = res[f"visible_{pct}_ms"], res[f"raw_visible_floor_{pct}_ms"]
        table.add_row(
            f"visible {pct} @ {res['visible_rate_per_s']:,.0f}/s, ms (vs raw chain)",
            f"{mine:.2f}",
            f"{base:.2f}",
            f"{mine / base:.1f}x" if base else "-",
            f"<= 50 ms @ {res['visible_target_rate_per_s']:,}/s" if pct == "p50" else "",
            ok(t["visible_p50_le_50ms"]) if pct == "p50" else "",
        )
    table.add_row("raw XADD (pipelined x100), events/s", "", f"{res['raw_xadd_per_s']:,.0f}")
    table.add_row("raw XREADGROUP(100)+XACK, msg/s", "", f"{res['raw_xreadgroup_ack_per_s']:,.0f}")
    table.add_row(
        f"HNSW build @ {small:,} / {n:,}, s",
        f"{res['index_build_10k_s']:.1f} / {res['index_build_s']:.1f}",
    )
    http_rows(table, res)
    trial = ", ".join(f"{w}: {v:,.0f}/s" for w, v in res["writers_trial_events_per_s"].items())
    table.add_row("writers trial", trial)
    return table
