"""``membus bench``'s context figures: ``Agent.context`` beside ``Agent.recall`` at the same k.

Both doors join the recall phases (membus/bench/gates.py ``recall_phase``), timed interleaved with
the other doors on the same queries, at the 10k point and at full size. The context's budget is
the one whose recall pool is ``CONTEXT_K`` (``membus.bus.context.recall_pool``), and the recall
door beside it asks for the same ``k``, so the difference is what assembly adds: the pinned and
recent reads, working memory, heat, packing and the audit record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.table import Table

from membus.bench import raw
from membus.bench.gates import READER, Door
from membus.bus.api import Bus
from membus.bus.context import recall_pool

CONTEXT_K = 10
CONTEXT_BUDGET = 20 * CONTEXT_K  # recall_pool(CONTEXT_BUDGET) == CONTEXT_K
TARGET_CONTEXT_RATIO = 2.0  # context p50 at most twice recall's at the same k
assert recall_pool(CONTEXT_BUDGET) == CONTEXT_K


def context_doors(bus: Bus) -> dict[str, Door]:
    """``context``: ``Agent.context`` at ``CONTEXT_BUDGET``; ``recall_k``: recall at its k."""
    agent = bus.agent(READER, raw.TENANT)

    async def context(text: str) -> int:
        got = await agent.context(text, budget_tokens=CONTEXT_BUDGET, scopes=[raw.RECALL_SCOPE])
        return len(got.items)

    async def recall_k(text: str) -> int:
        # every hit up to k, as the raw engine returns: no relevance threshold
        return len(await agent.recall(text, k=CONTEXT_K, scopes=[raw.RECALL_SCOPE], min_score=0.0))

    return {"context": context, "recall_k": recall_k}


def context_figures(rec_small: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, Any]:
    """Context and recall p50/p99 (ms) at both sizes, their ratio, and the target."""
    out: dict[str, Any] = {"context_k": CONTEXT_K, "context_budget_tokens": CONTEXT_BUDGET}
    met = True
    for at, src in (("10k_", rec_small), ("", rec)):
        doors = src["doors"]
        c50, c99 = raw.percentiles(doors["context"][0])
        r50, r99 = raw.percentiles(doors["recall_k"][0])
        ratio = c50 / r50 if r50 else 0.0
        out |= {
            f"context_{at}p50_ms": round(c50, 3),
            f"context_{at}p99_ms": round(c99, 3),
            f"recall_k{CONTEXT_K}_{at}p50_ms": round(r50, 3),
            f"recall_k{CONTEXT_K}_{at}p99_ms": round(r99, 3),
            f"context_{at}ratio": round(ratio, 2),
            f"context_{at}items_per_query": round(doors["context"][1], 2),
        }
        met = met and ratio <= TARGET_CONTEXT_RATIO
    out["context_target_p50_le_2x_recall"] = met
    return out


def context_rows(table: Table, res: Mapping[str, Any], ok: Callable[[bool], str]) -> None:
    if "context_p50_ms" not in res:
        return
    n, small, k = res["memories"], res["recall_10k_memories"], res["context_k"]
    for at, size in (("10k_", small), ("", n)):
        for pct in ("p50", "p99"):
            mine, base = res[f"context_{at}{pct}_ms"], res[f"recall_k{k}_{at}{pct}_ms"]
            first = pct == "p50"
            table.add_row(
                f"context {pct} @ {size:,} ({res['context_budget_tokens']} tokens), ms "
                f"(vs recall k={k})",
                f"{mine:.2f}",
                f"{base:.2f}",
                f"{mine / base:.1f}x" if base else "-",
                "<= 2x recall" if first else "",
                ok(res[f"context_{at}ratio"] <= TARGET_CONTEXT_RATIO) if first else "",
            )
