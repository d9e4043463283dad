"""The report of ``membus eval locomo``: evidence recall@k per category, and its terminal table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from membus.evaluation.locomo import Question

REPORT_ORDER = ("overall", "single-hop", "multi-hop", "temporal", "open-domain", "adversarial")


def recall_table(
    results: Sequence[tuple[Question, Sequence[str]]], ks: Sequence[int]
) -> dict[str, dict[str, float | None]]:
    """``{"recall@k": {category: percent}}``; a category without questions reports None."""
    table: dict[str, dict[str, float | None]] = {}
    for k in ks:
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for q, retrieved in results:
            r = len(q.evidence & set(retrieved[:k])) / len(q.evidence)
            for bucket in ("overall", q.category):
                sums[bucket] += r
                counts[bucket] += 1
        table[f"recall@{k}"] = {
            c: round(100 * sums[c] / counts[c], 1) if counts[c] else None for c in REPORT_ORDER
        }
    return table


def render(result: dict[str, Any], counts: dict[str, int], ks: Sequence[int]) -> Table:
    at = 10 if 10 in ks else ks[-1]  # the k the caption quotes
    # short headers: the table must fit an 80-column terminal
    table = Table(
        "category",
        "n",
        *[f"{'membus' if i == 0 else ''}@{k}" for i, k in enumerate(ks)],
        *[f"{'bm25' if i == 0 else ''}@{k}" for i, k in enumerate(ks)],
        title="LoCoMo retrieval recall (%)",
        caption=(
            f"embedder {result['embedder']} · memories {result['memories']} / observations "
            f"{result['observations']} · ingest {result['ingest_s']} s · dropped evidence "
            f"{result['dropped_evidence']} · cosine weight {result['blend']['cosine_weight']}\n"
            f"membus keeps hits scoring >= {result['min_score']} (the default); keeping every hit, "
            f"overall @{at} is {result['unfiltered'][f'recall@{at}']['overall']}"
            f" · no-answer questions returning nothing: {result['no_answer']['empty']} / "
            f"{result['no_answer']['questions']} (best score {result['no_answer']['best_score']})"
        ),
    )
    for col in table.columns:
        col.no_wrap = True
    for col in table.columns[1:]:
        col.justify = "right"

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for c in REPORT_ORDER:
        ours = [cell(result[f"recall@{k}"][c]) for k in ks]
        theirs = [cell(result["bm25"][f"recall@{k}"][c]) for k in ks]
        table.add_row(c, str(counts.get(c, 0)), *ours, *theirs)
    return table
