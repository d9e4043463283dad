"""``membus eval locomo --context-budget 500,1000,2000``: how much of what a question needs is in
the context an agent would get, against what plain chat history and plain recall would give.

The bus is built as for the retrieval evaluation (``membus.evaluation.locomo``: each turn an
observation, each conversation a tenant). Then, for every question with evidence and every budget,
in the same run:

- **context**: ``Agent.context(question, budget_tokens=B, scopes=[conv/main])``, the real path
  (tiers, ranking, greedy packing, audit and heat bumps included);
- **recent**: the conversation's last turns, newest first, while they fit (what a chat history
  truncated to the budget gives; contiguous, so it stops at the first turn that does not fit);
- **recall**: recall's top hits for the question (the engine search ``Bus.recall`` runs, with no
  heat bump so the baseline does not steer the context's ranking), in order while they fit.

All three are rendered the same way (``membus.bus.context.render_items``: the header, one line
per memory with its provenance) and counted with the default counter, so a line costs the same
tokens in each. The score is the share of questions whose evidence turns are all inside, per
budget and LoCoMo category, in percent; the JSON also has the mean share of evidence turns inside
(LoCoMo's recall metric on the same contexts).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from membus.bus.api import Bus
from membus.bus.context import HEADER, ContextItem, Tier, recall_pool, render_items
from membus.core.config import ConsolidationConfig, EmbedderConfig, MembusConfig, PolicyConfig
from membus.core.logs import warnings_to_stderr
from membus.errors import InvalidInput
from membus.evaluation.locomo import (
    EVAL_AGENT,
    SCOPE,
    Conversation,
    Question,
    _ingest,
    _progress,
    load,
    resolve_dataset,
)
from membus.evaluation.report import REPORT_ORDER
from membus.recall import ranking
from membus.recall.tokens import estimate_tokens
from membus.runtime import host as runtime
from membus.store.port import Hit, Memory, RecallFilter

METHODS = ("context", "recent", "recall")


def _item(m: Memory, tier: Tier) -> ContextItem:
    return ContextItem(
        id=m.id,
        content=m.content,
        scope=m.scope,
        kind=m.kind,
        subject=m.subject,
        key=m.key,
        agents=list(m.agents),
        created_at=m.created_at,
        tier=tier,
        why=[tier],
        score=0.0,
    )


def fill(memories: Sequence[Memory], tier: Tier, budget: int) -> list[Memory]:
    """The first ``memories`` that fit ``budget`` rendered, stopping at the first that does not
    (a truncated history or a top-k cut is contiguous), each memory once."""
    items: list[ContextItem] = []
    kept: list[Memory] = []
    seen: set[str] = set()
    room = budget - estimate_tokens(HEADER)  # counted as ``Context`` packs: line by line
    for m in memories:
        if m.id in seen:
            continue
        item = _item(m, tier)
        need = estimate_tokens(item.line(len(items) + 1))
        if need > room:
            break
        items.append(item)
        kept.append(m)
        seen.add(m.id)
        room -= need
    while items and estimate_tokens(render_items(items)) > budget:
        items.pop()
        kept.pop()
    return kept


async def _search(bus: Bus, tenant: str, query: str, k: int) -> list[Hit]:
    """What ``Bus.recall(query, k=k)`` asks the store, without its audit and heat bump."""
    who = bus.agent(EVAL_AGENT, tenant).identity
    grant = await bus.gate.grant(who, "recall", [SCOPE])
    flt = RecallFilter(tenant=tenant, scopes=[SCOPE], grant=grant)
    vector = await bus._embed([query])
    cfg = bus.config.ranking
    boost = ranking.boost(k, cfg)
    hits = await bus.store.search(vector, flt, k, text=query, boost=boost)
    if boost is None:
        hits = ranking.rerank(hits, k, cfg, datetime.now(UTC))
    return hits


async def _all_memories(bus: Bus, tenant: str) -> list[Memory]:
    out: list[Memory] = []
    offset: str | None = None
    while True:
        page, offset = await bus.store.scroll(tenant, 512, offset)
        out += page
        if offset is None:
            return out


Row = tuple[Question, dict[tuple[str, int], frozenset[str]]]


async def _evaluate(
    bus: Bus,
    convs: Sequence[Conversation],
    turn_of: Mapping[str, str],
    budgets: Sequence[int],
    progress: Progress,
) -> tuple[list[Row], list[float], list[float]]:
    """Per question, the turns inside each method's context at each budget; and the context
    and recall call times in ms (for the caption)."""
    task = progress.add_task("assembling contexts", total=sum(len(c.questions) for c in convs))
    rows: list[Row] = []
    ctx_ms: list[float] = []
    for conv in convs:
        if not conv.questions:
            continue
        memories = await _all_memories(bus, conv.tenant)
        turns_of = {
            m.id: frozenset(turn_of[e] for e in m.source_events if e in turn_of) for m in memories
        }
        by_turn: dict[str, Memory] = {}
        for m in memories:
            for d in turns_of[m.id]:
                by_turn.setdefault(d, m)
        history = [by_turn[t.dia_id] for t in reversed(conv.turns) if t.dia_id in by_turn]
        agent = bus.agent(EVAL_AGENT, conv.tenant)
        for q in conv.questions:
            inside: dict[tuple[str, int], frozenset[str]] = {}
            for b in budgets:
                # k as the context's own recall pool: enough to fill the budget, same ranking
                hits = await _search(bus, conv.tenant, q.text, recall_pool(b))
                t0 = time.perf_counter()
                ctx = await agent.context(q.text, budget_tokens=b, scopes=[SCOPE])
                ctx_ms.append((time.perf_counter() - t0) * 1000)
                inside["context", b] = frozenset().union(
                    *(turns_of.get(it.id, frozenset()) for it in ctx.items)
                )
                for name, ranked in (("recent", history), ("recall", [h.memory for h in hits])):
                    kept = fill(ranked, "recent" if name == "recent" else "relevant", b)
                    inside[name, b] = frozenset().union(
                        *(turns_of.get(m.id, frozenset()) for m in kept)
                    )
            rows.append((q, inside))
            progress.advance(task)
    progress.remove_task(task)
    return rows, ctx_ms, []


def context_table(rows: Sequence[Row], budgets: Sequence[int]) -> dict[str, Any]:
    """``{"all_evidence": {method: {budget: {category: %}}}, "evidence_share": ...}``."""
    out: dict[str, Any] = {"all_evidence": {}, "evidence_share": {}}
    for method in METHODS:
        for metric in ("all_evidence", "evidence_share"):
            out[metric][method] = {}
        for b in budgets:
            full: dict[str, float] = defaultdict(float)
            part: dict[str, float] = defaultdict(float)
            n: dict[str, int] = defaultdict(int)
            for q, inside in rows:
                got = q.evidence & inside[method, b]
                for bucket in ("overall", q.category):
                    full[bucket] += got == q.evidence
                    part[bucket] += len(got) / len(q.evidence)
                    n[bucket] += 1
            out["all_evidence"][method][str(b)] = {
                c: round(100 * full[c] / n[c], 1) if n[c] else None for c in REPORT_ORDER
            }
            out["evidence_share"][method][str(b)] = {
                c: round(100 * part[c] / n[c], 1) if n[c] else None for c in REPORT_ORDER
            }
    return out


def targets_met(table: Mapping[str, Any], budgets: Sequence[int]) -> dict[str, bool]:
    """Per budget: the context at least the better baseline, overall and in every category."""
    full = table["all_evidence"]
    met = {}
    for b in budgets:
        key = str(b)
        met[key] = all(
            full["context"][key][c] >= max(full["recent"][key][c], full["recall"][key][c])
            for c in REPORT_ORDER
            if full["context"][key][c] is not None
        )
    return met


def render(result: Mapping[str, Any], counts: Mapping[str, int], budgets: Sequence[int]) -> Table:
    table = Table(
        "category",
        "n",
        *[f"{b}:{m}" for b in budgets for m in ("ctx", "rec", "top")],
        title="LoCoMo: questions with all evidence in the context (%)",
        caption=(
            "ctx: Agent.context · rec: most recent turns that fit · top: recall's top hits "
            f"that fit · tokens by the default counter · embedder {result['embedder']} · "
            f"context p50 {result['context_ms']['p50']} ms"
        ),
    )
    for col in table.columns:
        col.no_wrap = True
    for col in table.columns[1:]:
        col.justify = "right"
    full = result["all_evidence"]
    for c in REPORT_ORDER:
        cells = []
        for b in budgets:
            for m in METHODS:
                v = full[m][str(b)][c]
                cells.append("-" if v is None else f"{v:.1f}")
        table.add_row(c, str(counts.get(c, 0)), *cells)
    return table


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def _run(
    root: Path,
    convs: list[Conversation],
    config: MembusConfig,
    budgets: Sequence[int],
    progress: Progress,
) -> tuple[int, list[Row], list[float], str]:
    async with runtime.open(root, config) as bus:
        turn_of, _ = await _ingest(bus, convs, progress)
        rows, ctx_ms, _ = await _evaluate(bus, convs, turn_of, budgets, progress)
        return len(turn_of), rows, ctx_ms, bus.embedder.name


def run_context_eval(
    dataset: Path,
    *,
    budgets: Sequence[int],
    embedder: str = "hashing",
    json_output: bool,
    limit_conversations: int | None = None,
    near_duplicate: float | None = ConsolidationConfig().near_duplicate,
) -> dict[str, Any]:
    """Ingest LoCoMo into a fresh embedded bus, then score the context and both baselines at
    each budget. Prints a table, or with ``json_output`` one JSON object; returns the dict."""
    try:
        emb = EmbedderConfig.model_validate({"name": embedder})
    except ValidationError:
        raise InvalidInput(f"unknown embedder {embedder!r}: choose 'hashing' or 'minilm'") from None
    budgets = sorted(set(budgets))
    if not budgets or budgets[0] < 1:
        raise InvalidInput("context budgets must be positive integers")
    convs, dropped = load(resolve_dataset(dataset), limit_conversations)
    stdout = sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings_to_stderr())
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="membus-eval-")))
        progress = stack.enter_context(_progress())
        config = MembusConfig(
            policy=PolicyConfig(mode="open"),
            worker=runtime.EMBEDDED_WORKER,
            embedder=emb,
            consolidation=ConsolidationConfig(near_duplicate=near_duplicate),
        )
        observations, rows, ctx_ms, emb_name = anyio.run(
            _run, root, convs, config, budgets, progress
        )
    table = context_table(rows, budgets)
    result: dict[str, Any] = {
        **table,
        "target_met": targets_met(table, budgets),
        "budgets": budgets,
        "questions": len(rows),
        "observations": observations,
        "dropped_evidence": dropped,
        "embedder": emb_name,
        "counter": "estimate",
        "context_ms": {"p50": _pct(ctx_ms, 0.5), "p99": _pct(ctx_ms, 0.99)},
    }
    if json_output:
        print(json.dumps(result), file=stdout, flush=True)
    else:
        counts = Counter(c for q, _ in rows for c in ("overall", q.category))
        Console(file=stdout, width=140).print(render(result, counts, budgets))
    return result
