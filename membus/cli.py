"""The ``membus`` command line: run writers, publish, recall, tail, inspect and repair.

Every command reads its configuration through ``Settings`` (env ``MEMBUS_*``, overridden by the
global flags). On the embedded default (no Redis URL) a command owns the whole data directory for
its lifetime, in-process writers included; with a Redis URL, commands that only need streams
(publish, tail, dlq, and stats while a worker holds an edge store) do not open the store at all,
so they run beside ``membus worker``.

This module is the typer app: global options and the command table. The commands live in
``cli_feed`` (publish/recall/tail), ``cli_ops`` (worker/stats/optimize/dlq) and ``cli_showcase``
(demo/bench); they are registered here, not by decorators there, so ``python -m membus.cli`` and
``import membus.cli`` build the same single app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from membus.cli_context import JsonFlag, State
from membus.cli_feed import publish, recall, tail
from membus.cli_ops import dlq_drop, dlq_list, dlq_replay, optimize, stats, worker
from membus.cli_output import configure_logging, fail
from membus.cli_showcase import bench, demo
from membus.errors import MembusError
from membus.settings import Settings

app = typer.Typer(
    name="membus",
    help="Event-driven shared memory bus for teams of AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(
    help="Dead letters: events the writers could not process.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


@app.callback()
def _global(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Option("--path", help="Data directory [env MEMBUS_PATH; ./.membus].")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL; unset: embedded redis-server.")
    ] = None,
    store_engine: Annotated[
        str | None, typer.Option("--store-engine", help="edge (in-process) or qdrant.")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option("--store-url", help="Qdrant server URL (engine qdrant).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    try:
        settings = Settings.load(
            path=path, redis_url=redis_url, store_engine=store_engine, store_url=store_url
        )
    except MembusError as exc:
        fail(exc, json_output)
    configure_logging(settings, json_output)
    ctx.obj = State(settings, json_output)


# the order here is the order `membus --help` lists them in
app.command()(worker)
app.command()(publish)
app.command()(recall)
app.command()(tail)
app.command()(stats)
app.command()(optimize)
dlq_app.command("list")(dlq_list)
dlq_app.command("replay")(dlq_replay)
dlq_app.command("drop")(dlq_drop)
app.command()(demo)
app.command()(bench)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
