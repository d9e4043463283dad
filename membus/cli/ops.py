"""Operating a bus: run ``worker``s, read ``stats``, ``optimize`` the index, repair the ``dlq``."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console

from membus.cli.context import JsonFlag, TenantOpt, command_state, run
from membus.cli.output import emit_json, print_dead_letters, print_stats, say
from membus.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    pass

T = TypeVar("T")

IdsOpt = Annotated[list[str] | None, typer.Option("--id", help="Dead-letter id; repeatable.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter of the tenant.")]


def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=64,
            help="Writer tasks (default: 1 with the hashing embedder, 2 with a model).",
        ),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Run writers until SIGTERM/SIGINT; the batch in hand is finished before exiting."""
    from membus.cli.target import claim
    from membus.core.config import default_writers
    from membus.runtime.host import connect, run_writers
    from membus.runtime.signals import on_signals

    state = command_state(ctx, json_flag)
    settings = state.settings

    async def go() -> dict[str, int]:
        config = settings.to_config()
        async with AsyncExitStack() as stack:
            redis, store, embedder = await claim(
                stack, connect(config, settings.data_dir), settings
            )
            stop = anyio.Event()
            tasks = concurrency or default_writers(config.embedder.name)
            running = f"membus worker: {tasks} writer(s) running; SIGTERM/Ctrl-C stops"
            config = config.model_copy(update={"writers": tasks})
            async with anyio.create_task_group() as outer:
                await outer.start(on_signals, stop, outer.cancel_scope)
                writers = await run_writers(
                    redis, store, embedder, config, stop, lambda: say(state.json, running)
                )
                outer.cancel_scope.cancel()
        return {
            "processed": sum(w.processed for w in writers),
            "parked": sum(w.parked for w in writers),
        }

    result = run(state, go)
    if state.json:
        emit_json(result)
    else:
        say(
            state.json,
            f"membus worker: stopped ({result['processed']} written, {result['parked']} parked)",
        )


def stats(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Stream lengths, pending, lag and dead letters per tenant and writer group."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)

    async def go() -> dict[str, Any]:
        try:
            return await calls.perform(state, calls.stats)
        except Conflict:
            if state.settings.embedded:
                raise
        # an edge store held by a running worker: report the streams without the memory count
        return await calls.perform(state, calls.stream_stats)

    out = run(state, go)
    if state.json:
        emit_json(out)
    else:
        print_stats(out)


def optimize(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Build the Qdrant Edge HNSW index now (in a child process, on a copy of the shard)."""
    from membus.embed.registry import embedder_for
    from membus.runtime.host import make_store
    from membus.store.port import StoreMeta

    state = command_state(ctx, json_flag)
    from membus.store.edge import EdgeStore

    async def go() -> dict[str, Any]:
        config = state.settings.to_config()
        if config.store.engine != "edge":
            raise InvalidInput(
                "optimize builds the Qdrant Edge index; a Qdrant server does its own"
            )
        embedder = embedder_for(config.embedder)
        store = make_store(config, state.settings.data_dir)
        assert isinstance(store, EdgeStore)
        await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
        try:
            with Console(stderr=True).status("building the index…"):
                await store.optimize()
            return {"optimized": True, "memories": await store.count()}
        finally:
            await store.close()

    out = run(state, go)
    if state.json:
        emit_json(out)
    else:
        typer.echo(f"index built ({out['memories']} memories)")


def dlq_list(
    ctx: typer.Context,
    tenant: TenantOpt,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many at most.")] = 50,
    start: Annotated[str, typer.Option("--start", help="From this id ('(id': after it).")] = "-",
    json_flag: JsonFlag = False,
) -> None:
    """Show parked entries, oldest first."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)
    letters = run(
        state,
        lambda: calls.perform(state, calls.dlq_list, tenant=tenant, count=count, start=start),
    )
    if state.json:
        emit_json([d.model_dump(mode="json") for d in letters])
    else:
        print_dead_letters(letters)


def dlq_replay(
    ctx: typer.Context,
    tenant: TenantOpt,
    ids: IdsOpt = None,
    everything: AllOpt = False,
    json_flag: JsonFlag = False,
) -> None:
    """Put dead letters back on the events stream (e.g. after fixing their cause)."""
    from membus.cli import calls
    from membus.cli.input import which

    state = command_state(ctx, json_flag)
    done = run(
        state,
        lambda: calls.perform(state, calls.dlq_replay, tenant=tenant, ids=which(ids, everything)),
    )
    if state.json:
        emit_json({"replayed": [r.model_dump(mode="json") for r in done]})
    else:
        for r in done:
            typer.echo(f"{r.id} -> events {r.position}")
        typer.echo(f"replayed {len(done)}")


def dlq_drop(
    ctx: typer.Context,
    tenant: TenantOpt,
    ids: IdsOpt = None,
    everything: AllOpt = False,
    json_flag: JsonFlag = False,
) -> None:
    """Delete dead letters for good."""
    from membus.cli import calls
    from membus.cli.input import which

    state = command_state(ctx, json_flag)
    n = run(
        state,
        lambda: calls.perform(state, calls.dlq_drop, tenant=tenant, ids=which(ids, everything)),
    )
    if state.json:
        emit_json({"dropped": n})
    else:
        typer.echo(f"dropped {n}")
