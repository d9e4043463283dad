"""``demo``, ``bench`` and ``eval locomo``: optional showcases, imported by name when asked for."""

from __future__ import annotations

import importlib
import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import typer

from membus.cli.context import JsonFlag, command_state, run
from membus.cli.output import fail
from membus.core.config import ConsolidationConfig
from membus.errors import InvalidInput, MembusError, Unavailable


def _load(module: str, name: str) -> Callable[..., Any]:
    # imported by name: optional pieces that pull in more than the core needs
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{name} is not available: {exc}") from None


def _finish(result: Any) -> None:
    """run_demo/run_bench print their own report (or one JSON object); only await if needed."""
    if inspect.isawaitable(result):
        anyio.run(lambda: result)


def demo(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """A support team of agents sharing memory, end to end (in a temp dir unless --path)."""
    state = command_state(ctx, json_flag)

    async def go(path: Path) -> Any:
        run_demo = _load("agents.demo", "run_demo")
        return await run_demo(path, json_output=state.json)

    if state.settings.path is not None:
        run(state, lambda: go(state.settings.data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="membus-demo-", ignore_cleanup_errors=True) as tmp:
        run(state, lambda: go(Path(tmp)))


def bench(
    ctx: typer.Context,
    workload: Annotated[
        Literal["varied", "one-scope", "semantic"],
        typer.Option(
            "--workload",
            help="varied: texts over several scopes; one-scope: a team's notes in one scope "
            "(Zipf vocabulary); semantic: MiniLM end to end with near-duplicates.",
        ),
    ] = "varied",
    memories: Annotated[
        int | None,
        typer.Option("--memories", min=1, help="Default 100,000 (semantic: 10,000)."),
    ] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="varied: hashing|minilm.")] = (
        "hashing"
    ),
    runtime: Annotated[
        Literal["onnx", "torch"], typer.Option("--runtime", help="semantic: MiniLM's runtime.")
    ] = "onnx",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            max=64,
            help="semantic: embedder threads (default: the library's, one per usable core).",
        ),
    ] = None,
    writers: Annotated[
        int | None,
        typer.Option(
            "--writers",
            min=1,
            max=64,
            help="semantic: writer tasks (default: the library's, two with a model).",
        ),
    ] = None,
    peer: Annotated[
        str | None,
        typer.Option("--peer", help="semantic: also run this peer (mem0; needs mem0ai)."),
    ] = None,
    quick: Annotated[
        bool | None,
        typer.Option(
            "--quick/--full",
            help="A small, fast run, or the workload's full size; default: quick unless "
            "--memories is given.",
        ),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Measure publish-to-recall throughput and latency beside the raw engines."""
    state = command_state(ctx, json_flag)
    if quick is None:  # `membus bench` alone is a quick look; a size asks for a real run
        quick = memories is None
    try:
        run_workload = _load("membus.bench.workloads", "run_workload")
        result = run_workload(
            workload,
            memories,
            json_output=state.json,
            quick=quick,
            embedder=embedder,
            runtime_name=runtime,
            threads=threads,
            writers=writers,
            peer=peer,
        )
        _finish(result)
    except MembusError as exc:
        fail(exc, state.json)


def eval_locomo(
    ctx: typer.Context,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            envvar="MEMBUS_LOCOMO_DATASET",
            help="locomo10.json from the LoCoMo repository (not shipped: CC BY-NC); "
            "default ../shared/datasets/locomo/locomo10.json.",
        ),
    ] = None,
    embedder: Annotated[
        Literal["hashing", "minilm"], typer.Option("--embedder", help="hashing|minilm.")
    ] = "hashing",
    limit_conversations: Annotated[
        int | None, typer.Option("--limit-conversations", min=1, help="Only the first N.")
    ] = None,
    near_duplicate: Annotated[
        str, typer.Option("--near-duplicate", help="Merge threshold (cosine), or 'off'.")
    ] = "default",
    context: Annotated[
        Literal["reply", "none"],
        typer.Option("--context", help="reply: a turn carries what it answers; none: bare."),
    ] = "reply",
    context_budget: Annotated[
        str | None,
        typer.Option(
            "--context-budget",
            help="Comma-separated token budgets, e.g. 500,1000,2000: score Agent.context "
            "instead, beside recent turns and recall cut to each budget.",
        ),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Retrieval recall@k on LoCoMo per question category, beside a BM25 baseline
    (in a fresh temp bus; prints a table, or one JSON object with --json)."""
    state = command_state(ctx, json_flag)
    # imported here: the evaluation is core, but nothing else needs it at startup
    from membus.evaluation.locomo import DEFAULT_DATASET, run_eval

    try:
        # run_eval prints its own report; the returned dict is not printed again
        threshold = ConsolidationConfig().near_duplicate
        if near_duplicate == "off":
            threshold = None
        elif near_duplicate != "default":
            try:
                threshold = float(near_duplicate)
            except ValueError:
                threshold = -1.0
            if not 0 < threshold <= 1:
                raise InvalidInput("--near-duplicate takes a cosine in (0, 1], 'off' or 'default'")
        if context_budget is not None:
            _eval_context(
                dataset or DEFAULT_DATASET,
                context_budget,
                embedder,
                state.json,
                limit_conversations,
                threshold,
            )
            return
        run_eval(
            dataset or DEFAULT_DATASET,
            embedder=embedder,
            json_output=state.json,
            limit_conversations=limit_conversations,
            near_duplicate=threshold,
            context=context == "reply",
        )
    except MembusError as exc:
        fail(exc, state.json)


def _eval_context(
    dataset: Path,
    budgets: str,
    embedder: str,
    json_output: bool,
    limit_conversations: int | None,
    near_duplicate: float | None,
) -> None:
    """``eval locomo --context-budget``: membus.evaluation.locomo_context."""
    from membus.evaluation.locomo_context import run_context_eval

    try:
        parsed = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise InvalidInput(
            "--context-budget takes comma-separated integers, e.g. 500,1000"
        ) from None
    run_context_eval(
        dataset,
        budgets=parsed,
        embedder=embedder,
        json_output=json_output,
        limit_conversations=limit_conversations,
        near_duplicate=near_duplicate,
    )


def eval_tokens(
    ctx: typer.Context,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            envvar="MEMBUS_LOCOMO_DATASET",
            help="locomo10.json (default ../shared/datasets/locomo/locomo10.json).",
        ),
    ] = None,
    limit_conversations: Annotated[
        int | None, typer.Option("--limit-conversations", min=1, help="Only the first N.")
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """The default token counter's error against the MiniLM tokenizer (the semantic extra) on
    LoCoMo turns as context lines and whole renders."""
    state = command_state(ctx, json_flag)
    from membus.evaluation.locomo import DEFAULT_DATASET
    from membus.evaluation.tokens import run_token_eval

    try:
        run_token_eval(
            dataset or DEFAULT_DATASET,
            json_output=state.json,
            limit_conversations=limit_conversations,
        )
    except MembusError as exc:
        fail(exc, state.json)
